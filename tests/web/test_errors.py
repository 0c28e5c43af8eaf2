"""Error pages: 503 naming Redis (without its password) while it is down, and back by
itself when Redis is; a readable 500, without the traceback, for anything else."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from kiq.client import Client
from kiq.config import Config
from kiq.web import create_app
from kiq.web.security import HEADERS
from tests.support.servers import RedisServer
from tests.web.conftest import TestClient, WebClient

PASSWORD = "Sla/sh-Secret"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server with a password and an AOF, which the test may kill."""
    with RedisServer(
        tmp_path,
        [f"requirepass {PASSWORD}", "appendonly yes", "appendfsync always"],
        admin={"password": PASSWORD},
    ) as server:
        yield server


@pytest.fixture
def private(server: RedisServer) -> Iterator[WebClient]:
    """The Web UI on the private server, with a queue in it."""
    config = Config(redis_url=server.url(password=PASSWORD.replace("/", "%2F")))
    Client(config).push({"class": "HardJob", "args": [], "queue": "low"})
    with TestClient(create_app(config)) as client:
        yield WebClient(client)
    config.close()


def test_redis_down_answers_503_naming_it_without_the_password(
    private: WebClient, server: RedisServer
) -> None:
    """Redis killed: 503 with a page that names the URL (password hidden) and reloads."""
    assert private.get("/queues/low").status_code == 200
    server.kill()
    response = private.get("/queues/low")
    assert response.status_code == 503
    assert f"Redis at redis://:***@127.0.0.1:{server.port}/0 is unreachable" in response.text
    assert "Secret" not in response.text
    assert "Traceback" not in response.text
    assert '<meta http-equiv="refresh" content="5">' in response.text
    assert response.headers["retry-after"] == "5"
    for name, value in HEADERS.items():
        assert response.headers[name] == value


def test_the_ui_comes_back_with_redis(private: WebClient, server: RedisServer) -> None:
    """After the outage the next request reconnects: no restart of the web server."""
    server.kill()
    assert private.get("/").status_code == 503
    assert private.http.head("/").status_code == 503  # the health check says it too
    server.start()
    response = private.get("/queues/low")
    assert response.status_code == 200
    assert "HardJob" in response.text


def test_a_post_while_redis_is_down_says_to_check_and_retry(
    private: WebClient, server: RedisServer
) -> None:
    """A form posted during the outage: 503, no automatic reload that would resend it."""
    token = private.token()
    server.kill()
    response = private.http.post(
        "/queues/low", data={"action": "delete", "authenticity_token": token}
    )
    assert response.status_code == 503
    assert "send it again" in response.text
    assert 'http-equiv="refresh"' not in response.text


def test_an_unexpected_error_answers_a_readable_500(
    web: WebClient, r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug-class error (here WRONGTYPE from a queue key that is a string): 500 naming
    the exception class, no traceback or message in the page, the traceback logged."""
    r.sadd("queues", "low")
    r.set("queue:low", "not a list")
    with caplog.at_level(logging.ERROR, logger="kiq.web"):
        response = web.get("/queues")
    assert response.status_code == 500
    assert "Internal error (ResponseError)" in response.text
    assert "WRONGTYPE" not in response.text
    assert "Traceback" not in response.text
    assert '<a href="/">Back to the dashboard</a>' in response.text
    assert response.headers["content-security-policy"] == HEADERS["content-security-policy"]
    assert any(record.exc_info for record in caplog.records), "traceback not logged"


def test_an_auth_hook_that_raises_answers_a_500_with_the_headers(config: Config) -> None:
    """The host application's hook failing is a 500 saying so, not a bare crash."""

    def broken(request: object) -> bool:
        raise RuntimeError("database is down: secret dsn")

    with TestClient(create_app(config, auth=broken)) as client:
        response = client.get("/")
    assert response.status_code == 500
    assert "auth hook" in response.text
    assert "secret" not in response.text
    assert response.headers["x-frame-options"] == HEADERS["x-frame-options"]
