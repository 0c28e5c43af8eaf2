"""arq's I/O-bound job: `arq arq_io.WorkerSettings` (max_jobs 1,000, one process)."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any, ClassVar

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _io_common
from arq import create_pool
from arq.connections import RedisSettings

SETTINGS = RedisSettings.from_dsn(os.environ["BENCH_REDIS_URL"])


async def io_job(ctx: dict[str, Any], kind: str, target: Any, sent: float) -> None:
    await _io_common.io_job(kind, target, sent)


class WorkerSettings:
    functions: ClassVar[list[Any]] = [io_job]
    redis_settings = SETTINGS
    max_jobs = 1000
    keep_result = 0  # no result kept: a no-op's result would only cost Redis memory
    poll_delay = 0.05  # arq's default 0.5 s poll would idle a 50 ms workload


async def make_push() -> _io_common.Push:
    pool = await create_pool(SETTINGS)

    async def push(jobs: list[tuple[str, Any, float]]) -> None:
        await asyncio.gather(*(pool.enqueue_job("io_job", *job) for job in jobs))

    return push


if __name__ == "__main__":
    sys.exit(_io_common.main(make_push, sys.argv[1:]))
