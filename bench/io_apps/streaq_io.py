"""streaq's I/O-bound job: `streaq run streaq_io:worker` (concurrency 1,000, one process)."""

from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _io_common
from streaq import Worker

worker = Worker(redis_url=os.environ["BENCH_REDIS_URL"], concurrency=1000)


@worker.task(ttl=0, max_tries=1)  # no result kept, as arq's keep_result=0
async def io_job(kind: str, target: Any, sent: float) -> None:
    await _io_common.io_job(kind, target, sent)


async def make_push() -> _io_common.Push:
    await worker.__aenter__()  # the client's connection, closed by push.close

    async def push(jobs: list[tuple[str, Any, float]]) -> None:
        await worker.enqueue_many([io_job.enqueue(*job) for job in jobs])

    async def close() -> None:
        await worker.__aexit__(None, None, None)

    push.close = close  # type: ignore[attr-defined]
    return push


if __name__ == "__main__":
    sys.exit(_io_common.main(make_push, sys.argv[1:]))
