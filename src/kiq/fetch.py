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
  6. mark ahead: the jobs a fetch takes beyond what can start before the next call are
     marked in Redis (``kiq|ahead|<identity>``, in the same Lua call) and wait here in
     ``_ahead``; a later call releases the next ones (their marks go) and only then are
     they handed to the manager. A recovery blames a crash (``kiq_recoveries`` + 1) on
     the unmarked jobs only, the ones that may have run (issue 12: jobs fetched ahead
     beside many crashes were buried as poison though they never ran).

``free`` starts at ``concurrency + prefetch``: a few jobs beyond the idle slots are
taken ahead (they sit in Redis in-progress lists, and are put back on quiet), which
keeps slots busy while the next batch is on the wire. ``tune`` and ``_retune`` add
more for the round trip: the PING's on a slow link, and on any link the jobs this
process runs during CALL_AHEAD fetch calls (at most CALL_AHEAD * ``prefetch``; a drain
of no-op jobs went dry during every call without them). While jobs are finishing, a
few released jobs wait in the manager beyond its free slots (as many as finished
since the last call, at most one refill batch), so a slot that frees finds its next
job without waiting for a round trip; those few count as started if the process dies.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Protocol

from kiq import payload as wire
from kiq.capsule import Capsule
from kiq.config import Config
from kiq.errors import PayloadError
from kiq.order import QueueOrder
from kiq.outage import Outage
from kiq.payload import Payload
from kiq.store import is_transient
from kiq.supervise import Health, spawn

__all__ = ["Fetcher", "QueueOrder", "UnitOfWork", "by_queue"]  # QueueOrder: kiq.order

log = logging.getLogger(__name__)

TIMEOUT: Final = 2.0  # seconds a waiter blocks; bounds how long quiet takes to notice
RATE_FOR_PREFETCH: Final = 20_000  # jobs/s a process may run; sizes fetch-ahead to the RTT
MAX_EXTRA: Final = 200  # most jobs ever fetched ahead for the round trip
# Fetch calls' time of jobs taken ahead (_retune), at most this many * prefetch: a no-op
# drain, interleaved A/B with 2: +10 % jobs/s, -11 % worker CPU/job (2 vs 0: +20 %, -16 %).
CALL_AHEAD: Final = 3
HOLD: Final = 0.2  # seconds before fetching again after putting back a crash survivor
LIMIT_POLL: Final = 0.5  # seconds between fetches while queues have limits (kiq.queue_limits):
# a permit freed by another process is seen this soon, and this process's lease is renewed


@dataclass(slots=True)
class UnitOfWork:
    """A job taken from ``queue`` (and held in Redis in-progress) until acked or requeued."""

    queue: str
    raw: bytes
    payload: Payload | None = None
    error: PayloadError | None = None
    started: float = field(default=0.0)
    ahead: bool = False  # marked in kiq|ahead: may not start until a fetch releases it

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


class Hand(Protocol):
    """What the fetcher hands fetched units to: the Manager."""

    def deliver(self, units: list[UnitOfWork]) -> None:
        """Run these units (their slots are taken), or put them back after quiet."""

    def room(self) -> int:
        """Free slots minus units waiting for one (negative: that many wait beyond)."""


@dataclass(slots=True)
class Call:
    """One fetch call, kept until Redis answered it: a failed one is sent again as it
    was, with its id, so fetch.lua returns the jobs it took if it did run."""

    id: str
    queues: list[str]
    want: int
    acks: list[tuple[str, bytes]]
    release: list[UnitOfWork]  # marked ahead, released by this call
    ahead_from: int | None  # the taken jobs from this index on are marked ahead


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
        capsule: Capsule | None = None,
    ) -> None:
        self.config = config
        self.store = config.store
        self.identity = identity
        # One fetcher per capsule (kiq.capsule): its own queues, slots and acks.
        self.capsule = capsule or config.all_capsules()[0]
        self.order = QueueOrder(self.capsule.queues)
        self.hand = hand
        self.outage = outage
        self.health = health
        self.cond = threading.Condition()
        self._acks: list[tuple[str, bytes]] = []
        self._free = self.capsule.concurrency + config.prefetch
        # Refill when this many slots are free; a capsule of thousands of coroutines
        # refills per 1% of its slots, not per prefetch/2, so that a batch is one round
        # trip for many jobs (an ack still triggers a fetch at once: acks never wait).
        self._floor = max(1, self.capsule.concurrency // 100)
        self._batch = max(self._floor, config.prefetch // 2)
        self._extra = 0  # fetch-ahead added for the round trip (see tune)
        self._rtt = 0.0  # the PING round trip (tune), seconds
        self._call_s = 0.0  # a fetch call's time, send to delivered, smoothed (_retune)
        self._rate = 0.0  # jobs acked per second between calls, smoothed (_retune)
        self.idle = threading.Event()  # every queue was empty: the waiters watch them
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._suspects = 0  # crash survivors taken and not yet done (at most 1, see _isolate)
        self._hold_until = 0.0  # monotonic; fetch no sooner after putting one back
        # Queue limits (kiq.queue_limits): fetch.lua's permits step; waiters skip these
        # queues (a BLMOVE takes no permit) and the loop fetches every LIMIT_POLL instead.
        self.limits = {
            q: (limit.concurrency, limit.rate, limit.per)
            for q, limit in config.limits.items()
            if q in self.order.names
        }
        self._poll_at = 0.0  # monotonic; the next fetch a limited queue needs
        self._ahead: collections.deque[UnitOfWork] = collections.deque()  # marked, oldest first
        self._calls = 0  # fetch calls made (their ids)
        self._unanswered: Call | None = None  # a call that failed: sent again as it was

    # -- called by the manager --------------------------------------------------------
    def ack(self, unit: UnitOfWork) -> None:
        """A unit finished (success or failure recorded): ack it and free its slot."""
        with self.cond:
            self._free += 1
            if self._suspects:  # 0: no crash survivor runs here (see _isolate)
                self._suspects -= unit.suspect
            if not self.idle.is_set() or self._ahead:  # the call also releases ahead jobs
                self._acks.append((unit.queue, unit.raw))
                self.cond.notify()
                return
        self._ack_now([(unit.queue, unit.raw)])

    def ack_many(self, units: list[UnitOfWork]) -> None:
        """``ack`` for a batch: one lock and one wakeup (an async capsule's loop)."""
        acks = [(unit.queue, unit.raw) for unit in units]
        with self.cond:
            self._free += len(units)
            if self._suspects:  # 0: no crash survivor runs here (see _isolate)
                self._suspects -= sum(unit.suspect for unit in units)
            if not self.idle.is_set():
                self._acks.extend(acks)
                self.cond.notify()
                return
        self._ack_now(acks)

    def release(self, unit: UnitOfWork | None = None) -> None:
        """A unit was put back without an ack (shutdown); just free its slot."""
        with self.cond:
            self._free += 1
            self._suspects -= unit is not None and unit.suspect
            self.cond.notify()

    def flush_acks(self) -> None:
        with self.cond:
            acks, self._acks = self._acks, []
            if self._unanswered is not None:  # its acks may not be written yet
                acks[:0] = self._unanswered.acks
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
        with self.cond:
            self._rtt = max(rtt, 0.0)
            self._size_ahead()

    def _retune(self, seconds: float, acks: int, since: float) -> None:
        """After a fetch call that took ``seconds`` and carried ``acks``, ``since`` seconds
        after the previous one (the fetcher thread): the round trip that counts is the
        call's own, not the PING's. While a call with a batch of acks and jobs is in
        Redis and being unpacked here, no job it brings can start: on loopback that is
        ~0.4 ms for a batch of no-op jobs against ~0.05 ms of PING, and jobs in hand for
        only the PING ran the slots dry once per call."""
        if self.config.prefetch == 0:
            return
        with self.cond:
            self._call_s += (seconds - self._call_s) / 8
            self._rate += (acks / max(since, 1e-6) - self._rate) / 8
            self._size_ahead()

    def _size_ahead(self) -> None:
        """Under ``cond``: fetch-ahead for the longer of the PING and the call time.

        The call's share is the jobs this process runs (its measured rate) during
        CALL_AHEAD calls, at most CALL_AHEAD * ``prefetch``: the fetcher gets the GIL for
        the next call often only once the slots ran dry (a drain of no-op jobs sent
        every call with all 10 slots free), so the jobs of one call's time are gone
        before it is sent. Slow jobs add next to nothing (a low rate), so a process of
        slow jobs holds no more of a shared queue than before."""
        ping = math.ceil(self._rtt * RATE_FOR_PREFETCH)
        call = min(
            CALL_AHEAD * self.config.prefetch,
            math.ceil(CALL_AHEAD * self._call_s * self._rate),
        )
        extra = min(MAX_EXTRA, max(ping, call))
        if extra != self._extra:
            self._free += extra - self._extra
            self._extra = extra
            self._batch = max(self._floor, (self.config.prefetch + extra) // 2)
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
        name = "fetcher" if self.capsule.is_default else f"fetcher.{self.capsule.name}"
        self._thread = spawn(name, self._run, stop=self.stopping, health=self.health)

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
        sent = time.monotonic()
        while not self.stopping.is_set():
            call = self._next_call()
            if call is None:
                return
            previous, sent = sent, time.monotonic()
            units = self._fetch(call)
            if units is None:
                continue
            if units and self.idle.is_set():  # a limited queue's poll found work
                with self.cond:
                    self.idle.clear()
            held = self._deliver(call, units)
            if units:  # an empty reply is quick: it says nothing of a batch's time
                self._retune(time.monotonic() - sent, len(call.acks), sent - previous)
            if held:
                with self.cond:
                    self._hold_until = time.monotonic() + HOLD
            elif not units and call.want > 0:
                with self.cond:
                    # From now on ack() writes at once, unless units still wait here for
                    # a release: then the acks ride on the calls that release them.
                    self.idle.set()

    def _next_call(self) -> Call | None:
        """Wait until there is something to send; the call (None: stopping)."""
        with self.cond:
            while (
                not self.stopping.is_set()
                and self._unanswered is None
                and not self._acks
                and not self._poll_due()
                and (
                    self.idle.is_set()
                    or self._free < self._batch
                    or time.monotonic() < self._hold_until
                )
                and not (self._ahead and self.hand.room() > 0)
            ):
                self.cond.wait(self._pause())
            if self.stopping.is_set():
                return None
            if self._unanswered is not None:
                return self._unanswered
            acks, self._acks = self._acks, []
            polling = self._poll_due()
            if polling:  # queue limits: renew the lease, see permits freed elsewhere
                self._poll_at = time.monotonic() + LIMIT_POLL
            want = 0 if self.idle.is_set() and not polling else max(0, self._free)
            release, starts = self._releases(self.hand.room(), len(acks))
            self._calls += 1
            return Call(
                str(self._calls),
                self.order.next(),
                want,
                acks,
                release,
                starts if want > starts else None,
            )

    def _releases(self, room: int, acks: int) -> tuple[list[UnitOfWork], int]:
        """Under ``cond``: the ahead units the next call releases (taken off ``_ahead``),
        and how many of the jobs it takes may start without a mark (one per free slot).

        Enough to fill the free slots, oldest first, and, while jobs are finishing (this
        call carries ``acks``), to keep as many waiting beyond them as finished since the
        last call (at most one refill batch, ``_batch``), so a slot that frees during the
        round trip finds its next job; fewer made a drain of no-op jobs fetch three times
        as often, at ~35 % more worker CPU per job. A worker whose jobs are
        slow, or that just started, keeps none waiting: a crash then blames exactly the
        jobs it was running. A crash survivor is released only for a free slot, never
        to wait (a crash beside it must not count against it)."""
        slots = max(0, room)
        look = max(0, min(self._batch, acks) - max(0, -room))
        release: list[UnitOfWork] = []
        while self._ahead:
            unit = self._ahead[0]
            if slots > 0:
                slots -= 1
            elif look > 0 and not unit.suspect:
                look -= 1
            else:
                return release, 0
            release.append(self._ahead.popleft())
        # New jobs start unmarked only into free slots, never to wait: which of them are
        # crash survivors is unknown until the reply (they come first: put back at the
        # tail), and an unmarked survivor waiting here when the process died was counted
        # for a crash it never saw (a good job buried so, issue 12's plain chaos run).
        return release, slots

    def _fetch(self, call: Call) -> list[UnitOfWork] | None:
        """Send ``call``; the units it took, or None (it failed and is kept to resend)."""
        try:
            skipped: list[tuple[str, str]] = []
            pairs, marked = self.store.fetch_batch(
                self.identity,
                call.queues,
                call.want,
                call.acks,
                release=[unit.raw for unit in call.release],
                ahead_from=call.ahead_from,
                call=call.id,
                skipped=skipped,
                limits=self.limits,
                lease=float(self.config.process_ttl),
            )
        except BaseException as exc:
            with self.cond:
                # Sent again as it is: its acks (LREM) and releases (SREM) are harmless
                # twice, and fetch.lua returns what it took if it ran.
                self._unanswered = call
            if not is_transient(exc):
                raise  # a bug: the supervisor logs it and restarts this loop
            self.outage.error(exc)
            self.stopping.wait(1.0)
            return None
        with self.cond:
            self._unanswered = None
        for queue, error in skipped:
            self.order.break_queue(queue, error)
        # No outage.ok() here: a fetch that wrote nothing also succeeds on a read-only
        # replica, which would log "back" between two READONLY errors (see kiq.outage).
        units = [UnitOfWork.parse(queue, raw) for queue, raw in pairs]
        if marked and call.ahead_from is not None:
            for unit in units[call.ahead_from :]:
                unit.ahead = True
        return units

    def _deliver(self, call: Call, units: list[UnitOfWork]) -> bool:
        """Hand the released and the unmarked units to the manager, keep the marked ones
        in ``_ahead``; True if a crash survivor was put back (see ``take``)."""
        units, back = self._isolate(units)
        with self.cond:
            self._free -= len(units)
            if self.stopping.is_set():  # quiet took _ahead already: the manager puts back
                ready = call.release + units
            else:
                ready = call.release + [unit for unit in units if not unit.ahead]
                self._ahead.extend(unit for unit in units if unit.ahead)
        if ready:
            self.hand.deliver(ready)
        return bool(back)

    def nudge(self) -> None:
        """The manager has a free slot and nothing to start: release ahead units now."""
        if self._ahead:  # unlocked peek (called per job): the fetcher re-checks under cond
            with self.cond:
                self.cond.notify()

    def resync(self) -> int:
        """After this process was taken for dead (its heartbeat hash had expired, e.g. a
        Redis outage or OOM window longer than ``process_ttl``): forget the units
        waiting in ``_ahead`` that a sweep moved out of its in-progress lists, so they
        run once, where they were requeued, and not here as well. Returns how many."""
        with self.cond:  # only units held before the read: a newer one is in a list
            earlier = list(self._ahead)  # referenced, so no new unit can reuse an id
        before = {id(unit) for unit in earlier}
        held = collections.Counter(self.store.in_progress(self.identity, self.order.names))
        with self.cond:
            # Newest first: a copy fetched again after the sweep is the newer unit. When
            # in doubt a unit is kept: it may run twice, but is never left unrun.
            keep: list[UnitOfWork] = []
            for unit in reversed(self._ahead):
                if id(unit) not in before:
                    keep.append(unit)
                elif held[unit.raw] > 0:
                    held[unit.raw] -= 1
                    keep.append(unit)
            dropped = len(self._ahead) - len(keep)
            kept = {id(unit) for unit in keep}  # identity: two copies compare equal
            for unit in self._ahead:
                if id(unit) not in kept:
                    self._free += 1
                    self._suspects -= unit.suspect
            self._ahead = collections.deque(reversed(keep))
            self.cond.notify()
        if dropped:
            log.warning(
                "this process was taken for dead (no heartbeat for process_ttl) and its "
                "jobs were requeued: %d taken ahead were dropped here, to run once elsewhere",
                dropped,
            )
        return dropped

    def drain_ahead(self) -> list[UnitOfWork]:
        """After ``stop``: the units waiting for a release, for the manager to put back."""
        with self.cond:
            units = list(self._ahead)
            self._ahead.clear()
        return units

    def _pause(self) -> float:
        now = time.monotonic()
        hold = self._hold_until - now
        pause = min(TIMEOUT, hold) if hold > 0 else TIMEOUT
        return max(0.0, min(pause, self._poll_at - now)) if self.limits else pause

    def _poll_due(self) -> bool:
        """Is a fetch for the limited queues due (their permits, this process's lease)?"""
        return bool(self.limits) and time.monotonic() >= self._poll_at

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
