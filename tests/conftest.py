"""Shared fixtures: a real Redis database per test run, a fresh Config per test, and
factories for worker processes. Nothing here mocks Redis (STYLE D.7)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

import kiq.config
from kiq.config import Config
from tests.support.wait import wait_until

REDIS_URL = os.environ.get("KIQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
SUPPORT = Path(__file__).parent / "support"
ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A Redis database of our own: db 15, or one per pytest-xdist worker."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    url = REDIS_URL if worker is None else f"{REDIS_URL.rsplit('/', 1)[0]}/{worker.removeprefix('gw')}"
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
    cfg.store.redis.flushdb()
    monkeypatch.setattr(kiq.config, "_default", cfg)
    yield cfg
    cfg.close()


# Test intervals instead of Sidekiq's production ones (5 s beats, 10-15 s first poll);
# a test's own config_text is appended, and later YAML keys win.
FAST_CONFIG = """\
:heartbeat_interval: 0.2
:poll_initial_wait: 0
:poll_interval_average: 0.2
:orphan_check_interval: 0.5
:timeout: 5
"""


class WorkerProcess:
    """A ``kiq worker`` subprocess running the jobs in tests/support."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc = proc
        self.log = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def start_worker(
    redis_url: str, tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory: ``start_worker("-q", "default", env={...})`` -> a running WorkerProcess.

    The worker loads tests/support/jobs.py with FAST_CONFIG (plus ``config_text``),
    so tests need not wait Sidekiq's production intervals.
    """
    started: list[WorkerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, config_text: str | None = None) -> WorkerProcess:
        full_env = dict(os.environ)
        full_env.update({
            "KIQ_REDIS_URL": redis_url,
            "PYTHONPATH": os.pathsep.join([str(SUPPORT), str(ROOT / "src"), full_env.get("PYTHONPATH", "")]),
        })
        full_env.update(env or {})
        cmd = [sys.executable, "-m", "kiq.cli", "worker", "-r", "jobs", *args]
        cfg = tmp_path / f"kiq-{len(started)}.yml"
        cfg.write_text(FAST_CONFIG + (config_text or ""))
        cmd += ["-C", str(cfg)]
        log = tmp_path / f"worker-{len(started)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=tmp_path)
        worker = WorkerProcess(proc, log)
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
