"""``kiq demo``: a worker processing real jobs on the embedded Redis, end to end.

It is the README's first command, so it must work on a fresh machine with nothing
but Python and pip: with no REDIS_URL it starts (or reuses) the embedded server,
runs a Launcher in this process, enqueues a mix of jobs (thread jobs, ``async def``
jobs, one that fails once and is retried, one scheduled a few seconds ahead), shows
a live progress line, and stops cleanly when every job is done.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import threading
import time
from typing import Final

import kiq
from kiq import log as kiq_log
from kiq.config import Config, set_default
from kiq.launcher import Launcher

QUEUE: Final = "kiq-demo"
DONE_KEY: Final = "kiq-demo:done"
FLAKY_KEY: Final = "kiq-demo:flaky-attempts"


def _redis() -> Config:
    return kiq.get_default()


class ResizeImage(kiq.Job, name="kiq.demo.ResizeImage", queue=QUEUE):
    """A thread job: pretend to resize an image (10 ms of blocking work)."""

    def perform(self, image_id: int) -> None:
        time.sleep(0.01)
        _redis().store.redis.incr(DONE_KEY)


class FetchPrice(kiq.Job, name="kiq.demo.FetchPrice", queue=QUEUE):
    """An ``async def`` job: pretend to call an HTTP API (50 ms of awaiting)."""

    async def perform(self, symbol: str) -> None:
        await asyncio.sleep(0.05)
        _redis().store.redis.incr(DONE_KEY)


class FlakyWebhook(kiq.Job, name="kiq.demo.FlakyWebhook", queue=QUEUE, retry=3):
    """Fails on its first try, then succeeds: watch it go through the retry set."""

    def perform(self, url: str) -> None:
        if _redis().store.redis.incr(FLAKY_KEY) == 1:
            raise ConnectionError(f"{url} timed out (the demo fails this once on purpose)")
        _redis().store.redis.incr(DONE_KEY)

    @classmethod
    def retry_in(cls, count: int, exc: BaseException, payload: kiq.payload.Payload) -> float:
        return 1.0  # the demo should not wait Sidekiq's 15+ seconds


class SendReminder(kiq.Job, name="kiq.demo.SendReminder", queue=QUEUE):
    """Scheduled two seconds ahead with perform_in."""

    def perform(self, user_id: int) -> None:
        _redis().store.redis.incr(DONE_KEY)


def run_demo(args: argparse.Namespace) -> int:
    config = Config.load(
        concurrency=10,
        queues=[(QUEUE, 0)],
        poll_initial_wait=0.2,
        poll_interval_average=0.5,
        heartbeat_interval=1.0,
        timeout=5.0,
    )
    kiq_log.setup("plain", verbose=False, stream=open("kiq-demo.log", "a"))  # noqa: SIM115
    set_default(config)
    store = config.store
    print(f"kiq {kiq.__version__} demo — Redis: {store.safe_url}")
    store.redis.delete(DONE_KEY, FLAKY_KEY, config.keys.queue(QUEUE))

    launcher = Launcher(config)
    launcher.start()
    started = time.monotonic()
    n = max(args.jobs, 4)
    thread_jobs = n // 2
    async_jobs = n - thread_jobs - 2
    ResizeImage.perform_bulk([[i] for i in range(thread_jobs)])
    FetchPrice.perform_bulk([[f"SYM{i}"] for i in range(async_jobs)])
    FlakyWebhook.perform_async("https://example.test/hook")
    SendReminder.perform_in(2, 42)
    print(
        f"enqueued {n} jobs on queue {QUEUE!r}: {thread_jobs} thread jobs, {async_jobs} "
        f"async jobs, 1 that fails once and is retried, 1 scheduled in 2 s"
    )
    ok = _watch(config, n, started)
    if args.keep:
        print("--keep: still serving; press Ctrl-C to stop")
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    launcher.stop()
    print("worker stopped cleanly; job log lines are in kiq-demo.log")
    return 0 if ok else 1


def _watch(config: Config, total: int, started: float) -> bool:
    r = config.store.redis
    keys = config.keys
    deadline = started + 60
    done = 0
    last = ""
    while time.monotonic() < deadline:
        done = int(r.get(DONE_KEY) or 0)
        retries, scheduled = r.zcard(keys.retry), r.zcard(keys.schedule)
        width = 30
        filled = int(width * done / total)
        line = (
            f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} done, "
            f"{retries} retrying, {scheduled} scheduled"
        )
        if line != last:  # redraw in place on a terminal, one line per change otherwise
            sys.stdout.write(f"\r{line}   " if sys.stdout.isatty() else f"{line}\n")
            sys.stdout.flush()
            last = line
        if done >= total:
            break
        time.sleep(0.1)
    elapsed = time.monotonic() - started
    print(f"\n{'all' if done >= total else 'only'} {done} of {total} jobs done in {elapsed:.1f} s")
    return done >= total
