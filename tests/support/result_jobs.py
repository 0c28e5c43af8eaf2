"""Jobs that keep results (kiq.results), run by ``kiq worker`` subprocesses in
tests/test_results.py and bench/results_bench.py (loaded with ``-r result_jobs``)."""

from __future__ import annotations

import os
import signal
from typing import Any

import redis

import kiq

_redis = redis.Redis.from_url(os.environ.get("KIQ_REDIS_URL", "redis://127.0.0.1:6379/15"))


class ResultAdd(kiq.Job, name="ResultAdd", result_ttl=120):
    def perform(self, a: int, b: int) -> dict[str, Any]:
        return {"sum": a + b, "jid": self.jid}


class ResultAsyncAdd(kiq.Job, name="ResultAsyncAdd", result_ttl=120):
    async def perform(self, a: int, b: int) -> int:
        return a + b


class ResultBoom(kiq.Job, name="ResultBoom", result_ttl=120, retry=False, backtrace=True):
    def perform(self, word: str) -> None:
        explode(word)


def explode(word: str) -> None:
    raise ValueError(f"boom {word}")


class ResultDies(kiq.Job, name="ResultDies", result_ttl=120, retry=0):
    def perform(self) -> None:
        raise KeyError("gone")


class ResultRetries(kiq.Job, name="ResultRetries", result_ttl=120, retry=3):
    def perform(self) -> None:
        raise RuntimeError("try again later")


class ResultBig(kiq.Job, name="ResultBig", result_ttl=120):
    def perform(self, size: int) -> str:
        return "x" * size


class ResultNone(kiq.Job, name="ResultNone"):
    """No result_ttl: nothing is stored (the bench's baseline)."""

    def perform(self, a: int) -> int:
        return a


class ResultKillsFirst(kiq.Job, name="ResultKillsFirst", result_ttl=120):
    """SIGKILLs the process that runs it first; the run after its recovery returns."""

    def perform(self) -> str:
        if _redis.incr("test:result-runs") == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return f"ran in {os.getpid()}"
