"""kiq's side of the benchmark: the job classes the worker runs and the client drivers.

The worker loads this file as any app's jobs file::

    KIQ_REDIS_URL=redis://127.0.0.1:6390/0 kiq worker -r bench/kiq_jobs.py -c 10 -q default

and the bench runs the client side in a process of its own, as Sidekiq's is run in Ruby,
so a push is timed without the bench's own threads and imports in the way::

    python bench/kiq_jobs.py enqueue 20000     # Noop.perform_async(i), one call per job
    python bench/kiq_jobs.py bulk 20000        # Noop.perform_bulk, 1,000 jobs per round trip
    python bench/kiq_jobs.py aenqueue 20000    # await Noop.aperform_async(i) (AsyncClient)
    python bench/kiq_jobs.py fill bench.Noop 20000
    python bench/kiq_jobs.py latency 200 0.010 bench:latency

Each command prints one JSON line. Job names are fixed (``bench.Noop``...) so the
registry entry does not depend on how the file was imported.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
import threading
import time
from typing import Any

import redis

import kiq

PEAK_KEY = "bench:peak"  # ReportPeak writes the highest number of jobs seen running at once


@functools.cache
def _redis() -> redis.Redis:
    """The bench's own client on the worker's Redis (kiq.store keeps its clients private)."""
    return redis.Redis.from_url(kiq.get_default().store.url)


class _Peak:
    """How many jobs ran at once, to show how many slots a mix really used."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0

    def enter(self) -> None:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)

    def leave(self) -> None:
        with self.lock:
            self.running -= 1


PEAK = _Peak()


class Noop(kiq.Job, name="bench.Noop"):
    """Does nothing: what is measured is the engine around it."""

    def perform(self, *args: Any) -> None:
        pass


class Latency(kiq.Job, name="bench.Latency"):
    """RPUSH key (now - sent): end-to-end latency in seconds, as Sidekiq's RubyLatency."""

    def perform(self, sent: float, key: str = "bench:latency") -> None:
        latency = time.time() - sent
        _redis().rpush(key, repr(latency))


class Sleep(kiq.Job, name="bench.Sleep"):
    """An I/O-bound job: blocks for ``seconds`` (1 ms in the mix) without using the CPU."""

    def perform(self, seconds: float = 0.001, *args: Any) -> None:
        PEAK.enter()
        try:
            time.sleep(seconds)
        finally:
            PEAK.leave()


class AsyncSleep(kiq.Job, name="bench.AsyncSleep"):
    """The ``async def`` form of Sleep: awaits for ``seconds`` on the worker's event loop."""

    async def perform(self, seconds: float = 0.001, *args: Any) -> None:
        PEAK.enter()
        try:
            await asyncio.sleep(seconds)
        finally:
            PEAK.leave()


class ReportPeak(kiq.Job, name="bench.ReportPeak"):
    """Write the peak concurrency seen so far and reset it."""

    def perform(self, *args: Any) -> None:
        with PEAK.lock:
            peak, PEAK.peak = PEAK.peak, 0
        _redis().rpush(PEAK_KEY, str(peak))


JOBS: dict[str, type[kiq.Job]] = {
    cls.wire_name: cls for cls in (Noop, Latency, Sleep, AsyncSleep, ReportPeak)
}


# -- client drivers (run as a script) ---------------------------------------------------


def _warm() -> None:
    """Connect and take the code path once before the clock starts (as the Ruby driver)."""
    kiq.get_default().store.ping()
    Noop.perform_async(-1)


def enqueue(n: int) -> dict[str, Any]:
    _warm()
    started = time.perf_counter()
    for i in range(n):
        Noop.perform_async(i)
    return {"seconds": time.perf_counter() - started, "jobs": n, "extra": 1}


def bulk(n: int) -> dict[str, Any]:
    _warm()
    args = [[i] for i in range(n)]
    started = time.perf_counter()
    Noop.perform_bulk(args)
    return {"seconds": time.perf_counter() - started, "jobs": n, "extra": 1}


def aenqueue(n: int) -> dict[str, Any]:
    async def main() -> float:
        await Noop.aperform_async(-1)  # opens the loop's connection
        started = time.perf_counter()
        for i in range(n):
            await Noop.aperform_async(i)
        return time.perf_counter() - started

    seconds = asyncio.run(main())
    return {"seconds": seconds, "jobs": n, "extra": 1}


def fill(name: str, n: int, *args: Any) -> dict[str, Any]:
    JOBS[name].perform_bulk([list(args) if args else [i] for i in range(n)])
    return {"jobs": n}


def latency(count: int, interval: float, key: str) -> dict[str, Any]:
    """Send on an absolute grid so the sender's own time does not stretch the interval."""
    kiq.get_default().store.ping()
    started = time.monotonic()
    for i in range(count):
        delay = started + i * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        Latency.perform_async(time.time(), key)
    return {"sent": count}


def main(argv: list[str]) -> int:
    command, *rest = argv
    out: dict[str, Any]
    if command == "enqueue":
        out = enqueue(int(rest[0]))
    elif command == "bulk":
        out = bulk(int(rest[0]))
    elif command == "aenqueue":
        out = aenqueue(int(rest[0]))
    elif command == "fill":
        out = fill(rest[0], int(rest[1]), *(json.loads(a) for a in rest[2:]))
    elif command == "latency":
        out = latency(int(rest[0]), float(rest[1]), rest[2])
    else:
        raise SystemExit(f"unknown command {command!r}; see the module docstring")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
