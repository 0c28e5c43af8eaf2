"""Run ``async def perform`` jobs as tasks on one event loop thread.

An async job holds a slot only while its task runs, so I/O-bound async jobs use the
capsule's ``concurrency`` fully without a thread each: an async capsule
(kiq.capsule) of thousands of slots is thousands of tasks on this one loop.
``timeout`` is enforced with ``asyncio.timeout`` (the task is cancelled and fails
with JobTimeout, so it is retried); at the hard shutdown deadline every task is
cancelled and, like a thread job, not retried: the manager has already put it back
in its queue. ``cancel(jid)`` cancels one running job (acknowledged, not retried).

The loop is uvloop's when uvloop is installed (the optional extra ``kiq[uvloop]``):
the same asyncio API, with its scheduling, timers and sockets in C, which cut an
async capsule's CPU per 50 ms job by a third (docs/capsules.md); the standard loop
otherwise, or with ``KIQ_EVENT_LOOP=asyncio`` in the environment.

Units arrive in batches (``submit_many``: one wakeup of the loop per fetch, not one
per job); a unit dispatched from the loop itself (a finished job freeing its slot)
starts without a wakeup at all.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from kiq import batch
from kiq import log as kiq_log
from kiq.fetch import UnitOfWork
from kiq.iterable import IterableJob
from kiq.job import Job
from kiq.processor import Executor, timed_out, timeout_seconds
from kiq.supervise import Health, spawn

log = logging.getLogger(__name__)
job_log = kiq_log.job_logger("kiq.job")


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop when it is installed (and not refused), else asyncio's."""
    if os.environ.get("KIQ_EVENT_LOOP", "").lower() != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class AsyncRunner:
    """An event loop in a named thread, fed with units from the fetcher's thread."""

    def __init__(self, executor: Executor, name: str = "asyncio") -> None:
        self.executor = executor
        self.name = name
        self.loop = new_loop()
        # slot -> its task; a task removes itself when it ends (no done callback,
        # which cost one more loop callback per job)
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._ids = itertools.count(1)
        self._ident: int | None = None  # the loop thread's
        self._tid = ""

    def start(self, health: Health | None = None) -> None:
        # Not restarted: the loop holds every running task; if it ends unasked the
        # process cannot go on and says so (kiq.supervise).
        spawn(self.name, self._run, restart=False, health=health)

    def _run(self) -> None:
        self._ident = threading.get_ident()
        self._tid = kiq_log.tid()  # busy-jobs slots are "<loop tid>-<n>"
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
        self.submit_many((unit,))

    def submit_many(self, units: Sequence[UnitOfWork]) -> None:
        """Start these units as tasks: at once on the loop thread, else in one wakeup."""
        if threading.get_ident() == self._ident:
            self._spawn_all(units)
        else:
            self.loop.call_soon_threadsafe(self._spawn_all, units)

    def busy(self) -> int:
        return len(self.tasks)

    def _spawn_all(self, units: Sequence[UnitOfWork]) -> None:
        tasks, tid, ids, create = self.tasks, self._tid, self._ids, self.loop.create_task
        for unit in units:
            slot = f"{tid}-{next(ids)}"
            # The task first runs at the next loop iteration: it is in ``tasks`` by then.
            tasks[slot] = create(self._execute(unit, slot))

    def cancel(self, jid: str) -> bool:
        """Cancel the running job ``jid`` (from any thread); False if it runs not here.

        The job's coroutine gets CancelledError at its next await (its ``finally``
        blocks and ``async with`` exits run); it is then recorded as cancelled
        (kiq.cancel), acknowledged and not retried. ``kiq.api.cancel`` reaches it the
        same way, through the heartbeat's check of the ``it-<jid>`` flags.
        """
        ex = self.executor
        with ex.state.lock:
            canceller = ex.state.cancellers.get(jid)
        if canceller is None:
            return False
        canceller()
        return True

    async def _execute(self, unit: UnitOfWork, slot: str) -> None:
        ex = self.executor
        payload: dict[str, Any] = unit.payload or {}
        started = self._begin(unit, slot)
        if started is None:
            return
        job_class, ctx = started
        exc: BaseException | None = None
        value: Any = None
        job: Job | None = None
        if ex.log_jobs:
            kiq_log.job_line(job_log, logging.INFO, "start")
        try:
            job = ex.instantiate(unit, job_class)
            ex.track(job, self._canceller(job, slot))
            timeout = payload.get("timeout")
            seconds = None if timeout is None else timeout_seconds(timeout)
            chain = ex.config.server_middleware
            last: Callable[[], Awaitable[Any]]
            if "result_ttl" in payload or "bid" in payload:  # what perform returns is kept

                async def run() -> Any:
                    nonlocal value  # here: a middleware need not return call_next()'s value
                    value = await job.perform(*payload["args"])
                    return value

                last = run
            else:  # perform's own coroutine: one frame less; args read when it starts
                last = lambda: job.perform(*payload["args"])  # noqa: E731

            if "bid" in payload and not batch.admit(ex.config, payload):
                pass  # invalidated batch, or its success already recorded (kiq.batch)
            elif seconds is None:  # no deadline: no Timeout object per job
                await chain.ainvoke(job, payload, unit.queue, last)
            else:
                deadline = asyncio.timeout(seconds)
                try:
                    async with deadline:
                        await chain.ainvoke(job, payload, unit.queue, last)
                except TimeoutError as error:
                    if not deadline.expired():
                        raise  # the job's own TimeoutError (a network call...), not its timeout
                    raise timed_out(timeout) from error
        except asyncio.CancelledError as error:
            if ex.stopping.is_set():
                self._drop(slot, job)
                return  # hard shutdown: already requeued
            exc = error  # cancelled by the job's own code: a failure like any other
        except BaseException as error:  # a failing job, whatever it raised
            exc = error
        # Out of ``tasks`` before the outcome is written: a cancel arriving now finds
        # no task (the job is done), as it found none once the old done callback ran.
        self.tasks.pop(slot, None)  # cancel_all may have cleared it
        self._finish(unit, job_class, ctx, exc, slot, value, job)

    def _begin(self, unit: UnitOfWork, slot: str) -> tuple[type[Job] | None, dict[str, Any]] | None:
        """The executor's start of a job, with its log context and level; None (the
        slot freed, see ``_lost``) if kiq's own code failed there."""
        ex = self.executor
        try:
            job_class, ctx = ex.begin(unit, slot)
            kiq_log.set_context(ctx)  # tasks run in a copy of the context: no reset needed
            kiq_log.use_level(ex.log_level(unit, job_class))
        except Exception:
            self._lost(unit, slot, "starting")
            return None
        return job_class, ctx

    def _finish(
        self,
        unit: UnitOfWork,
        job_class: type[Job] | None,
        ctx: dict[str, Any],
        exc: BaseException | None,
        slot: str,
        value: Any,
        job: Job | None,
    ) -> None:
        """The executor's record of the outcome and ack; see ``_lost`` if kiq fails there."""
        try:
            self.executor.finish(unit, job_class, ctx, exc, slot, value, job)
        except Exception:
            self._lost(unit, slot, "recording the outcome of")

    def _drop(self, slot: str, job: Job | None) -> None:
        """A task cancelled by the hard shutdown: forget it (its job is requeued)."""
        self.tasks.pop(slot, None)
        ex = self.executor
        with ex.state.lock:
            ex.state.work.pop(slot, None)
            if job is not None:
                ex.state.cancellers.pop(job.jid, None)

    def _lost(self, unit: UnitOfWork, slot: str, step: str) -> None:
        """kiq's own code failed around a job (a bug: the job's own errors are its
        outcome): as a Processor's watchdog does for a thread, say so with the
        traceback and free the slot, so the capsule keeps all its slots. The job stays
        in-progress in Redis: requeued at exit, or recovered if the process dies."""
        log.exception("%s an async job failed in kiq; it stays in progress", step)
        self.tasks.pop(slot, None)
        ex = self.executor
        with ex.state.lock:
            ex.state.work.pop(slot, None)
        ex.abandon(unit)

    def _canceller(self, job: Job, slot: str) -> Callable[[], None]:
        """How a cancel (kiq.cancel, from the heartbeat's thread) reaches this job: set
        its flag and, for a plain ``async def`` job, cancel its task (CancelledError at
        its next await); an iterable job stops at its next item instead."""

        def cancel() -> None:
            job._kiq_cancelled = True
            if not isinstance(job, IterableJob):
                self._on_loop(functools.partial(self._cancel_task, slot))

        return cancel

    def _cancel_task(self, slot: str) -> None:
        task = self.tasks.get(slot)  # on the loop: None if the job ended meanwhile
        if task is not None:
            task.cancel()

    def cancel_all(self) -> None:
        def cancel() -> None:
            tasks = list(self.tasks.values())
            self.tasks.clear()  # a task cancelled before it started never removes itself
            for task in tasks:
                task.cancel()

        self._on_loop(cancel)

    def stop(self) -> None:
        self._on_loop(self._close_then_stop)

    def _close_then_stop(self) -> None:
        # Async jobs may have opened the store's asyncio client on this loop (a limiter's
        # ``async with``, kiq.limiter): close it before the loop ends, or its socket is
        # reported unclosed (ResourceWarning) when the loop is closed.
        task = self.loop.create_task(self.executor.config.store.aclose())
        task.add_done_callback(self._closed)

    def _closed(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.warning("closing the asyncio Redis client failed: %s", task.exception())
        self.loop.stop()

    def _on_loop(self, fn: Callable[[], object]) -> None:
        if not self.loop.is_closed():  # closed: the loop died (kiq.supervise said so)
            self.loop.call_soon_threadsafe(fn)
