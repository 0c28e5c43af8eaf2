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


def records(r: redis.Redis, key: str = "test:done") -> list[dict[str, Any]]:
    """What ``record`` wrote, oldest first (for the tests, which read from outside)."""
    return [json.loads(item) for item in r.lrange(key, 0, -1)]


def identity_of(r: redis.Redis, pid: int) -> str | None:
    """The heartbeat identity (``host:pid:nonce``) of the worker process ``pid``, once beating."""
    for identity in r.smembers("processes"):
        text = identity.decode() if isinstance(identity, bytes) else identity
        if text.split(":")[-2] == str(pid):
            return text
    return None


def blocked_waiters(r: redis.Redis) -> int:
    """Connections blocked in BLMOVE right now (CLIENT LIST flag ``b``): an idle worker
    has two per queue (kiq.fetch's waiters)."""
    return sum(1 for c in r.client_list() if "b" in c["flags"] and c["cmd"] == "blmove")


class Record(kiq.Job, name="Record"):
    def perform(self, *args: Any) -> None:
        record("test:done", self, *args)


class WhereRan(kiq.Job, name="WhereRan"):
    """Record the name of the thread the job ran on (the idle fast path's tests)."""

    def perform(self, tag: Any = None) -> None:
        import threading

        _redis.rpush("test:threads", threading.current_thread().name)
        record("test:done", self, tag)


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


class NapBoom(kiq.Job, name="NapBoom", retry=3):
    """Sleep ``seconds``, then fail: a failure that lands when the test wants it to."""

    def perform(self, seconds: float) -> None:
        time.sleep(seconds)
        raise ValueError(f"boom after {seconds}s")


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


class Tally(kiq.Job, name="Tally"):
    """Count a run and remember its index in one round trip (10,000-job drains)."""

    def perform(self, index: int) -> None:
        pipe = _redis.pipeline(transaction=False)
        pipe.sadd("test:tally", index)
        pipe.incr("test:count")
        pipe.execute()


class Exit(kiq.Job, name="Exit", retry=0):
    """Raise SystemExit, which must fail the job, not end the process."""

    def perform(self) -> None:
        raise SystemExit(3)


class Interrupt(kiq.Job, name="Interrupt", retry=0):
    """Raise KeyboardInterrupt, which must fail the job, not end the process."""

    def perform(self) -> None:
        raise KeyboardInterrupt


class Pair(kiq.Job, name="Pair"):
    def perform(self, a: Any, b: Any) -> None:
        record("test:done", self, a, b)


class Big(kiq.Job, name="Big"):
    """Record only the size of a (large) argument."""

    def perform(self, blob: str) -> None:
        record("test:done", self, len(blob))


class AsyncRaisesTimeout(kiq.Job, name="AsyncRaisesTimeout", retry=0):
    """An async job with no timeout whose own code raises TimeoutError."""

    async def perform(self) -> None:
        await asyncio.sleep(0)
        raise TimeoutError("upstream took too long")


class InteropEcho(kiq.Job, name="InteropEcho", queue="interop"):
    """Record exactly what arrived, for the Ruby Sidekiq interop tests (tests/interop).

    ``json`` (not orjson) keeps integers beyond 64 bits exact, as Ruby sends them.
    """

    def perform(self, *args: Any) -> None:
        entry = {
            "jid": self.jid,
            "class": self.payload["class"],
            "wrapped": self.payload.get("wrapped"),
            "queue": self.payload.get("queue"),
            "args": list(args),
        }
        _redis.rpush("interop:py:done", json.dumps(entry, ensure_ascii=False))


class ActiveJobWrapper(InteropEcho, name="ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper"):
    """The class of ActiveJob jobs enqueued by Rails' Sidekiq adapter (and Sidekiq <= 7)."""


class SidekiqActiveJobWrapper(InteropEcho, name="Sidekiq::ActiveJob::Wrapper"):
    """The class Sidekiq 8's own ActiveJob adapter writes."""


class AsyncGauge(kiq.Job, name="AsyncGauge"):
    """Record how many AsyncGauge jobs run at the same time (test:levels)."""

    async def perform(self, seconds: float) -> None:
        _redis.rpush("test:levels", _redis.incr("test:running"))
        await asyncio.sleep(seconds)
        _redis.decr("test:running")
        record("test:done", self, seconds)


class Nap(kiq.Job, name="Nap"):
    """Mark start, then one ``time.sleep(seconds)``: C code that Shutdown cannot interrupt."""

    def perform(self, seconds: float) -> None:
        record("test:started", self, seconds)
        time.sleep(seconds)
        record("test:done", self, seconds)


class StopLoop(kiq.Job, name="StopLoop", retry=0):
    """Stop the event loop of async jobs from inside: a part of the process dies."""

    async def perform(self) -> None:
        record("test:started", self)
        asyncio.get_running_loop().stop()


class Leak(kiq.Job, name="Leak", retry=0):
    """Hold ``mb`` MB (touched, so resident) for ``seconds``: a job that leaks memory."""

    def perform(self, mb: int, seconds: float) -> None:
        record("test:started", self, mb, seconds)
        held = bytearray(b"\x01") * (mb * 1024 * 1024)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.01)
        record("test:done", self, len(held) // (1024 * 1024), seconds)


class FailOnce(kiq.Job, name="FailOnce", retry=3):
    """Fail the first run of each jid, then record: a job that is retried once."""

    def perform(self, *args: Any) -> None:
        if _redis.set(f"test:failed-once:{self.jid}", 1, nx=True):
            raise ValueError(f"first run of {self.jid} fails")
        record("test:done", self, *args)
