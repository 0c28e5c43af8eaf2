"""SAQ's I/O-bound job: `saq saq_io.settings` (concurrency 1,000, one process)."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _io_common
import redis.asyncio
from saq.queue.redis import RedisQueue as Queue

URL = os.environ["BENCH_REDIS_URL"]


def queue() -> Queue:
    """redis-py's async pool stops at 100 connections by default, and SAQ's finish of
    each job takes one: at 1,000 jobs at once the default fails jobs with "Too many
    connections", so the pool is sized for the concurrency (SAQ's best setting)."""
    return Queue(redis.asyncio.from_url(URL, max_connections=2000))


async def io_job(ctx: dict[str, Any], *, kind: str, target: Any, sent: float) -> None:
    await _io_common.io_job(kind, target, sent)


settings = {
    "queue": queue(),
    "functions": [io_job],
    "concurrency": 1000,
}


async def make_push() -> _io_common.Push:
    client = queue()
    await client.connect()

    async def push(jobs: list[tuple[str, Any, float]]) -> None:
        await asyncio.gather(
            *(client.enqueue("io_job", kind=k, target=t, sent=s) for k, t, s in jobs)
        )

    return push


if __name__ == "__main__":
    sys.exit(_io_common.main(make_push, sys.argv[1:]))
