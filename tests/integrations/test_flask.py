"""kiq.integrations.flask in a real minimal Flask app (a module written to a tmp dir):
KIQ_* config, enqueue from a view through the test client, jobs inside the app
context, and ``flask kiq worker`` running a job that reads ``current_app``."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest

pytest.importorskip("flask")

from flask import Flask

from kiq.config import Config
from kiq.errors import ConfigError
from kiq.integrations.flask import AppContext, Kiq
from tests.support.wait import wait_until

APP = """\
import os

import redis
from flask import Flask, current_app

import kiq
from kiq.integrations.flask import Kiq


class Greet(kiq.Job, name="flaskapp.Greet", queue="greetings"):
    def perform(self, who):
        with redis.Redis.from_url(current_app.config["KIQ_REDIS_URL"]) as r:
            r.rpush("flask:done", f"{current_app.name}:{who}")


def create_app():
    app = Flask("flaskapp")
    app.config["KIQ_REDIS_URL"] = os.environ["FLASKAPP_REDIS_URL"]
    app.config["KIQ_QUEUES"] = [["greetings", 1]]
    app.config["KIQ_CONCURRENCY"] = 3
    Kiq(app)

    @app.post("/greet/<who>")
    def greet(who):
        return {"jid": Greet.perform_async(who)}

    return app
"""


@pytest.fixture
def flaskapp(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ModuleType]:
    """The app module, importable, with its Redis URL in the environment."""
    (tmp_path / "flaskapp.py").write_text(APP)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("FLASKAPP_REDIS_URL", redis_url)
    sys.modules.pop("flaskapp", None)
    yield importlib.import_module("flaskapp")
    sys.modules.pop("flaskapp", None)


def test_kiq_config_keys_reach_the_default_config(config: Config, flaskapp: ModuleType) -> None:
    """KIQ_QUEUES and KIQ_CONCURRENCY are applied; the Config is app.extensions["kiq"]."""
    app = flaskapp.create_app()

    assert app.extensions["kiq"] is config
    assert config.queues == [("greetings", 1)]
    assert config.concurrency == 3


def test_factory_pattern_init_app(config: Config) -> None:
    """``Kiq()`` at import and ``init_app(app)`` later configure the same way."""
    ext = Kiq()
    app = Flask("factory")
    app.config["KIQ_CONCURRENCY"] = 7

    ext.init_app(app)

    assert config.concurrency == 7
    assert AppContext in config.server_middleware


def test_unknown_kiq_key_is_refused(config: Config) -> None:
    """A misspelt KIQ_ key fails init_app, naming it."""
    app = Flask("typo")
    app.config["KIQ_CONCURENCY"] = 7

    with pytest.raises(ConfigError, match="KIQ_CONCURENCY"):
        Kiq(app)


def test_view_enqueues_into_redis(config: Config, flaskapp: ModuleType, r) -> None:
    """perform_async in a view pushes the job to the configured Redis."""
    client = flaskapp.create_app().test_client()

    jid = client.post("/greet/ann").get_json()["jid"]

    (raw,) = r.lrange("queue:greetings", 0, -1)
    assert (orjson.loads(raw)["jid"], orjson.loads(raw)["args"]) == (jid, ["ann"])


def test_jobs_run_inside_the_app_context(config: Config, flaskapp: ModuleType, r) -> None:
    """A job run through the server middleware sees current_app, outside any request."""
    flaskapp.create_app()

    flaskapp.Greet.perform_inline("bob")

    assert r.lrange("flask:done", 0, -1) == ["flaskapp:bob"]


@pytest.mark.slow
def test_flask_kiq_worker_runs_a_job_with_current_app(
    config: Config, flaskapp: ModuleType, redis_url: str, r, tmp_path: Path
) -> None:
    """``flask kiq worker`` loads the app, reads KIQ_QUEUES, runs the job in the app
    context, and stops cleanly on TERM."""
    flaskapp.create_app().test_client().post("/greet/cy")
    env: dict[str, Any] = {
        k: v for k, v in os.environ.items() if k not in ("KIQ_REDIS_URL", "REDIS_URL")
    }
    env["FLASKAPP_REDIS_URL"] = redis_url
    log = tmp_path / "worker.log"
    command = [sys.executable, "-m", "flask", "--app", "flaskapp:create_app"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*command, "kiq", "worker", "-c", "2", "-t", "2"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: r.lrange("flask:done", 0, -1) == ["flaskapp:cy"], timeout=20)
    except AssertionError:
        proc.kill()
        proc.wait(10)
        raise AssertionError(log.read_text()) from None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0, log.read_text()
