"""Jobs for the capsule tests (tests/test_capsules.py, tests/test_async_capsule.py).

Loaded by ``kiq worker -r capsule_jobs`` next to tests/support/jobs.py; every class
here has a default queue of its own (``fast``, ``slow``, ``io``), so the start-up
check (kiq.manager.check_kinds) sees each in the capsule it is meant for. Each job
records what it did in Redis (KIQ_REDIS_URL) for the test to read from outside.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis

import kiq

_redis = redis.Redis.from_url(os.environ.get("KIQ_REDIS_URL", "redis://127.0.0.1:6379/15"))


class Fast(kiq.Job, name="CapFast", queue="fast"):
    """A no-op thread job: records its jid and the thread it ran on."""

    def perform(self, n: int) -> None:
        _redis.rpush("cap:fast", f"{self.jid} {threading.current_thread().name}")


class Hold(kiq.Job, name="CapHold", queue="slow"):
    """A thread job that holds its slot until ``cap:release`` is set (at most 20 s)."""

    def perform(self) -> None:
        _redis.rpush("cap:held", self.jid)
        deadline = time.monotonic() + 20.0
        while not _redis.exists("cap:release") and time.monotonic() < deadline:
            time.sleep(0.01)  # the job's own wait, in the worker: not a test's sleep


class Io(kiq.Job, name="CapIo", queue="io"):
    """An async job: ``seconds`` of awaited I/O, then its jid recorded (once per run)."""

    async def perform(self, seconds: float) -> None:
        _redis.incr("cap:io:started")
        await asyncio.sleep(seconds)
        _redis.rpush("cap:io:done", self.jid)


class IoTimeout(kiq.Job, name="CapIoTimeout", queue="io", timeout=0.2, retry=1):
    """Awaits past its timeout on its first run, finishes on its retry."""

    async def perform(self) -> None:
        runs = _redis.incr(f"cap:runs:{self.jid}")
        if runs == 1:
            await asyncio.sleep(30)
        _redis.rpush("cap:io:done", self.jid)


class IoProgress(kiq.Job, name="CapIoProgress", queue="io"):
    """Reports progress from a coroutine, then waits for ``cap:release``."""

    async def perform(self) -> None:
        self.progress(40, "halfway there")
        while not _redis.exists("cap:release"):
            await asyncio.sleep(0.01)
        _redis.rpush("cap:io:done", self.jid)


class IoWait(kiq.Job, name="CapIoWait", queue="io"):
    """An async job that awaits ``cap:release`` (at most 20 s), then records its jid."""

    async def perform(self) -> None:
        _redis.incr("cap:io:started")
        for _ in range(2000):
            if _redis.exists("cap:release"):
                break
            await asyncio.sleep(0.01)
        _redis.rpush("cap:io:done", self.jid)


class IoThread(kiq.Job, name="CapIoThread", queue="io"):
    """Records the thread its coroutine runs on (the async capsule's event loop)."""

    async def perform(self) -> None:
        _redis.rpush("cap:io:threads", threading.current_thread().name)


class IoPid(kiq.Job, name="CapIoPid", queue="io"):
    """An async job recording ``jid pid`` as it begins and as it ends; with ``hold`` it
    awaits ``cap:release`` in between (at most 20 s)."""

    async def perform(self, hold: bool = False) -> None:
        _redis.rpush("cap:io:began", f"{self.jid} {os.getpid()}")
        for _ in range(2000 if hold else 0):
            if _redis.exists("cap:release"):
                break
            await asyncio.sleep(0.01)
        _redis.rpush("cap:io:pids", f"{self.jid} {os.getpid()}")


class Around:
    """Async server middleware: records before and after the awaited job."""

    async def __call__(
        self, job: Any, payload: Any, queue: str, call_next: Callable[[], Awaitable[None]]
    ) -> None:
        _redis.rpush("cap:mw", f"before {payload['jid']}")
        await call_next()
        _redis.rpush("cap:mw", f"after {payload['jid']}")


if os.environ.get("CAP_MIDDLEWARE"):
    kiq.get_default().server_middleware.add(Around())
if os.environ.get("CAP_IN_CODE"):
    # Sidekiq's `config.capsule("io") { |cap| ... }`, from a module the worker imports
    kiq.get_default().capsule("io", queues=["io"], concurrency=50, mode="async")
if os.environ.get("CAP_BAD"):

    class SyncOnIo(kiq.Job, name="CapSyncOnIo", queue="io"):
        """A plain def job whose default queue is an async capsule's: refused at start."""

        def perform(self) -> None:
            pass
