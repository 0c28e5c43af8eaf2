"""Fetch: pull work from Redis in batches without ever holding a job only in memory.

Tasks:
  1. order: the queue list for each fetch; strict (all weights 0: always in the
     given order) or weighted (Sidekiq: expand each queue ``weight`` times, shuffle,
     keep first occurrences), minus paused queues.
  2. fetch: one Lua call (``Store.fetch``) acknowledges finished jobs and moves up to
     ``free`` new jobs from the queues into this process's in-progress lists, so a
     batch costs one round trip instead of one per job (issue 5).
  3. wait: when every queue is empty, waiter threads block in
     ``BLMOVE queue -> in-progress`` (atomic, so still nothing only in memory) for at
     most ``TIMEOUT`` seconds. A job arriving at an idle process runs on the waiter
     that took it when it can (the idle fast path, see ``_wait_loop``); else it wakes
     the fetcher, which takes the rest in batches.
  4. done: a processor hands back a finished unit; its ack rides on the next fetch,
     or is written at once while the fetcher is idle.
  5. isolate: at most one job that was already in a crash (``kiq_recoveries`` set by
     kiq.recover) runs in this process at a time; another one is put back at the tail
     of its queue for another process, or for later (see ``_isolate``).

``free`` starts at ``concurrency + prefetch``: a few jobs beyond the idle slots are
taken ahead (they sit in Redis in-progress lists, and are put back on quiet), which
keeps slots busy while the next batch is on the wire.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from kiq import payload as wire
from kiq.config import Config, Queue
from kiq.errors import PayloadError, Shutdown
from kiq.outage import Outage
from kiq.payload import Payload
from kiq.store import is_transient, is_wrong_type
from kiq.supervise import Health, spawn

log = logging.getLogger(__name__)

TIMEOUT: Final = 2.0  # seconds a waiter blocks; bounds how long quiet takes to notice
RATE_FOR_PREFETCH: Final = 20_000  # jobs/s a process may run; sizes fetch-ahead to the RTT
MAX_EXTRA: Final = 200  # most jobs ever fetched ahead for the round trip
HOLD: Final = 0.2  # seconds before fetching again after putting back a crash survivor
SKIP_BROKEN: Final = 10.0  # seconds a queue whose key has the wrong type is left out
REPORT_BROKEN: Final = 60.0  # seconds between two error lines about the same broken queue


@dataclass(slots=True)
class UnitOfWork:
    """A job taken from ``queue`` (and held in Redis in-progress) until acked or requeued."""

    queue: str
    raw: bytes
    payload: Payload | None = None
    error: PayloadError | None = None
    started: float = field(default=0.0)

    @property
    def suspect(self) -> bool:
        """True if the job was running (or fetched) in a process that died."""
        return bool(self.payload and self.payload.get("kiq_recoveries"))

    @classmethod
    def parse(cls, queue: str, raw: bytes) -> UnitOfWork:
        try:
            return cls(queue, raw, wire.loads(raw))
        except PayloadError as exc:
            return cls(queue, raw, None, exc)


class QueueOrder:
    """Sidekiq's queue ordering: strict when no weights are given, else weighted-random."""

    def __init__(self, queues: Sequence[Queue], rng: random.Random | None = None) -> None:
        self.strict = all(weight == 0 for _, weight in queues)
        self._expanded = [name for name, weight in queues for _ in range(max(weight, 1))]
        self.names = list(dict.fromkeys(name for name, _ in queues))
        self._rng = rng or random.Random()
        self.paused: frozenset[str] = frozenset()
        self.broken: dict[str, float] = {}  # queue -> monotonic time to try it again
        self._reported: dict[str, float] = {}  # queue -> when its error was last logged

    def next(self) -> list[str]:
        if self.strict:
            names = self.names
        else:
            expanded = self._expanded[:]
            self._rng.shuffle(expanded)
            names = list(dict.fromkeys(expanded))
        if self.broken:
            self._mend()
            return [n for n in names if n not in self.paused and n not in self.broken]
        if self.paused:
            return [n for n in names if n not in self.paused]
        return names

    def skipped(self, queue: str) -> bool:
        """True while ``queue`` is paused or left out for a key of the wrong type."""
        if queue in self.broken:
            self._mend()
        return queue in self.paused or queue in self.broken

    def _mend(self) -> None:
        now = time.monotonic()
        for name, until in list(self.broken.items()):
            if now >= until:
                self.broken.pop(name, None)

    def break_queue(self, queue: str, error: str) -> None:
        """Leave ``queue`` out for SKIP_BROKEN seconds: one of its keys has another type.

        A WRONGTYPE is a bad key, not an outage: the other queues keep flowing, and the
        error is logged loudly, at most once per REPORT_BROKEN seconds (issue 12).
        """
        now = time.monotonic()
        self.broken[queue] = now + SKIP_BROKEN
        if now - self._reported.get(queue, -REPORT_BROKEN) < REPORT_BROKEN:
            return
        self._reported[queue] = now
        log.error(
            "queue %r is skipped: a key of it is not a list (%s). Jobs in the other queues "
            "still run; kiq tries %r again every %.0f s. Fix: see what the key holds with "
            "`redis-cli TYPE <key>`, then RENAME it aside (or DEL it) if it is not a kiq queue",
            queue,
            error,
            queue,
            SKIP_BROKEN,
        )


class Fetcher:
    """Keep ``concurrency + prefetch`` jobs in flight; see the module docstring."""

    def __init__(
        self,
        config: Config,
        identity: str,
        deliver: Callable[[list[UnitOfWork]], None],
        outage: Outage,
        health: Health | None = None,
        run_here: Callable[[UnitOfWork], bool] | None = None,
    ) -> None:
        self.config = config
        self.store = config.store
        self.identity = identity
        self.order = QueueOrder(config.queues)
        self._deliver = deliver
        self._outage = outage
        self._health = health
        self._cond = threading.Condition()
        self._acks: list[tuple[str, bytes]] = []
        self._free = config.concurrency + config.prefetch
        self._batch = max(1, config.prefetch // 2)  # refill when this many slots are free
        self._extra = 0  # fetch-ahead added for the round trip (see tune)
        self._idle = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._suspects = 0  # crash survivors taken and not yet done (at most 1, see _isolate)
        self._hold_until = 0.0  # monotonic; fetch no sooner after putting one back
        # The idle fast path (see _wait_loop): two waiter threads per queue.
        self._run_here = run_here
        self._waiting = dict.fromkeys(self.order.names, 0)  # threads blocked in BLMOVE
        self._running_here: set[int] = set()  # idents of waiter threads running a job

    # -- called by processors ---------------------------------------------------------
    def done(self, unit: UnitOfWork) -> None:
        """A unit finished (success or failure recorded): ack it and free its slot."""
        with self._cond:
            self._free += 1
            self._suspects -= unit.suspect
            if not self._idle.is_set():
                self._acks.append((unit.queue, unit.raw))
                self._cond.notify()
                return
        self._ack_now([(unit.queue, unit.raw)])

    def release(self, unit: UnitOfWork | None = None) -> None:
        """A unit was put back without an ack (shutdown); just free its slot."""
        with self._cond:
            self._free += 1
            self._suspects -= unit is not None and unit.suspect
            self._cond.notify()

    def flush_acks(self) -> None:
        with self._cond:
            acks, self._acks = self._acks, []
        if acks:
            self._ack_now(acks)

    def _ack_now(self, acks: list[tuple[str, bytes]]) -> None:
        while True:
            try:
                self.store.ack(self.identity, acks)
                return
            except Exception as exc:
                if not is_transient(exc):
                    raise  # a bug: the caller's supervisor reports it; still in-progress
                self._outage.error(exc)
                if self._stopping.wait(1.0):
                    return  # left in-progress: requeued at exit or recovered later

    def tune(self, rtt: float) -> None:
        """Size fetch-ahead to the Redis round trip ``rtt`` (seconds), measured each beat.

        While a fetch is on the wire the slots keep running jobs: to never run dry the
        process needs about ``rate * rtt`` jobs in hand beyond its slots. On loopback
        that is one or two; behind a 1 ms link it is ~20 (issue 5's 1 ms target). The
        extra jobs sit in Redis in-progress lists like any fetched job. ``prefetch: 0``
        turns all fetch-ahead off, this included.
        """
        if self.config.prefetch == 0:
            return
        extra = min(MAX_EXTRA, math.ceil(max(rtt, 0.0) * RATE_FOR_PREFETCH))
        with self._cond:
            self._free += extra - self._extra
            self._extra = extra
            self._batch = max(1, (self.config.prefetch + extra) // 2)
            self._cond.notify()

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        self._spawn("fetcher", self._run)
        for queue in self.order.names:
            for _ in range(1 if self._run_here is None else 2):
                self._spawn(f"waiter-{queue}", functools.partial(self._wait_loop, queue))

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        self._threads.append(spawn(name, target, stop=self._stopping, health=self._health))

    def stop(self) -> None:
        """Stop taking work; waiters notice within TIMEOUT seconds."""
        self._stopping.set()
        self._idle.set()  # release parked waiters so they can exit
        with self._cond:
            self._cond.notify_all()
        # Closing the blocking connections ends a waiter's BLMOVE now instead of after
        # TIMEOUT; a job the server moved just before is still in-progress in Redis and
        # is requeued by the manager's final requeue_all.
        self.store.blocking.connection_pool.disconnect()

    def join(self, timeout: float) -> None:
        """Wait for the fetcher and waiters to exit (after ``stop``).

        A waiter that took a fresh connection just after ``stop`` closed the pool would
        block in BLMOVE for TIMEOUT seconds, so the pool is closed again while waiting.
        """
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            # A waiter running a job is the manager's to wait for or interrupt, as a
            # processor would be; it exits when the job ends.
            while (
                thread.is_alive()
                and thread.ident not in self._running_here
                and time.monotonic() < deadline
            ):
                self.store.blocking.connection_pool.disconnect()
                thread.join(0.05)

    # -- the loops ---------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping.is_set():
            with self._cond:
                while (
                    not self._stopping.is_set()
                    and not self._acks
                    and (
                        self._idle.is_set()
                        or self._free < self._batch
                        or time.monotonic() < self._hold_until
                    )
                ):
                    self._cond.wait(self._pause())
                if self._stopping.is_set():
                    return
                acks, self._acks = self._acks, []
                want = 0 if self._idle.is_set() else self._free
            units = self._fetch(want, acks)
            if units is None:
                continue
            if units:
                if self._take(units):
                    with self._cond:
                        self._hold_until = time.monotonic() + HOLD
            elif want > 0:
                with self._cond:
                    self._idle.set()  # from now on done() acks at once

    def _fetch(self, want: int, acks: list[tuple[str, bytes]]) -> list[UnitOfWork] | None:
        try:
            skipped: list[tuple[str, str]] = []
            pairs = self.store.fetch(self.identity, self.order.next(), want, acks, skipped)
        except BaseException as exc:
            with self._cond:
                self._acks[:0] = acks  # not written, or written twice (LREM: harmless)
            if not is_transient(exc):
                raise  # a bug: the supervisor logs it and restarts this loop
            self._outage.error(exc)
            self._stopping.wait(1.0)
            return None
        for queue, error in skipped:
            self.order.break_queue(queue, error)
        # No outage.ok() here: a fetch that wrote nothing also succeeds on a read-only
        # replica, which would log "back" between two READONLY errors (see kiq.outage).
        return [UnitOfWork.parse(queue, raw) for queue, raw in pairs]

    def _pause(self) -> float:
        hold = self._hold_until - time.monotonic()
        return min(TIMEOUT, hold) if hold > 0 else TIMEOUT

    def _take(self, units: list[UnitOfWork]) -> bool:
        """Deliver the units, minus crash survivors put back; True if any was put back."""
        units, back = self._isolate(units)
        if units:
            with self._cond:
                self._free -= len(units)
            self._deliver(units)
        return bool(back)

    def _isolate(self, units: list[UnitOfWork]) -> tuple[list[UnitOfWork], list[UnitOfWork]]:
        """Split off the crash survivors this process must not run now; put them back.

        A poison job kills its process, and every job fetched with it is recovered with
        it, requeued with it at the tail, fetched with it again by one process: they
        share its fate crash after crash, and after ``max_recoveries`` crashes were all
        buried as kiq.PoisonJob (found by bench/chaos.py). Running at most one crash
        survivor per process at a time breaks that: a poison job's next crash takes
        only fresh jobs with it, once. If Redis refuses the put-back, run them anyway.
        """
        keep: list[UnitOfWork] = []
        back: list[UnitOfWork] = []
        with self._cond:
            for unit in units:
                if unit.suspect and self._suspects > 0:
                    back.append(unit)
                    continue
                self._suspects += unit.suspect
                keep.append(unit)
        by_queue: dict[str, list[bytes]] = {}
        for unit in reversed(back):  # RPUSHed newest first: the oldest is fetched next
            by_queue.setdefault(unit.queue, []).append(unit.raw)
        try:
            for queue, raws in by_queue.items():
                self.store.requeue(self.identity, queue, raws)
        except Exception as exc:
            if not is_transient(exc):
                raise
            with self._cond:
                self._suspects += len(back)
            return units, []
        return keep, back

    def _wait_loop(self, queue: str) -> None:
        """Block in BLMOVE on ``queue`` while the process is idle.

        The idle fast path (issue 5, latency on an idle worker): with ``run_here``, two
        threads wait on each queue. A job that reaches one while the other is still
        waiting (so the queue stays watched) and a slot is free runs on this thread:
        no processor wakeup, no fetcher wakeup, the process stays idle. On a 2-core VM
        every wakeup and every cold line of Python between a job's arrival and its
        start showed (~0.3 ms of a ~1.1 ms enqueue-to-start). A job arriving while the
        other waiter is busy means more than one job is coming: the fetcher is woken to
        take the rest in batches and the job goes to the processors.
        """
        try:
            self._serve_queue(queue)
        except Shutdown:  # the hard stop's interrupt, landed just after a job ended here
            return

    def _serve_queue(self, queue: str) -> None:
        while not self._stopping.is_set():
            self._idle.wait()
            if self._stopping.is_set():
                return
            if self.order.skipped(queue):
                self._stopping.wait(TIMEOUT)
                continue
            with self._cond:
                self._waiting[queue] += 1
            try:
                raw = self._wait_one(queue)
            except BaseException:  # a bug (restarted by the supervisor) or Shutdown
                with self._cond:
                    self._waiting[queue] -= 1
                raise
            if raw is None:
                with self._cond:
                    self._waiting[queue] -= 1
                continue
            unit = UnitOfWork.parse(queue, raw)
            with self._cond:
                self._waiting[queue] -= 1
                here = self._claim_here(unit)
                if not here:
                    self._idle.clear()
                    self._cond.notify()
            if here:
                self._run_unit_here(unit)  # Shutdown (hard stop): the job was put back
            elif self._take([unit]):
                self._stopping.wait(HOLD)  # else BLMOVE hands the same job straight back

    def _wait_one(self, queue: str, *, again: bool = True) -> bytes | None:
        """One BLMOVE; None on its timeout, on a Redis error (reported) or when stopping.

        A first error is tried again at once: the waiter's held connection may just be
        stale (Redis restarted while it ran a job), which is no outage to report.
        """
        sent = time.monotonic()
        try:
            raw = self.store.wait(self.identity, queue)
        except Exception as exc:
            if self._stopping.is_set():
                # join() disconnects the pool from another thread to wake the waiters;
                # a connect in progress then finds its socket gone (AttributeError,
                # redis-py: None.sendall) or its reply cut short.
                return None
            if is_wrong_type(exc):
                keys = self.store.keys
                where = f"{keys.queue(queue)} or {keys.inprogress(self.identity, queue)}"
                self.order.break_queue(queue, f"{where}: {exc}")
                return None
            if not is_transient(exc):
                raise  # a bug: the supervisor logs it and restarts this waiter
            if again:
                return self._wait_one(queue, again=False)
            self._outage.error(exc)
            self._stopping.wait(1.0)
            return None
        self._outage.ok(sent)
        return raw

    def _claim_here(self, unit: UnitOfWork) -> bool:
        """Under the lock: may this waiter run ``unit`` itself? Takes its slot if so."""
        if (
            self._run_here is None
            or unit.suspect
            or self._waiting[unit.queue] == 0  # the other waiter is busy: a burst
            or self._free <= 0
            or not self._idle.is_set()
            or self._stopping.is_set()
        ):
            return False
        self._free -= 1
        self._running_here.add(threading.get_ident())
        return True

    def running_here(self) -> list[int]:
        """Idents of the waiter threads running a job now (hard shutdown interrupts them)."""
        with self._cond:
            return list(self._running_here)

    def _run_unit_here(self, unit: UnitOfWork) -> None:
        assert self._run_here is not None
        try:
            ran = self._run_here(unit)
        finally:  # Shutdown (hard stop) or a bug propagates: the unit stays in-progress
            with self._cond:
                self._running_here.discard(threading.get_ident())
        if not ran:  # the manager declined (an async job, no free slot, quiet)
            with self._cond:
                self._free += 1
                self._idle.clear()
                self._cond.notify()
            self._take([unit])
