"""Jobs behind kiq.Limiter run by ``kiq worker`` subprocesses (tests/test_limits.py,
bench/limits_stress.py). Loaded with ``-r limit_jobs`` next to jobs.py.

``LimitedCall`` holds a concurrent limiter of ``LIMIT_COUNT`` (5) while it sleeps, and
records the moments it held it (after the acquire returned, before the release) in
``test:spans``: the observed concurrency can only be lower than the limiter's own.
``HoldForever`` takes a limiter of 1 and never ends (the SIGKILL test kills its process).
"""

from __future__ import annotations

import os
import time

import redis

import kiq

_redis = redis.Redis.from_url(os.environ.get("KIQ_REDIS_URL", "redis://127.0.0.1:6379/15"))

LIMIT = kiq.Limiter.concurrent(
    "provider-test",
    int(os.environ.get("LIMIT_COUNT", "5")),
    wait_timeout=float(os.environ.get("LIMIT_WAIT", "60")),
    lock_timeout=float(os.environ.get("LIMIT_LOCK_TIMEOUT", "30")),
)
MUTEX = kiq.Limiter.concurrent(
    "mutex-test", 1, wait_timeout=0, lock_timeout=float(os.environ.get("LIMIT_LOCK_TIMEOUT", "30"))
)


class LimitedCall(kiq.Job, name="LimitedCall"):
    def perform(self, seconds: float) -> None:
        with LIMIT.within_limit():
            started = time.time()
            time.sleep(seconds)
            ended = time.time()
        _redis.rpush("test:spans", f"{started} {ended}")


class HoldForever(kiq.Job, name="HoldForever"):
    def perform(self) -> None:
        with MUTEX.within_limit():
            _redis.rpush("test:holding", str(os.getpid()))
            time.sleep(3600)


class QueueSpan(kiq.Job, name="QueueSpan"):
    """Sleeps ``seconds`` and records its span in ``test:qspans:<queue>``."""

    def perform(self, seconds: float) -> None:
        started = time.time()
        time.sleep(seconds)
        queue = self.payload["queue"]
        _redis.rpush(f"test:qspans:{queue}", f"{started} {time.time()} {os.getpid()}")


class QueueHold(kiq.Job, name="QueueHold"):
    """Says which process runs it, then never ends (the SIGKILL test kills it); run again
    after its process died (recovered: ``kiq_recoveries``), it ends at once."""

    def perform(self) -> None:
        _redis.rpush("test:qhold", str(os.getpid()))
        if not self.payload.get("kiq_recoveries"):
            time.sleep(3600)
