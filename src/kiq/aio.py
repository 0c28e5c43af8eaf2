"""Run ``async def perform`` jobs as tasks on one event loop thread.

An async job holds a slot only while its task runs, so I/O-bound async jobs use the
process's ``concurrency`` fully without a thread each. ``timeout`` is enforced with
``asyncio.timeout`` (the task is cancelled and fails with JobTimeout); at the hard
shutdown deadline every task is cancelled and, like a thread job, not retried: the
manager has already put it back in its queue.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Any

from kiq import batch
from kiq import log as kiq_log
from kiq.fetch import UnitOfWork
from kiq.processor import Executor, timed_out, timeout_seconds
from kiq.supervise import Health, spawn

log = logging.getLogger(__name__)


class AsyncRunner:
    """An event loop in a named thread, fed with units from the fetcher's thread."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self.loop = asyncio.new_event_loop()
        self.tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)

    def start(self, health: Health | None = None) -> None:
        # Not restarted: the loop holds every running task; if it ends unasked the
        # process cannot go on and says so (kiq.supervise).
        spawn("asyncio", self._run, restart=False, health=health)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
            if not self.executor.stopping.is_set():
                raise RuntimeError("the event loop of async jobs stopped unasked")
        finally:
            # stop() ends run_forever; the loop (and its self-pipe sockets) must still
            # be closed, or every stopped Launcher leaks them (ResourceWarning).
            self.loop.close()

    def submit(self, unit: UnitOfWork) -> None:
        self.loop.call_soon_threadsafe(self._spawn, unit)

    def busy(self) -> int:
        return len(self.tasks)

    def _spawn(self, unit: UnitOfWork) -> None:
        task = self.loop.create_task(self._execute(unit))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _execute(self, unit: UnitOfWork) -> None:
        ex = self.executor
        slot = f"{kiq_log.tid()}-{next(self._ids)}"
        job_class, ctx = ex.begin(unit, slot)
        kiq_log.set_context(ctx)  # tasks run in a copy of the context: no reset needed
        kiq_log.set_level(ex.log_level(unit, job_class))
        exc: BaseException | None = None
        if ex.log_jobs:
            kiq_log.job_line(kiq_log.job_logger("kiq.job"), logging.INFO, "start")
        try:
            job = ex.instantiate(unit, job_class)
            payload: dict[str, Any] = unit.payload or {}
            timeout = payload.get("timeout")
            deadline = asyncio.timeout(timeout_seconds(timeout))
            try:
                async with deadline:
                    if "bid" not in payload or batch.admit(ex.config, payload):
                        unit.result = await ex.config.server_middleware.ainvoke(
                            job, payload, unit.queue, lambda: job.perform(*payload["args"])
                        )
            except TimeoutError as error:
                if not deadline.expired():
                    raise  # the job's own TimeoutError (a network call...), not its timeout
                raise timed_out(timeout) from error
        except asyncio.CancelledError as error:
            if ex.stopping.is_set():
                with ex.state.lock:
                    ex.state.work.pop(slot, None)
                return  # hard shutdown: already requeued
            exc = error  # cancelled by the job's own code: a failure like any other
        except BaseException as error:  # a failing job, whatever it raised
            exc = error
        ex.finish(unit, job_class, ctx, exc, slot)

    def cancel_all(self) -> None:
        def cancel() -> None:
            for task in list(self.tasks):
                task.cancel()

        self._on_loop(cancel)

    def stop(self) -> None:
        self._on_loop(self.loop.stop)

    def _on_loop(self, fn: Callable[[], object]) -> None:
        if not self.loop.is_closed():  # closed: the loop died (kiq.supervise said so)
            self.loop.call_soon_threadsafe(fn)
