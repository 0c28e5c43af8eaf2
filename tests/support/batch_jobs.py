"""Jobs for the batch and workflow tests (``kiq worker -r batch_jobs``): each records
what it did in Redis (KIQ_REDIS_URL), so a test can count runs and callbacks from
outside the worker processes."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis

import kiq

_redis = redis.Redis.from_url(os.environ.get("KIQ_REDIS_URL", "redis://127.0.0.1:6379/15"))
RUNS = "bt:runs"  # HASH step -> how many times it started
DONE = "bt:done"  # HASH step -> how many times it finished
CALLBACKS = "bt:cb"  # LIST of JSON: one entry per callback run


class Flaky(Exception):
    """Raised once by a "flaky" row: it succeeds on its retry."""


class BRow(kiq.Job, name="BRow", retry=3):
    """A batch member: ``mode`` ok, flaky (fails its first run) or die (retry=0 at push)."""

    def perform(self, n: int, mode: str = "ok", pause: float = 0.0) -> int:
        _redis.hincrby(RUNS, str(n), 1)
        if pause:
            time.sleep(pause)
        if mode == "flaky" and "retry_count" not in self.payload:
            raise Flaky(f"row {n} fails once")
        if mode == "die":
            raise RuntimeError(f"row {n} always fails")
        _redis.hincrby(DONE, str(n), 1)
        return n

    @classmethod
    def retry_in(cls, count: int, exc: BaseException, payload: dict[str, Any]) -> float:
        return 0.01  # plus Sidekiq's jitter: 0-9 s on the first retry


class BCallback(kiq.Job, name="BCallback"):
    """A batch callback: records the event, the batch's counts and when it was pushed."""

    def perform(self, bid: str, options: dict[str, Any]) -> None:
        status = kiq.BatchStatus(bid)
        entry = {
            "event": options.get("event"),
            "bid": bid,
            "jid": self.jid,
            "enqueued_at": self.payload.get("enqueued_at"),
            "pending": status.pending,
            "failures": status.failures,
            "total": status.total,
        }
        _redis.rpush(CALLBACKS, json.dumps(entry))


class BAdder(kiq.Job, name="BAdder"):
    """Adds ``more`` rows to its own batch while it runs (``self.batch.jobs()``)."""

    def perform(self, more: int) -> None:
        _redis.hincrby(RUNS, "adder", 1)
        batch = self.batch
        assert batch is not None
        with batch.jobs():
            for i in range(more):
                BRow.perform_async(500 + i, "ok", 0.05)


class BParent(kiq.Job, name="BParent"):
    """Opens ``depth`` levels of child batches below its own, one row each level."""

    def perform(self, depth: int, rows: int) -> None:
        _redis.hincrby(RUNS, f"parent-{depth}", 1)
        batch = self.batch
        assert batch is not None
        with batch.jobs():
            child = kiq.Batch(
                description=f"level {depth}", on_success=(BCallback, {"event": f"kid-{depth}"})
            )
            with child.jobs():
                for i in range(rows):
                    BRow.perform_async(depth * 1000 + i, "ok", 0.01)
                if depth > 1:
                    BParent.perform_async(depth - 1, rows)


class Step(kiq.Job, name="Step"):
    """A workflow step: counts its runs under ``name``, returns ``value`` plus the
    integers passed from the step before (``pass_result``). Sleeps ``bt:pause`` seconds
    when that key is set, so a test can stop the workers mid-way."""

    def perform(self, name: str, value: int = 0, *passed: Any) -> int:
        _redis.hincrby(RUNS, name, 1)
        pause = _redis.get("bt:pause")
        if pause:
            time.sleep(float(pause))
        total = value + sum(_ints(passed))
        _redis.hset("bt:out", name, json.dumps([value, *passed]))
        _redis.hincrby(DONE, name, 1)
        return total


def _ints(values: Any) -> list[int]:
    if isinstance(values, int):
        return [values]
    if isinstance(values, list | tuple):
        return [n for v in values for n in _ints(v)]
    return []


def runs(r: redis.Redis, key: str = RUNS) -> dict[str, int]:
    return {k.decode() if isinstance(k, bytes) else k: int(v) for k, v in r.hgetall(key).items()}


def callbacks(r: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(item) for item in r.lrange(CALLBACKS, 0, -1)]
