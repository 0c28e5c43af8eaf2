"""What every Python system's I/O job does, and the client commands that push those jobs.

Imported by each app in bench/io_apps (kiq's and every async peer's), inside that
system's own virtualenv: it needs only the standard library, aiohttp and redis-py.

The job is ``io_job(kind, target, sent)``:

  kind "sleep"  ``await asyncio.sleep(target)`` (target: seconds, 0.05)
  kind "http"   GET target (``http://127.0.0.1:PORT/``, bench/io_server.py answers after
                50 ms) on one aiohttp session per event loop, keep-alive, no pool limit
  sent > 0      first note ``time.time() - sent`` (the latency phase's jobs: enqueue ->
                start), RPUSHed onto LATENCY_KEY in batches every 20 ms; drain jobs
                carry sent = 0 and record nothing

Client commands (``python <app>.py ...``), each printing one JSON line:

  fill KIND N                  push N jobs, 1,000 concurrent enqueue calls at a time
  paced KIND RATE COUNT        push COUNT latency jobs at RATE jobs/s: every 10 ms the
                               jobs due so far, each carrying the time of its push
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

LATENCY_KEY = "bench:io:latency"
SLEEP_SECONDS = 0.05
TICK = 0.010  # the paced producer's grid

_sessions: dict[int, Any] = {}  # id(loop) -> aiohttp.ClientSession
_pending: dict[int, list[str]] = {}  # id(loop) -> latencies not yet pushed
_flushers: set[asyncio.Task[None]] = set()  # held, so the tasks are not collected


def target(kind: str) -> Any:
    """The job's argument: seconds to sleep, or the URL of the delayed server."""
    if kind == "sleep":
        return SLEEP_SECONDS
    if kind == "http":
        return os.environ["BENCH_IO_URL"]
    raise SystemExit(f"unknown kind {kind!r}: sleep or http")


async def http_get(url: str) -> None:
    loop = asyncio.get_running_loop()
    session = _sessions.get(id(loop))
    if session is None:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        session = _sessions[id(loop)] = aiohttp.ClientSession(connector=connector)
    async with session.get(url) as response:
        await response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {url}: {response.status}")


async def record(sent: float) -> None:
    """Note ``now - sent``; a task of this loop RPUSHes the notes every 20 ms in one
    command (one round trip per job would add a Redis call, and a connection, to each
    of 1,000 jobs at once: the measurement would become the load)."""
    latency = time.time() - sent
    loop = asyncio.get_running_loop()
    pending = _pending.get(id(loop))
    if pending is None:
        pending = _pending[id(loop)] = []
        _flushers.add(loop.create_task(_flush(pending)))
    pending.append(repr(latency))


async def _flush(pending: list[str]) -> None:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    while True:
        await asyncio.sleep(0.02)
        if pending:
            batch = pending[:]
            del pending[: len(batch)]
            await client.rpush(LATENCY_KEY, *batch)


async def io_job(kind: str, target: Any, sent: float) -> None:
    """The whole job: record the start latency if asked, then wait on the I/O."""
    if sent:
        await record(sent)
    if kind == "sleep":
        await asyncio.sleep(float(target))
    else:
        await http_get(str(target))


# -- client side ---------------------------------------------------------------------------

Push = Callable[[list[tuple[str, Any, float]]], Awaitable[None]]


async def fill(push: Push, kind: str, n: int, batch: int = 1000) -> dict[str, Any]:
    arg = target(kind)
    for start in range(0, n, batch):
        await push([(kind, arg, 0.0)] * min(batch, n - start))
    return {"jobs": n}


async def paced(push: Push, kind: str, rate: float, count: int) -> dict[str, Any]:
    """Push on an absolute grid so the producer's own time does not lower the rate."""
    arg = target(kind)
    started = time.monotonic()
    sent = tick = 0
    late = 0.0
    while sent < count:
        due = min(count, round((tick + 1) * TICK * rate))
        if due > sent:
            await push([(kind, arg, time.time())] * (due - sent))
            sent = due
        tick += 1
        delay = started + tick * TICK - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            late = max(late, -delay)
    elapsed = time.monotonic() - started
    return {"sent": count, "seconds": elapsed, "rate": count / elapsed, "max_late_s": late}


def main(push_factory: Callable[[], Awaitable[Push]], argv: list[str]) -> int:
    """Run one client command with the app's push (created inside the running loop)."""
    command, kind, *rest = argv

    async def go() -> dict[str, Any]:
        push = await push_factory()
        try:
            if command == "fill":
                return await fill(push, kind, int(rest[0]))
            if command == "paced":
                return await paced(push, kind, float(rest[0]), int(rest[1]))
            raise SystemExit(f"unknown command {command!r}: fill or paced")
        finally:
            close = getattr(push, "close", None)  # a client to close in this same task
            if close is not None:
                await close()

    print(json.dumps(asyncio.run(go())))
    return 0


def run_as_script(module: str) -> None:
    """Import the app under its module name (so its job functions are the worker's)."""
    import importlib

    app = importlib.import_module(module)
    sys.exit(main(app.make_push, sys.argv[1:]))
