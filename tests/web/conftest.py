"""Fixtures for the Web UI tests: a TestClient on the ``config`` fixture's Redis, a
helper that posts forms the way a browser without Sec-Fetch-Site would (CSRF token
from the signed cookie), and helpers that put jobs and processes in Redis."""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import orjson
import pytest

from kiq.config import Config
from kiq.web import create_app
from tests.support.rawredis import raw_redis

with warnings.catch_warnings():
    # Starlette >= 1.x prefers the httpx2 package for its TestClient and warns once at
    # import when it finds httpx; the client works the same with either.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

TOKEN = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


class WebClient:
    """A TestClient that knows the page's CSRF token, for posting forms."""

    def __init__(self, client: TestClient) -> None:
        self.http = client

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.http.get(path, **kwargs)

    def token(self, path: str = "/queues") -> str:
        """The token a rendered page carries (the one in this client's signed cookie)."""
        match = TOKEN.search(self.http.get(path).text)
        assert match, f"no CSRF token in {path}"
        return match.group(1)

    def post(self, path: str, data: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        """POST a form with the CSRF token, as a browser sending no Sec-Fetch-Site does."""
        form = {"authenticity_token": self.token(), **(data or {})}
        return self.http.post(path, data=form, **kwargs)


@pytest.fixture
def web(config: Config) -> Iterator[WebClient]:
    """The Web UI on the test database, with a CSRF cookie already set."""
    with TestClient(create_app(config)) as client:
        yield WebClient(client)


def payload(**fields: Any) -> dict[str, Any]:
    """A Sidekiq-shaped job payload with sensible defaults."""
    now = time.time()
    job: dict[str, Any] = {
        "class": "HardJob",
        "args": [1, "two"],
        "jid": fields.pop("jid", None) or f"{abs(hash((now, repr(fields)))):024x}"[:24],
        "queue": "default",
        "retry": True,
        "created_at": now,
        "enqueued_at": now,
    }
    job.update(fields)
    return job


def failed(**fields: Any) -> dict[str, Any]:
    """A payload as the retry handler leaves it (error fields, retry_count)."""
    defaults = {"error_class": "ValueError", "error_message": "boom", "retry_count": 2}
    return payload(failed_at=time.time(), **{**defaults, **fields})


def add_process(config: Config, identity: str = "host:123:abcdef012345", **info: Any) -> str:
    """Write a heartbeat hash as a kiq/Sidekiq process does (§1.2)."""
    r = raw_redis(config)
    data = {
        "hostname": "host",
        "pid": 123,
        "started_at": time.time() - 60,
        "tag": "app",
        "concurrency": 5,
        "queues": ["default"],
        "labels": ["kiq"],
        "identity": identity,
        "version": "kiq test",
        "embedded": False,
    }
    data.update(info)
    r.sadd(config.keys.processes, identity)
    r.hset(
        config.keys.process(identity),
        mapping={
            "info": orjson.dumps(data),
            "busy": 1,
            "beat": repr(time.time()),
            "quiet": "false",
            "rss": 20480,
            "rtt_us": 100,
        },
    )
    r.expire(config.keys.process(identity), 60)
    return identity


def add_work(config: Config, identity: str, job: dict[str, Any], tid: str = "t1") -> None:
    """A running job in ``<identity>:work`` (§1.3)."""
    value = {
        "queue": job["queue"],
        "payload": orjson.dumps(job).decode(),
        "run_at": int(time.time()),
    }
    raw_redis(config).hset(config.keys.work(identity), tid, orjson.dumps(value))


__all__ = ["TestClient", "WebClient", "add_process", "add_work", "failed", "payload", "web"]
