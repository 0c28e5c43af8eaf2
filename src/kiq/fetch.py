"""Fetch: pull work from Redis in batches without ever holding a job only in memory.

Tasks:
  1. order: the queue list for each fetch; strict (all weights 0: always in the
     given order) or weighted (Sidekiq: expand each queue ``weight`` times, shuffle,
     keep first occurrences), minus paused queues.
  2. fetch: one Lua call (``Store.fetch``) acknowledges finished jobs and moves up to
     ``free`` new jobs from the queues into this process's in-progress lists, so a
     batch costs one round trip instead of one per job (issue 5).
  3. wait: when every queue is empty, the fetcher parks (``idle``) and kiq.idle's
     waiter threads block in BLMOVE; a job arriving then runs on the waiter that took
     it when it can, else it wakes the fetcher (``wake``), which takes the rest in
     batches.
  4. ack: the manager hands back a finished unit (``ack``); its ack rides on the
     next fetch, or is written at once while the fetcher is idle.
  5. isolate: at most one job that was already in a crash (``kiq_recoveries`` set by
     kiq.recover) runs in this process at a time; another one is put back at the tail
     of its queue for another process, or for later (see ``_isolate``).

``free`` starts at ``concurrency + prefetch``: a few jobs beyond the idle slots are
taken ahead (they sit in Redis in-progress lists, and are put back on quiet), which
keeps slots busy while the next batch is on the wire.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from kiq import payload as wire
from kiq.config import Config, Queue
from kiq.errors import PayloadError
from kiq.outage import Outage
from kiq.payload import Payload
from kiq.store import is_transient
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
    result: Any = None  # what perform returned (a batch/workflow step's result)

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


def by_queue(units: Iterable[UnitOfWork]) -> dict[str, list[bytes]]:
    """The raw jobs of ``units`` grouped by queue, in the given order (for requeues)."""
    grouped: dict[str, list[bytes]] = {}
    for unit in units:
        grouped.setdefault(unit.queue, []).append(unit.raw)
    return grouped


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


class Hand(Protocol):
    """What the fetcher hands fetched units to: the Manager."""

    def deliver(self, units: list[UnitOfWork]) -> None:
        """Run these units (their slots are taken), or put them back after quiet."""


class Fetcher:
    """Keep ``concurrency + prefetch`` jobs in flight; see the module docstring.

    Its interface: ``deliver`` units to the ``hand``; ``ack`` / ``release`` a unit's
    slot; ``start`` / ``stop`` / ``join``; ``tune`` fetch-ahead. kiq.idle's waiters
    share its lock (``cond``) and slot count through ``claim``, ``unclaim``, ``wake``
    and ``take``.
    """

    def __init__(
        self,
        config: Config,
        identity: str,
        hand: Hand,
        outage: Outage,
        health: Health | None = None,
    ) -> None:
        self.config = config
        self.store = config.store
        self.identity = identity
        self.order = QueueOrder(config.queues)
        self.hand = hand
        self.outage = outage
        self.health = health
        self.cond = threading.Condition()
        self._acks: list[tuple[str, bytes]] = []
        self._free = config.concurrency + config.prefetch
        self._batch = max(1, config.prefetch // 2)  # refill when this many slots are free
        self._extra = 0  # fetch-ahead added for the round trip (see tune)
        self.idle = threading.Event()  # every queue was empty: the waiters watch them
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._suspects = 0  # crash survivors taken and not yet done (at most 1, see _isolate)
        self._hold_until = 0.0  # monotonic; fetch no sooner after putting one back

    # -- called by the manager --------------------------------------------------------
    def ack(self, unit: UnitOfWork) -> None:
        """A unit finished (success or failure recorded): ack it and free its slot."""
        with self.cond:
            self._free += 1
            self._suspects -= unit.suspect
            if not self.idle.is_set():
                self._acks.append((unit.queue, unit.raw))
                self.cond.notify()
                return
        self._ack_now([(unit.queue, unit.raw)])

    def release(self, unit: UnitOfWork | None = None) -> None:
        """A unit was put back without an ack (shutdown); just free its slot."""
        with self.cond:
            self._free += 1
            self._suspects -= unit is not None and unit.suspect
            self.cond.notify()

    def flush_acks(self) -> None:
        with self.cond:
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
                self.outage.error(exc)
                if self.stopping.wait(1.0):
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
        with self.cond:
            self._free += extra - self._extra
            self._extra = extra
            self._batch = max(1, (self.config.prefetch + extra) // 2)
            self.cond.notify()

    # -- called by kiq.idle's waiters, under ``cond`` where it says so ---------------
    def claim(self, unit: UnitOfWork) -> bool:
        """Under ``cond``: may a waiter run ``unit`` itself now? Takes its slot if so."""
        if unit.suspect or self._free <= 0 or not self.idle.is_set() or self.stopping.is_set():
            return False
        self._free -= 1
        return True

    def wake(self) -> None:
        """Under ``cond``: jobs are coming; leave idle and fetch them in batches."""
        self.idle.clear()
        self.cond.notify()

    def unclaim(self) -> None:
        """A claimed slot was not used (the manager declined the unit): give it back."""
        with self.cond:
            self._free += 1
            self.wake()

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        self._thread = spawn("fetcher", self._run, stop=self.stopping, health=self.health)

    def stop(self) -> None:
        """Stop taking work (kiq.idle's waiters are stopped with it, by the manager)."""
        self.stopping.set()
        self.idle.set()  # release parked waiters so they can exit
        with self.cond:
            self.cond.notify_all()

    def join(self, timeout: float) -> None:
        """Wait for the fetcher thread to exit (after ``stop``)."""
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the loops ---------------------------------------------------------------------
    def _run(self) -> None:
        while not self.stopping.is_set():
            with self.cond:
                while (
                    not self.stopping.is_set()
                    and not self._acks
                    and (
                        self.idle.is_set()
                        or self._free < self._batch
                        or time.monotonic() < self._hold_until
                    )
                ):
                    self.cond.wait(self._pause())
                if self.stopping.is_set():
                    return
                acks, self._acks = self._acks, []
                want = 0 if self.idle.is_set() else self._free
            units = self._fetch(want, acks)
            if units is None:
                continue
            if units:
                if self.take(units):
                    with self.cond:
                        self._hold_until = time.monotonic() + HOLD
            elif want > 0:
                with self.cond:
                    self.idle.set()  # from now on ack() writes at once

    def _fetch(self, want: int, acks: list[tuple[str, bytes]]) -> list[UnitOfWork] | None:
        try:
            skipped: list[tuple[str, str]] = []
            pairs = self.store.fetch(self.identity, self.order.next(), want, acks, skipped)
        except BaseException as exc:
            with self.cond:
                self._acks[:0] = acks  # not written, or written twice (LREM: harmless)
            if not is_transient(exc):
                raise  # a bug: the supervisor logs it and restarts this loop
            self.outage.error(exc)
            self.stopping.wait(1.0)
            return None
        for queue, error in skipped:
            self.order.break_queue(queue, error)
        # No outage.ok() here: a fetch that wrote nothing also succeeds on a read-only
        # replica, which would log "back" between two READONLY errors (see kiq.outage).
        return [UnitOfWork.parse(queue, raw) for queue, raw in pairs]

    def _pause(self) -> float:
        hold = self._hold_until - time.monotonic()
        return min(TIMEOUT, hold) if hold > 0 else TIMEOUT

    def take(self, units: list[UnitOfWork]) -> bool:
        """Deliver the units, minus crash survivors put back; True if any was put back."""
        units, back = self._isolate(units)
        if units:
            with self.cond:
                self._free -= len(units)
            self.hand.deliver(units)
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
        with self.cond:
            for unit in units:
                if unit.suspect and self._suspects > 0:
                    back.append(unit)
                    continue
                self._suspects += unit.suspect
                keep.append(unit)
        try:  # RPUSHed newest first: the oldest is fetched next
            for queue, raws in by_queue(reversed(back)).items():
                self.store.requeue(self.identity, queue, raws)
        except Exception as exc:
            if not is_transient(exc):
                raise
            with self.cond:
                self._suspects += len(back)
            return units, []
        return keep, back
