"""Jobs run by ``kiq worker`` subprocesses in tests. Each records what it did in Redis
(KIQ_REDIS_URL), so a test can assert on it from outside the worker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Any

import redis

import kiq

_redis = redis.Redis.from_url(os.environ.get("KIQ_REDIS_URL", "redis://127.0.0.1:6379/15"))


def record(key: str, job: kiq.Job, *args: Any) -> None:
    _redis.rpush(key, json.dumps({"jid": job.jid, "args": list(args), "pid": os.getpid()}))


class Record(kiq.Job, name="Record"):
    def perform(self, *args: Any) -> None:
        record("test:done", self, *args)


class AsyncRecord(kiq.Job, name="AsyncRecord"):
    async def perform(self, *args: Any) -> None:
        await asyncio.sleep(0)
        record("test:done", self, *args)


class Slow(kiq.Job, name="Slow"):
    """Mark start, sleep ``seconds`` (in small steps, so Shutdown lands), mark done."""

    def perform(self, seconds: float, tag: Any = None) -> None:
        record("test:started", self, seconds, tag)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.01)
        record("test:done", self, seconds, tag)


class AsyncSlow(kiq.Job, name="AsyncSlow"):
    async def perform(self, seconds: float, tag: Any = None) -> None:
        record("test:started", self, seconds, tag)
        await asyncio.sleep(seconds)
        record("test:done", self, seconds, tag)


class Boom(kiq.Job, name="Boom", retry=3, backtrace=True):
    def perform(self, *args: Any) -> None:
        raise ValueError(f"boom {args}")


class Suicide(kiq.Job, name="Suicide"):
    """Kill the process running it: a poison job."""

    def perform(self, *args: Any) -> None:
        record("test:started", self, *args)
        os.kill(os.getpid(), signal.SIGKILL)


class SlowTimeout(kiq.Job, name="SlowTimeout", timeout=0.3, retry=0):
    def perform(self) -> None:
        record("test:started", self)
        while True:
            time.sleep(0.01)


class AsyncSlowTimeout(kiq.Job, name="AsyncSlowTimeout", timeout=0.3, retry=0):
    async def perform(self) -> None:
        record("test:started", self)
        await asyncio.sleep(60)
