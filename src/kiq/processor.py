"""Processor: run one job at a time on a thread (sync jobs) or a task (async jobs).

Tasks, per unit of work:
  1. decode (done once at fetch); an unparseable payload goes to the dead set as
     Sidekiq does, an unknown class fails with UnknownJobError (retried, as Sidekiq's
     NameError), so a Ruby job on a shared queue is never lost.
  2. set the job's log context (class, jid, queue, retry_count) and its ``log_level``,
     log ``start``; mark the slot busy for the heartbeat.
  3. run server middleware around ``perform(*args)``; a ``timeout`` is enforced by
     the Reaper (thread jobs: JobTimeout raised into the thread) or ``asyncio.timeout``.
  4. log ``done`` or ``fail`` with ``elapsed``; a failure goes through RetryHandler;
     every outcome is written before the unit is acknowledged, so a crash in between
     re-runs the job rather than losing it (at-least-once).
  5. count processed / failed for the heartbeat's stats flush.

``Shutdown`` (raised into a thread at the hard-shutdown deadline) is never retried:
the manager has already put the job back in its queue. Three outcomes are neither a
success nor a failure (issue 18, docs/iterable.md): an iterable job that raised
IterationInterrupted goes back to its queue at once (``Pool.requeue``, same payload,
counted as a run); a job found past its ``expires_at`` is dropped unrun; a job that was
cancelled while it ran ends recorded as cancelled. The last two are recorded in
``kiq|fate|<jid>`` (kiq.cancel.record) and acknowledged, never retried.
"""

from __future__ import annotations

import ctypes
import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

from kiq import batch, results, unique
from kiq import cancel as kiq_cancel
from kiq import log as kiq_log
from kiq import payload as wire
from kiq.capsule import Capsule
from kiq.config import Config
from kiq.errors import (
    ConfigError,
    IterationInterrupted,
    JobExpired,
    JobTimeout,
    OverLimit,
    PayloadError,
    Shutdown,
    UnknownJobError,
)
from kiq.fetch import UnitOfWork
from kiq.iterable import IterableJob
from kiq.job import Job, instantiate, lookup, perform
from kiq.retry import RetryHandler, error_class, error_message
from kiq.store import is_transient
from kiq.supervise import Health, spawn

if TYPE_CHECKING:
    from kiq.payload import Payload

log = logging.getLogger("kiq.processor")
job_log = kiq_log.job_logger("kiq.job")

RETRY_WRITE_BACKOFF: Final = (0.5, 1.0, 2.0, 5.0)  # seconds between failed retry writes
LONGEST_WAIT: Final = 3600.0  # seconds the reaper sleeps at most, whatever the deadlines


class State:
    """What the heartbeat reports: counters and the running jobs, behind one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.processed = 0
        self.failed = 0
        self.work: dict[str, tuple[str, bytes, int]] = {}  # tid -> (queue, raw, run_at)
        # jid -> how to cancel the running job (kiq.cancel: the heartbeat calls it)
        self.cancellers: dict[str, Callable[[], None]] = {}

    def running_jids(self) -> list[str]:
        """The jids of the jobs running here, for the heartbeat's cancel check."""
        with self.lock:
            return list(self.cancellers)

    def cancel(self, jids: list[str]) -> None:
        """Tell these running jobs they are cancelled (the heartbeat found the flags)."""
        with self.lock:
            found = [self.cancellers[jid] for jid in jids if jid in self.cancellers]
        for canceller in found:
            canceller()

    def take_counts(self) -> tuple[int, int]:
        with self.lock:
            counts = self.processed, self.failed
            self.processed = self.failed = 0
        return counts

    def restore_counts(self, processed: int, failed: int) -> None:
        with self.lock:
            self.processed += processed
            self.failed += failed


class Reaper:
    """Raise JobTimeout into threads whose job passed its deadline (dramatiq's technique).

    CPython delivers the exception at the thread's next bytecode, so C code blocking in
    a thread (a socket read without its own timeout) is interrupted only once it
    returns to Python: put timeouts on network calls too.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, int]] = []  # (deadline, token, thread ident)
        self._armed: dict[int, int] = {}  # token -> thread ident
        self._fired: set[int] = set()
        self._tokens = itertools.count(1)
        self._stop = False
        spawn("reaper", self._run)

    def arm(self, seconds: float) -> int:
        """Raise JobTimeout into the calling thread in ``seconds``; 0 (nothing armed) for
        a value that is not a positive number. Any finite, infinite or NaN value is safe
        here: the door (kiq.payload) rejects bad ones, and this thread must never die or
        spin on one that got through (issue 12, defect 4)."""
        if not seconds > 0 or seconds == math.inf:  # NaN, 0, negative, inf: no deadline
            return 0
        token = next(self._tokens)
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + seconds, token, threading.get_ident()))
            self._armed[token] = threading.get_ident()
            self._cond.notify()
        return token

    def disarm(self, token: int) -> None:
        """Called by the job's thread when it is done; cancels a raise not yet delivered."""
        with self._cond:
            ident = self._armed.pop(token, None)
            if token in self._fired:
                self._fired.discard(token)
                if ident is not None:
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), None)

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._stop:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    _, token, ident = heapq.heappop(self._heap)
                    if token in self._armed:
                        self._fired.add(token)
                        ctypes.pythonapi.PyThreadState_SetAsyncExc(
                            ctypes.c_ulong(ident), ctypes.py_object(JobTimeout)
                        )
                wait = min(self._heap[0][0] - now, LONGEST_WAIT) if self._heap else None
                self._cond.wait(wait)  # bounded: a huge wait would raise OverflowError


class Pool(Protocol):
    """Where the executor hands a unit back once its outcome is recorded: the Manager."""

    def finished(self, unit: UnitOfWork) -> None:
        """Acknowledge ``unit`` and free its slot."""

    def requeue(self, unit: UnitOfWork) -> None:
        """Move ``unit`` from in-progress back to its queue now, and free its slot."""

    def abandon(self, unit: UnitOfWork) -> None:
        """Free the slot of a unit whose runner failed in kiq's own code; the job stays
        in-progress in Redis (requeued at exit, or recovered if the process dies)."""


class Executor:
    """The steps shared by thread and async jobs (decode, log, run, record, ack)."""

    def __init__(
        self,
        config: Config,
        state: State,
        pool: Pool,
        stopping: threading.Event,
        capsule: Capsule | None = None,
        quieted: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.state = state
        self.finished = pool.finished  # bound once: called for every job
        self.requeue = pool.requeue
        self.abandon = pool.abandon
        self.stopping = stopping
        self.capsule = capsule or config.all_capsules()[0]
        # The one kind of job this capsule runs (True: async def), None for both kinds
        # (the default thread capsule): checked per job as one identity test.
        self._only: bool | None = None
        if not self.capsule.runs(True) or not self.capsule.runs(False):
            self._only = self.capsule.mode == "async"
        self.quieted = quieted or threading.Event()  # iterable jobs stop at quiet
        self.retry = RetryHandler(config)
        self.reaper = Reaper()
        self.log_jobs = not config.skip_default_job_logging

    def begin(self, unit: UnitOfWork, slot: str) -> tuple[type[Job] | None, dict[str, Any]]:
        payload = unit.payload or {}
        name = payload.get("class", "?")
        ctx = kiq_log.job_fields(payload, unit.queue)
        unit.started = time.monotonic()
        with self.state.lock:
            self.state.work[slot] = (unit.queue, unit.raw, int(wire.now()))
        return lookup(name) if isinstance(name, str) else None, ctx

    @staticmethod
    def log_level(unit: UnitOfWork, job_class: type[Job] | None) -> int | None:
        """The job's ``log_level`` option, its logger made to follow it; None if unset."""
        option = (unit.payload or {}).get("log_level")
        if option is None:
            return None
        level = kiq_log.parse_level(option)
        if level is None:
            log.warning("log_level %r is not a level; use debug, info, warn or error", option)
        elif job_class is not None:
            kiq_log.job_logger(f"kiq.job.{job_class.__qualname__}")  # Job.logger's name
        return level

    def instantiate(self, unit: UnitOfWork, job_class: type[Job] | None) -> Job:
        if unit.error is not None:
            raise unit.error
        payload: Payload = unit.payload  # type: ignore[assignment]
        if job_class is None:
            raise UnknownJobError(
                f"no kiq Job is registered as {payload['class']!r}: import the module that "
                f"defines it with -r, or give a Job name={payload['class']!r}"
            )
        if self._only is not None and job_class.is_async is not self._only:
            # Pushed at run time to a queue of the wrong capsule (the start-up check
            # sees only each class's default queue): this job fails, nothing else.
            raise ConfigError(self.capsule.mismatch(payload["class"], job_class.is_async))
        deadline = wire.expiry(payload)
        if deadline is not None and wire.now() > deadline:  # Sidekiq Pro: never run late
            raise JobExpired(f"job expired at {deadline:.3f}, {wire.now() - deadline:.1f}s ago")
        job = instantiate(job_class, payload)
        unique.release_at_start(self.config, payload)  # unique_until="start" (kiq.unique)
        if isinstance(job, IterableJob):
            job.config = self.config
            job._stop = self.quieted
        if "result_ttl" in payload:
            results.mark_running(self.config, payload)  # kiq.results: status "running"
        return job

    def track(self, job: Job, canceller: Callable[[], None] | None = None) -> None:
        """Make the running ``job`` reachable by a cancel (the heartbeat's check)."""

        if canceller is None:

            def flag() -> None:
                job._kiq_cancelled = True

            canceller = flag
        with self.state.lock:
            self.state.cancellers[job.jid] = canceller

    def finish(
        self,
        unit: UnitOfWork,
        job_class: type[Job] | None,
        ctx: dict[str, Any],
        exc: BaseException | None,
        slot: str,
        value: Any = None,
        job: Job | None = None,
    ) -> None:
        """Log, record the outcome in Redis (retrying while Redis is away), then ack.

        ``value`` is what perform returned: stored before the ack for a job pushed with
        ``result_ttl`` (kiq.results), so a crash in between re-runs the job instead of
        leaving its waiters without a result.
        """
        ctx["elapsed"] = round(time.monotonic() - unit.started, 3)
        limited = exc is not None and self.retry.is_limited(unit.payload, exc)
        settled = exc is None or limited or kiq_cancel.not_a_failure(job, exc)
        with self.state.lock:
            self.state.work.pop(slot, None)
            if job is not None:
                self.state.cancellers.pop(job.jid, None)
            self.state.processed += 1
            if not settled:
                self.state.failed += 1
        if isinstance(exc, IterationInterrupted):
            if self.log_jobs:
                kiq_log.job_line(job_log, logging.INFO, "interrupted")
            self.requeue(unit)  # Pool.requeue: same payload, back in its queue at once
            return
        if exc is not None and limited:  # a limiter was full: rescheduled, not a failure
            if self._record_failure(unit, job_class, exc) is None:  # retry.reschedule_limited
                return
        elif settled and (exc is not None or (job is not None and job.cancelled())):
            if not self._dropped(unit, exc):
                return  # stopping with Redis away: left in-progress, requeued at exit
        elif exc is None:
            if not self._succeeded(unit, value):
                return  # stopping with Redis away: left in-progress, requeued at exit
        elif not self._failed(unit, job_class, exc):
            return  # stopping with Redis away: left in-progress, requeued at exit
        self.finished(unit)  # Pool.finished: the one way back (ack, free the slot)

    def _dropped(self, unit: UnitOfWork, exc: BaseException | None) -> bool:
        """A cancelled or expired job: its line, fate and lock (kiq.cancel.settle), then
        done for its batch (``settle_batch`` says why a success); False: stopping, Redis
        away."""
        kiq_cancel.settle(self.config, unit.payload or {}, unit.raw, exc, self.log_jobs)
        payload = unit.payload
        return (
            payload is None
            or "bid" not in payload
            or (self._record_batch(payload, "success", None, None))
        )

    def _succeeded(self, unit: UnitOfWork, value: Any) -> bool:
        """The ``done`` line, the unique release, the result; False: stopping, Redis away."""
        if self.log_jobs:
            kiq_log.job_line(job_log, logging.INFO, "done")
        unique.release_on_success(self.config, unit.payload)  # before the ack (kiq.unique)
        payload = unit.payload
        if payload is None:
            return True
        if "result_ttl" in payload and not self._store_value(payload, value):
            return False
        return "bid" not in payload or self._record_batch(payload, "success", value, None)

    def _failed(self, unit: UnitOfWork, job_class: type[Job] | None, exc: BaseException) -> bool:
        """Log and record a failure (retry or dead set, then its result record); False:
        stopping with Redis away."""
        # One record with the traceback (Sidekiq logs the backtrace): handlers get exc_info.
        job_log.warning("fail: %s: %s", error_class(exc), error_message(exc), exc_info=exc)
        outcome = self._record_failure(unit, job_class, exc)
        if outcome is None:
            return False
        failed = unit.payload or (exc.job if isinstance(exc, PayloadError) else None)
        if failed is not None and "result_ttl" in failed:
            # The failure is already recorded (retry or dead set): if its result record
            # cannot be written before a stop, the ack goes on and a retry rewrites it.
            self._write_result(lambda: results.store_failure(self.config, failed, exc, outcome))
        if unit.payload is not None and "bid" in unit.payload:
            op = "failure" if outcome == "retry" else "death"
            return self._record_batch(unit.payload, op, None, exc)
        return True

    def _record_batch(
        self, payload: Payload, op: str, value: Any, exc: BaseException | None
    ) -> bool:
        """The outcome (``success``, ``failure``, ``death``) in the job's batch (kiq.batch),
        after the retry write and before the ack, retried while Redis is away: a crash in
        between re-runs the job, and the update is idempotent per jid. ``value`` is what
        perform returned (a workflow step's result); False: stopping with Redis away."""
        info = batch.result_json(value) if exc is None else batch.error_json(exc)
        for attempt in itertools.count():
            try:
                batch.record(self.config, payload, op, info)
                return True
            except Exception as error:
                if not is_transient(error):
                    log.exception("cannot record the job's outcome in batch %s", payload["bid"])
                    return True  # a broken batch must not hold the job forever
                pause = RETRY_WRITE_BACKOFF[min(attempt, len(RETRY_WRITE_BACKOFF) - 1)]
                log.warning("cannot record the batch outcome yet; trying again in %ss", pause)
                if self.stopping.wait(pause):
                    return False
        return False  # pragma: no cover

    def _record_failure(
        self, unit: UnitOfWork, job_class: type[Job] | None, exc: BaseException
    ) -> str | None:
        """What became of the failed job (kiq.retry's Outcome), or None when stopping
        with Redis away (the failure is not recorded: the job stays in-progress)."""
        for attempt in itertools.count():
            try:
                if isinstance(exc, PayloadError):
                    self.retry.bury(unit.raw, unit.queue, exc)
                    return "dead"
                if isinstance(exc, OverLimit) and self.retry.is_limited(unit.payload, exc):
                    delay = self.retry.reschedule_limited(unit.raw, exc)
                    if self.log_jobs:
                        kiq_log.job_line(job_log, logging.INFO, f"limited: again in {delay:.1f}s")
                    return "limited"
                return self.retry.handle(unit.raw, unit.queue, exc, job_class)
            except Exception as error:  # not `exc`: that name is the failure being recorded
                if not is_transient(error):
                    raise
                pause = RETRY_WRITE_BACKOFF[min(attempt, len(RETRY_WRITE_BACKOFF) - 1)]
                log.warning("cannot record the failure in Redis yet; trying again in %ss", pause)
                if self.stopping.wait(pause):
                    return None
        return None  # pragma: no cover

    def _store_value(self, payload: Payload, value: Any) -> bool:
        """kiq.results: store what perform returned before the ack; False: stopping."""
        return self._write_result(lambda: results.store_success(self.config, payload, value))

    def _write_result(self, write: Callable[[], None]) -> bool:
        """Write a job's result record, retrying while Redis is away; False: stopping."""
        for attempt in itertools.count():
            try:
                write()
                return True
            except Exception as error:
                if not is_transient(error):
                    # A result must never cost the process (nor the job a re-run): say it
                    # once, loudly, and ack; its waiters time out.
                    log.exception("cannot store the job's result; it is lost")
                    return True
                pause = RETRY_WRITE_BACKOFF[min(attempt, len(RETRY_WRITE_BACKOFF) - 1)]
                log.warning(
                    "cannot store the job's result in Redis yet; trying again in %ss", pause
                )
                if self.stopping.wait(pause):
                    return False
        return False  # pragma: no cover

    def run_sync(self, unit: UnitOfWork) -> None:
        """Run one unit on the calling thread."""
        slot = kiq_log.tid()
        job_class, ctx = self.begin(unit, slot)
        token = kiq_log.set_context(ctx)
        level_token = kiq_log.set_level(self.log_level(unit, job_class))
        exc: BaseException | None = None
        value: Any = None
        job: Job | None = None
        try:
            if self.log_jobs:
                kiq_log.job_line(job_log, logging.INFO, "start")
            timer = 0
            timeout = None
            try:
                job = self.instantiate(unit, job_class)
                self.track(job)
                timeout = unit.payload.get("timeout") if unit.payload else None
                seconds = timeout_seconds(timeout)
                if seconds is not None:
                    timer = self.reaper.arm(seconds)
                try:
                    value = self._perform(job, unit)
                finally:
                    if timer:
                        self.reaper.disarm(timer)
            except Shutdown:
                raise
            except JobTimeout as error:  # the reaper raises the bare class: say why
                exc = error if error.args else timed_out(timeout)
            except BaseException as error:  # job code may raise SystemExit & co: a failure
                exc = error
            self.finish(unit, job_class, ctx, exc, slot, value, job)
        except Shutdown:
            # The manager has already requeued this job; free its slot, or stop() keeps
            # counting it as running and waits HARD_SHUTDOWN_WAIT for nothing.
            with self.state.lock:
                self.state.work.pop(slot, None)
                if job is not None:
                    self.state.cancellers.pop(job.jid, None)
            raise
        finally:
            kiq_log.reset_level(level_token)
            kiq_log.reset_context(token)

    def _perform(self, job: Job, unit: UnitOfWork) -> Any:
        payload: Payload = unit.payload  # type: ignore[assignment]
        if "bid" in payload and not batch.admit(self.config, payload):
            return None  # invalidated batch, or its success already recorded (kiq.batch)
        return perform(job, payload, unit.queue, self.config.server_middleware)


def timeout_seconds(timeout: Any) -> float | None:
    """A payload's ``timeout`` in seconds, or None for no deadline (thread and async jobs).

    Unset, zero, negative, NaN, infinite or not a number: no deadline. The door
    (kiq.payload) rejects such values; this keeps a shared thread (the reaper, the
    event loop's timer heap) safe from one that got through (issue 12, defect 4).
    """
    if not timeout or isinstance(timeout, bool):
        return None
    try:
        seconds = float(timeout)
    except (TypeError, ValueError, OverflowError):
        return None
    return seconds if 0 < seconds < math.inf else None


def timed_out(timeout: object) -> JobTimeout:
    """The error of a job stopped at its ``timeout``, thread and async jobs alike."""
    return JobTimeout(f"job ran longer than its timeout of {timeout}s")


def interrupt(ident: int) -> None:
    """Raise Shutdown in the thread ``ident`` at its next bytecode (hard shutdown)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(Shutdown))


class Processor:
    """One thread: take units from the inbox and run them until told to stop."""

    def __init__(
        self,
        index: int,
        executor: Executor,
        inbox: Any,
        on_death: Callable[[Processor, BaseException], None],
        prefix: str = "",
    ) -> None:
        self.prefix = prefix  # "io." for capsule io's threads; "" for the default capsule
        self.index = index
        self.executor = executor
        self.inbox = inbox
        self.on_death = on_death
        self.current: UnitOfWork | None = None
        self.thread: threading.Thread | None = None

    def start(self, health: Health | None = None) -> None:
        # Not restarted in place: a processor that died is replaced (on_death) by a
        # fresh one, so no state of a failed job leaks into the next (Sidekiq).
        name = f"{self.prefix}processor-{self.index}"
        self.thread = spawn(name, self._run, restart=False, health=health)

    def interrupt(self) -> None:
        """Raise Shutdown in this thread (hard shutdown)."""
        thread = self.thread
        if thread is not None and thread.ident is not None and thread.is_alive():
            interrupt(thread.ident)

    def _run(self) -> None:
        try:
            while True:
                unit = self.inbox.get()
                if unit is None:
                    return
                self.current = unit
                self.executor.run_sync(unit)
                self.current = None
        except Shutdown:
            return
        except BaseException as exc:  # watchdog: report and let the manager replace us
            log.exception("processor %d died", self.index)
            self.on_death(self, exc)
