"""kiq.integrations.django in a real minimal Django project (a settings module, an app with
a model and a jobs module, SQLite in a tmp dir): settings at app ready, enqueue after
commit, and ``manage.py kiq worker`` running a job that uses the ORM.

Django is set up once, in this process, for the module; the default Config it
configured at ready() is put back afterwards so no other test sees it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("django")

import django
import orjson
from django.core.management import call_command
from django.db import connections, transaction
from django.test import TestCase

import kiq.config
from kiq.config import Config
from kiq.errors import ConfigError, JobArgumentError
from kiq.integrations.django import (
    OnCommitMiddleware,
    apply_settings,
    enqueue_on_commit,
    settings_values,
)
from tests.support.wait import wait_until

SETTINGS = """\
from pathlib import Path

SECRET_KEY = "kiq-tests"
INSTALLED_APPS = ["kiq.integrations.django", "notes"]
DATABASES = {{
    "default": {{
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(Path(__file__).resolve().parent.parent / "db.sqlite3"),
    }}
}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
KIQ = {{
    "redis_url": {redis_url!r},
    "concurrency": 3,
    "queues": [["notes", 2], "default"],
    "enqueue_on_commit": True,
}}
"""

MODELS = """\
from django.db import models


class Note(models.Model):
    text = models.TextField()
    seen = models.BooleanField(default=False)
"""

JOBS = """\
import kiq

from notes.models import Note


class MarkSeen(kiq.Job, queue="notes"):
    def perform(self, note_id):
        Note.objects.filter(id=note_id).update(seen=True)
"""

MANAGE = """\
import os
import sys

from django.core.management import execute_from_command_line

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "kiqsite.settings")
execute_from_command_line(sys.argv)
"""


def write_project(root: Path, redis_url: str) -> None:
    files = {
        "manage.py": MANAGE,
        "kiqsite/__init__.py": "",
        "kiqsite/settings.py": SETTINGS.format(redis_url=redis_url),
        "notes/__init__.py": "",
        "notes/models.py": MODELS,
        "notes/jobs.py": JOBS,
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Path]:
    """The project, set up in this process with its tables created."""
    root = tmp_path_factory.mktemp("djangoproject")
    write_project(root, redis_url)
    saved_default = kiq.config._default
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root))
        mp.setenv("DJANGO_SETTINGS_MODULE", "kiqsite.settings")
        kiq.config._default = None  # ready() configures a default of its own
        django.setup()
        READY["default"] = kiq.config.get_default()
        kiq.config._default = saved_default
        call_command("migrate", run_syncdb=True, verbosity=0)
        yield root
        connections.close_all()


READY: dict[str, Config] = {}  # the default Config as the app's ready() left it


@pytest.fixture
def on_commit_config(project: Path, config: Config) -> Config:
    """The test's Config with settings.KIQ applied (OnCommitMiddleware included)."""
    return apply_settings(config)


def note(text: str = "hello") -> Any:
    from notes.models import Note  # type: ignore[import-not-found]  # the tmp project

    return Note.objects.create(text=text)


def mark_seen() -> Any:
    from notes.jobs import MarkSeen  # type: ignore[import-not-found]  # the tmp project

    return MarkSeen


def queued(r) -> list[dict[str, Any]]:
    return [orjson.loads(raw) for raw in reversed(r.lrange("queue:notes", 0, -1))]


# -- settings --------------------------------------------------------------------------


def test_app_ready_applies_kiq_settings_to_the_default_config(project: Path) -> None:
    """INSTALLED_APPS' kiq app reads settings.KIQ into the default Config at ready()."""
    ready = READY["default"]
    assert ready.concurrency == 3
    assert ready.queues == [("notes", 2), ("default", 0)]
    assert OnCommitMiddleware in ready.client_middleware


def test_unknown_setting_is_refused_by_name() -> None:
    """A misspelt KIQ key fails at startup, naming the key, instead of being ignored."""
    with pytest.raises(ConfigError, match="'concurency'"):
        settings_values({"concurency": 3})


def test_queues_take_the_sidekiq_file_forms() -> None:
    """Queues are names, "name,weight" strings or [name, weight] pairs, as in sidekiq.yml."""
    values = settings_values({"queues": ["critical,3", ["default", 2], "low"]})

    assert values["queues"] == [("critical", 3), ("default", 2), ("low", 0)]


# -- enqueue after commit --------------------------------------------------------------


def test_push_inside_atomic_reaches_redis_only_at_commit(on_commit_config: Config, r) -> None:
    """With enqueue_on_commit, perform_async in an atomic block pushes when it commits."""
    with transaction.atomic():
        row = note()
        mark_seen().perform_async(row.id)
        assert r.llen("queue:notes") == 0

    (job,) = queued(r)
    assert job["args"] == [row.id]


def test_rollback_drops_the_push(on_commit_config: Config, r) -> None:
    """A push made in a transaction that rolls back never reaches Redis."""
    with transaction.atomic():
        mark_seen().perform_async(note().id)
        transaction.set_rollback(True)

    assert r.llen("queue:notes") == 0


def test_push_outside_atomic_is_immediate(on_commit_config: Config, r) -> None:
    """Outside any atomic block the middleware lets the push through, jid and all."""
    jid = mark_seen().perform_async(7)

    assert [job["jid"] for job in queued(r)] == [jid]


def test_enqueue_on_commit_returns_the_jid_it_pushes_at_commit(project: Path, config, r) -> None:
    """The explicit helper returns the jid at once and pushes that job at commit."""
    with transaction.atomic():
        jid = enqueue_on_commit(mark_seen(), note().id)
        assert r.llen("queue:notes") == 0

    assert [job["jid"] for job in queued(r)] == [jid]


def test_enqueue_on_commit_takes_per_call_options(project: Path, config, r) -> None:
    """``MyJob.set(queue=...)`` works as the job: its options travel in the payload."""
    with transaction.atomic():
        enqueue_on_commit(mark_seen().set(queue="urgent"), 1)

    (raw,) = r.lrange("queue:urgent", 0, -1)
    assert orjson.loads(raw)["args"] == [1]


def test_savepoint_rollback_drops_only_its_push(on_commit_config: Config, r) -> None:
    """A push in an inner atomic block that rolls back is dropped; the outer one's stays."""
    job = mark_seen()
    with transaction.atomic():
        job.perform_async(1)
        with transaction.atomic():  # a savepoint
            job.perform_async(2)
            transaction.set_rollback(True)

    assert [j["args"] for j in queued(r)] == [[1]]


def test_bad_argument_fails_inside_the_transaction(project: Path, config) -> None:
    """enqueue_on_commit checks the arguments at the call, not later in the commit hook."""
    with transaction.atomic(), pytest.raises(JobArgumentError):
        enqueue_on_commit(mark_seen(), object())


def test_commit_hooks_run_inside_a_test_transaction_push_once(on_commit_config: Config, r) -> None:
    """Django's captureOnCommitCallbacks(execute=True) runs hooks while still in an atomic
    block (TestCase's); the deferred push then goes through instead of deferring again."""
    with transaction.atomic():  # what TestCase wraps every test in
        with TestCase.captureOnCommitCallbacks(execute=True) as hooks:
            mark_seen().perform_async(5)
        assert len(hooks) == 1
        assert [j["args"] for j in queued(r)] == [[5]]
        transaction.set_rollback(True)


# -- manage.py kiq worker --------------------------------------------------------------


@pytest.mark.slow
def test_manage_py_kiq_worker_runs_an_orm_job(project: Path, config, r, tmp_path: Path) -> None:
    """``manage.py kiq worker`` reads KIQ (Redis URL, the notes queue), finds notes.jobs,
    runs a job that updates a row through the ORM, and stops cleanly on TERM."""
    row = note("from the worker")
    mark_seen().perform_async(row.id)
    env = {k: v for k, v in os.environ.items() if k not in ("KIQ_REDIS_URL", "REDIS_URL")}
    env["DJANGO_SETTINGS_MODULE"] = "kiqsite.settings"
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "kiq", "worker", "-c", "2", "-t", "2"],
            cwd=project,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: type(row).objects.get(id=row.id).seen, timeout=20)
    except AssertionError:
        proc.kill()
        proc.wait(10)
        raise AssertionError(log.read_text()) from None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0, log.read_text()
