"""taskiq's I/O-bound job on taskiq-redis' ListQueueBroker:
`taskiq worker taskiq_io:broker --workers 1 --max-async-tasks 1000`."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _io_common
from taskiq_redis import ListQueueBroker

broker = ListQueueBroker(os.environ["BENCH_REDIS_URL"], queue_name="taskiq")


@broker.task(task_name="io_job")
async def io_job(kind: str, target: Any, sent: float) -> None:
    await _io_common.io_job(kind, target, sent)


async def make_push() -> _io_common.Push:
    await broker.startup()

    async def push(jobs: list[tuple[str, Any, float]]) -> None:
        await asyncio.gather(*(io_job.kiq(*job) for job in jobs))

    return push


if __name__ == "__main__":
    sys.exit(_io_common.main(make_push, sys.argv[1:]))
