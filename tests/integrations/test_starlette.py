"""kiq.integrations.starlette in a real minimal Starlette app driven by TestClient: the
lifespan configures kiq, async endpoints enqueue into real Redis, the Web UI mounts."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest

pytest.importorskip("starlette")

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import kiq
from kiq.config import Config
from kiq.errors import ConfigError
from kiq.integrations.starlette import kiq_lifespan, mount_web

with warnings.catch_warnings():
    # Starlette >= 1.x prefers the httpx2 package for its TestClient and warns once at
    # import when it finds httpx; the client works the same with either.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


class WelcomeEmail(kiq.Job, name="star.WelcomeEmail", queue="mailers"):
    def perform(self, user_id: int) -> None: ...


async def signup(request: Request) -> JSONResponse:
    user_id = int(request.path_params["user_id"])
    jid = await WelcomeEmail.aperform_async(user_id)
    return JSONResponse({"jid": jid})


async def signup_with_client(request: Request) -> JSONResponse:
    jid = await kiq.AsyncClient().push({"class": WelcomeEmail, "args": [0], "queue": "bulk"})
    return JSONResponse({"jid": jid})


def make_app(**lifespan_options: Any) -> Starlette:
    return Starlette(
        routes=[
            Route("/signup/{user_id:int}", signup, methods=["POST"]),
            Route("/bulk", signup_with_client, methods=["POST"]),
        ],
        lifespan=kiq_lifespan(**lifespan_options),
    )


def jobs_in(r, queue: str) -> list[dict[str, Any]]:
    return [orjson.loads(raw) for raw in reversed(r.lrange(f"queue:{queue}", 0, -1))]


def test_async_endpoint_enqueues_into_redis(config: Config, redis_url: str, r) -> None:
    """``await Job.aperform_async`` in an endpoint pushes the job before the response."""
    with TestClient(make_app(settings={"redis_url": redis_url})) as client:
        response = client.post("/signup/7")

    (job,) = jobs_in(r, "mailers")
    assert (job["jid"], job["args"], job["class"]) == (
        response.json()["jid"],
        [7],
        "star.WelcomeEmail",
    )


def test_async_client_push_from_an_endpoint(config: Config, r) -> None:
    """``kiq.AsyncClient().push`` works the same from an async endpoint."""
    with TestClient(make_app()) as client:
        jid = client.post("/bulk").json()["jid"]

    assert [job["jid"] for job in jobs_in(r, "bulk")] == [jid]


def test_lifespan_applies_settings_and_exposes_the_config(config: Config) -> None:
    """Settings reach the default Config at startup, which is app.state.kiq."""
    app = make_app(settings={"concurrency": 4, "queues": ["mailers,2", "default"]})

    with TestClient(app):
        assert app.state.kiq is config
        assert config.concurrency == 4
        assert config.queues == [("mailers", 2), ("default", 0)]


def test_unknown_setting_fails_startup(config: Config) -> None:
    """A misspelt setting stops the app at startup, naming the key."""
    with (
        pytest.raises(ConfigError, match="'redis_ulr'"),
        TestClient(make_app(settings={"redis_ulr": "x"})),
    ):
        pass


def test_shutdown_closes_the_loops_redis_client(config: Config) -> None:
    """The lifespan's end closes the asyncio client of the app's loop (no unclosed sockets)."""
    with TestClient(make_app()) as client:
        client.post("/signup/1")
        assert len(config.store._async_clients) == 1

    assert len(config.store._async_clients) == 0


def test_apps_own_lifespan_runs_inside_and_its_state_is_kept(config: Config) -> None:
    """``lifespan=`` wraps the app's own lifespan; the state it yields reaches requests."""
    events: list[str] = []

    @asynccontextmanager
    async def own(app: Starlette) -> AsyncIterator[Mapping[str, Any]]:
        events.append("start")
        yield {"greeting": "hi"}
        events.append("stop")

    async def hello(request: Request) -> JSONResponse:
        return JSONResponse({"greeting": request.state.greeting})

    app = Starlette(routes=[Route("/", hello)], lifespan=kiq_lifespan(lifespan=own))
    with TestClient(app) as client:
        assert client.get("/").json() == {"greeting": "hi"}

    assert events == ["start", "stop"]


def test_web_ui_is_mounted_when_asked(config: Config) -> None:
    """``web="/kiq"`` mounts the dashboard there, behind ``web_auth``."""
    pytest.importorskip("kiq.web")
    allowed: list[bool] = [False]

    with TestClient(make_app(web="/kiq", web_auth=lambda request: allowed[0])) as client:
        refused = client.get("/kiq/")
        allowed[0] = True
        shown = client.get("/kiq/")

    assert refused.status_code == 403
    assert shown.status_code == 200


def test_web_ui_missing_is_a_warning_not_a_crash(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Without kiq.web importable, mount_web logs why and mounts nothing."""
    monkeypatch.setitem(sys.modules, "kiq.web", None)  # import kiq.web -> ImportError
    app = Starlette()

    with caplog.at_level(logging.WARNING, "kiq.integrations.starlette"):
        mounted = mount_web(app, "/kiq")

    assert mounted is False
    assert app.routes == []
    assert "not mounted at /kiq" in caplog.text
