"""arq (asyncio), 10 jobs at once: `arq arq_app.WorkerSettings`."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, ClassVar

from arq import create_pool
from arq.connections import RedisSettings

URL = os.environ["BENCH_REDIS_URL"]
SETTINGS = RedisSettings.from_dsn(URL)
_loop = asyncio.new_event_loop()
_pool: Any = None


async def noop(ctx: dict[str, Any], *args: object) -> None:
    pass


async def latency(ctx: dict[str, Any], sent: float, key: str) -> None:
    await ctx["redis"].rpush(key, repr(time.time() - sent))


class WorkerSettings:
    functions: ClassVar[list[Any]] = [noop, latency]
    redis_settings = SETTINGS
    max_jobs = 10


def prepare() -> None:
    global _pool
    if _pool is None:
        _pool = _loop.run_until_complete(create_pool(SETTINGS))


def enqueue_one(i: int) -> None:
    _loop.run_until_complete(_pool.enqueue_job("noop", i))


def enqueue_loop(n: int) -> float:
    async def go() -> float:
        started = time.perf_counter()
        for i in range(n):
            await _pool.enqueue_job("noop", i)
        return time.perf_counter() - started

    return _loop.run_until_complete(go())


def send_latency(sent: float, key: str) -> None:
    _loop.run_until_complete(_pool.enqueue_job("latency", sent, key))


if __name__ == "__main__":
    from _driver import run_as_script

    run_as_script("arq_app")
