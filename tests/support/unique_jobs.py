"""Unique jobs (kiq.unique) run by ``kiq worker`` subprocesses in tests/test_unique.py.

Loaded with ``-r unique_jobs`` next to jobs.py. Each records, with its jid, who held its
own lock while it ran, so a test can tell "released at start" from "held until success".
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis

import kiq
from kiq import unique

_redis = redis.Redis.from_url(os.environ.get("KIQ_REDIS_URL", "redis://127.0.0.1:6379/15"))


def lock_key(job: kiq.Job) -> str:
    return f"unique:{unique.digest(job.payload)}"


def note(key: str, job: kiq.Job, *args: Any) -> None:
    holder = _redis.get(lock_key(job))
    entry = {
        "jid": job.jid,
        "args": list(args),
        "pid": os.getpid(),
        "holder": holder.decode() if holder else None,
    }
    _redis.rpush(key, json.dumps(entry))


class UniqueRecord(kiq.Job, name="UniqueRecord", unique_for=60):
    def perform(self, *args: Any) -> None:
        note("test:done", self, *args)


class UniqueAtStart(kiq.Job, name="UniqueAtStart", unique_for=60, unique_until="start"):
    def perform(self, *args: Any) -> None:
        note("test:done", self, *args)


class UniqueFlaky(kiq.Job, name="UniqueFlaky", unique_for=60, retry=3):
    """Fails its first run, succeeds once retried."""

    def perform(self, *args: Any) -> None:
        note("test:started", self, *args)
        if "retry_count" not in self.payload:
            raise ValueError("first run fails")
        note("test:done", self, *args)


class UniqueDoomed(kiq.Job, name="UniqueDoomed", unique_for=60, retry=0):
    """Always fails; retry=0: its first failure sends it to the dead set."""

    def perform(self, *args: Any) -> None:
        note("test:started", self, *args)
        raise ValueError("always fails")


class UniqueNap(kiq.Job, name="UniqueNap", unique_for=60):
    """Sleep ``seconds`` on its first run only (a recovered run finishes at once).

    Unique per ``tag`` only, so copies may sleep for different times."""

    @staticmethod
    def unique_args(args: list[Any]) -> list[Any]:
        return args[1:]

    def perform(self, seconds: float, tag: Any = None) -> None:
        note("test:started", self, seconds, tag)
        if "kiq_recoveries" not in self.payload:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                time.sleep(0.01)
        note("test:done", self, seconds, tag)


class UniqueImport(kiq.Job, name="UniqueImport", unique_for=600):
    """The brief's import job: unique per file, whatever the other arguments say."""

    @staticmethod
    def unique_args(args: list[Any]) -> list[Any]:
        return args[:1]

    def perform(self, path: str, requested_by: int) -> None:
        note("test:done", self, path, requested_by)
