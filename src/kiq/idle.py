"""Idle: waiter threads that watch the queues of an idle process, and the idle fast path.

When every queue is empty the fetcher parks (``Fetcher.idle``) and these threads block
in ``BLMOVE queue -> in-progress`` (atomic: a job is never only in memory) for at most
``TIMEOUT`` seconds. Tasks:

  1. wait: two waiters per queue (one without a runner), so a queue stays watched
     while one of them runs a job.
  2. run here (the idle fast path, issue 5): a job that reaches a waiter while the
     other one still waits and a slot is free runs on this thread (``Runner.run_here``,
     the Manager): no processor wakeup, no fetcher wakeup, the process stays idle. On a
     2-core VM every wakeup and every cold line of Python between a job's arrival and
     its start showed (~0.3 ms of a ~1.1 ms enqueue-to-start).
  3. wake: a job arriving while the other waiter is busy means more are coming: the
     fetcher is woken (``Fetcher.wake``) to take the rest in batches, and the job goes
     to the processors (``Fetcher.take``).
  4. skip: a queue paused, or whose key holds another type (WRONGTYPE, issue 12), is
     not waited on; Redis errors are sorted as in kiq.fetch.

Example::

    waiters = Waiters(fetcher, runner=manager)
    waiters.start()
    ...
    waiters.stop(); waiters.join(timeout=3.0)
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Protocol

from kiq.errors import Shutdown
from kiq.fetch import HOLD, TIMEOUT, Fetcher, UnitOfWork
from kiq.store import is_transient, is_wrong_type
from kiq.supervise import spawn


class Runner(Protocol):
    """What runs a unit on the calling waiter thread: the Manager."""

    def run_here(self, unit: UnitOfWork) -> bool:
        """Run ``unit`` now on this thread (True), or decline it (False, nothing done)."""


class Waiters:
    """The waiter threads of one process; see the module docstring."""

    def __init__(self, fetcher: Fetcher, runner: Runner | None = None) -> None:
        self.fetcher = fetcher
        self.runner = runner
        self._threads: list[threading.Thread] = []
        self._waiting = dict.fromkeys(fetcher.order.names, 0)  # threads blocked in BLMOVE
        self._running_here: set[int] = set()  # idents of waiter threads running a job

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        f = self.fetcher
        for queue in f.order.names:
            if queue in f.limits:  # a BLMOVE would take a job without a permit (kiq.fetch)
                continue
            for _ in range(1 if self.runner is None else 2):
                loop = functools.partial(self._wait_loop, queue)
                self._threads.append(
                    spawn(f"waiter-{queue}", loop, stop=f.stopping, health=f.health)
                )

    def stop(self) -> None:
        """After ``Fetcher.stop``: end every BLMOVE now instead of after TIMEOUT.

        Closing the blocking connections does it; a job the server moved just before is
        still in-progress in Redis and is requeued by the manager's final requeue_all.
        """
        self.fetcher.store.disconnect_waiters()

    def join(self, timeout: float) -> None:
        """Wait for the waiters to exit (after ``stop``).

        A waiter that took a fresh connection just after ``stop`` closed the pool would
        block in BLMOVE for TIMEOUT seconds, so the pool is closed again while waiting.
        """
        deadline = time.monotonic() + timeout
        store = self.fetcher.store
        for thread in self._threads:
            # A waiter running a job is the manager's to wait for or interrupt, as a
            # processor would be; it exits when the job ends.
            while (
                thread.is_alive()
                and thread.ident not in self._running_here
                and time.monotonic() < deadline
            ):
                store.disconnect_waiters()
                thread.join(0.05)

    def running_here(self) -> list[int]:
        """Idents of the waiter threads running a job now (hard shutdown interrupts them)."""
        with self.fetcher.cond:
            return list(self._running_here)

    # -- the loop ---------------------------------------------------------------------
    def _wait_loop(self, queue: str) -> None:
        try:
            self._serve_queue(queue)
        except Shutdown:  # the hard stop's interrupt, landed just after a job ended here
            return

    def _serve_queue(self, queue: str) -> None:
        f = self.fetcher
        while not f.stopping.is_set():
            f.idle.wait()
            if f.stopping.is_set():
                return
            if f.order.skipped(queue):
                f.stopping.wait(TIMEOUT)
                continue
            with f.cond:
                self._waiting[queue] += 1
            try:
                raw = self._wait_one(queue)
            except BaseException:  # a bug (restarted by the supervisor) or Shutdown
                with f.cond:
                    self._waiting[queue] -= 1
                raise
            if raw is None:
                with f.cond:
                    self._waiting[queue] -= 1
                continue
            unit = UnitOfWork.parse(queue, raw)
            with f.cond:
                self._waiting[queue] -= 1
                here = self._claim_here(unit)
                if not here:
                    f.wake()
            if here:
                self._run_unit_here(unit)  # Shutdown (hard stop): the job was put back
            elif f.take([unit]):
                f.stopping.wait(HOLD)  # else BLMOVE hands the same job straight back

    def _wait_one(self, queue: str, *, again: bool = True) -> bytes | None:
        """One BLMOVE; None on its timeout, on a Redis error (reported) or when stopping.

        A first error is tried again at once: the waiter's held connection may just be
        stale (Redis restarted while it ran a job), which is no outage to report.
        """
        f = self.fetcher
        sent = time.monotonic()
        try:
            raw = f.store.wait(f.identity, queue)
        except Exception as exc:
            if f.stopping.is_set():
                # stop() disconnects the pool from another thread to wake the waiters;
                # a connect in progress then finds its socket gone (AttributeError,
                # redis-py: None.sendall) or its reply cut short.
                return None
            if is_wrong_type(exc):
                keys = f.store.keys
                where = f"{keys.queue(queue)} or {keys.inprogress(f.identity, queue)}"
                f.order.break_queue(queue, f"{where}: {exc}")
                return None
            if not is_transient(exc):
                raise  # a bug: the supervisor logs it and restarts this waiter
            if again:
                return self._wait_one(queue, again=False)
            f.outage.error(exc)
            f.stopping.wait(1.0)
            return None
        f.outage.ok(sent)
        return raw

    def _claim_here(self, unit: UnitOfWork) -> bool:
        """Under the fetcher's lock: may this waiter run ``unit`` itself?"""
        if (
            self.runner is None
            or self._waiting[unit.queue] == 0  # the other waiter is busy: a burst
            or not self.fetcher.claim(unit)
        ):
            return False
        self._running_here.add(threading.get_ident())
        return True

    def _run_unit_here(self, unit: UnitOfWork) -> None:
        assert self.runner is not None
        try:
            ran = self.runner.run_here(unit)
        finally:  # Shutdown (hard stop) or a bug propagates: the unit stays in-progress
            with self.fetcher.cond:
                self._running_here.discard(threading.get_ident())
        if not ran:  # the manager declined (an async job, no free slot, quiet)
            self.fetcher.unclaim()
            self.fetcher.take([unit])
