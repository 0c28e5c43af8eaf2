"""kiq's I/O-bound job for the io and mixed sections: ``async def perform`` on queue "io".

Worker (an async capsule of 1,000, see bench/io_bench.py for the exact command)::

    kiq worker -r bench/io_apps/kiq_io.py ...

Client (``python bench/io_apps/kiq_io.py fill sleep 20000``, see _io_common): pushes with
``aperform_bulk``, kiq's asyncio client.
"""

from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _io_common

import kiq

QUEUE = "io"


class IoJob(kiq.Job, name="bench.IoJob", queue=QUEUE, retry=False):
    """Waits 50 ms on a socket or a timer (see _io_common.io_job)."""

    async def perform(self, kind: str, target: Any, sent: float) -> None:
        await _io_common.io_job(kind, target, sent)


async def make_push() -> _io_common.Push:
    async def push(jobs: list[tuple[str, Any, float]]) -> None:
        await IoJob.aperform_bulk([list(job) for job in jobs])

    return push


if __name__ == "__main__":
    sys.exit(_io_common.main(make_push, sys.argv[1:]))
