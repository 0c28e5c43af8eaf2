"""Recover the in-progress jobs of processes that died, and bury poison jobs.

A kiq process keeps every job it has taken in ``kiq|inprogress|<identity>|<queue>``
until it is acknowledged, and lists its queues in ``kiq|fetchers``. Its heartbeat
hash ``<identity>`` expires ``process_ttl`` seconds (60) after its last beat. Any live
process sweeps every ``orphan_check_interval`` seconds (15) and at start-up, so the
jobs of a SIGKILLed or OOM-killed process are back in their queues at most
``process_ttl + orphan_check_interval`` seconds (75 by default) after it died. A
live process keeps beating from its own thread however slow its jobs are, so its
work is never taken from it.

Each recovery increments ``kiq_recoveries`` in the payload (Ruby Sidekiq ignores
unknown fields) of the jobs that may have been running. A worker marks every job it
takes ahead of its slots in ``kiq|ahead|<identity>`` in the fetch call itself, and a
marked job starts only after a later fetch call has released its mark (kiq.fetch), so
a job with a mark never started: it goes back unchanged. Only the others count the
crash: the running ones, and the few released to start next. A job recovered more
than ``max_recoveries`` times (3) killed its process every time it ran: it goes to
the dead set with ``error_class`` ``kiq.PoisonJob`` instead of looping forever.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

from kiq import payload as wire
from kiq import unique
from kiq.client import timestamp
from kiq.config import Config
from kiq.errors import PayloadError
from kiq.payload import Payload

log = logging.getLogger(__name__)

# Seconds; one sweep at a time across the cluster. Only an optimisation (each sweep is
# one WATCHed transaction), so short: it bounds the pause when a process dies mid-sweep.
LOCK_TTL: Final = 5
POISON: Final = "kiq.PoisonJob"
Moves = list[tuple[str, list[bytes], list[bytes]]]  # (queue, requeued, buried) per list


class Recoverer:
    def __init__(self, config: Config, identity: str) -> None:
        self.config = config
        self.identity = identity

    def sweep(self) -> int:
        """Requeue (or bury) the jobs of every dead fetcher; return how many were moved.

        The moves are one WATCHed MULTI (``Store.recover_orphans``): a process that was
        only slow to beat aborts it instead of losing what it fetched, and the lock is
        released in the same EXEC. This module decides what each job becomes.
        """
        store = self.config.store
        if not store.recover_lock(self.identity, LOCK_TTL):
            return 0
        now = wire.now()
        poison: list[Payload] = []
        plan = self._planner(now, poison)

        try:
            moves = store.recover_orphans(
                self.identity, plan, now, self.config.dead_max_jobs, self.config.dead_timeout
            )
        finally:
            store.recover_unlock(self.identity)
        if moves is None:
            return 0  # aborted: a "dead" process beat or fetched, so it was not dead
        moved = self._settle(poison, moves)
        if moved:
            log.warning("recovered %d jobs from processes that died", moved)
        return moved

    def _planner(
        self, now: float, poison: list[Payload]
    ) -> Callable[[str, list[bytes], frozenset[bytes]], tuple[list[bytes], list[bytes]]]:
        """The ``plan`` callback the store's recovery calls per list; collects the
        buried payloads in ``poison`` for ``_settle``."""

        def plan(
            queue: str, raws: list[bytes], ahead: frozenset[bytes]
        ) -> tuple[list[bytes], list[bytes]]:
            requeued, buried = self._plan(raws, ahead, now)
            poison.extend(payload for payload, _ in buried)
            return requeued, [raw for _, raw in buried]

        return plan

    def _plan(
        self, raws: list[bytes], ahead: frozenset[bytes], now: float
    ) -> tuple[list[bytes], list[tuple[Payload, bytes]]]:
        """For one in-progress list: the jobs to RPUSH back (in order) and the buried ones."""
        requeued: list[bytes] = []
        buried: list[tuple[Payload, bytes]] = []
        # A job with an ahead mark was taken for later and never started: blaming those
        # too (up to ~200 fetched ahead on a slow link, ~20 on loopback) buried good jobs
        # as poison after a few SIGKILLs of a busy worker (issue 12, found by the
        # hostile chaos run). A process of a kiq that wrote no marks: all count.
        # LRANGE gives newest first (fetch LPUSHes); RPUSHing in that order leaves the
        # oldest at the tail, fetched next, as requeue_all does.
        for raw in raws:
            if raw in ahead:
                requeued.append(raw)  # taken ahead, never started: not a suspect
                continue
            try:
                payload = wire.loads(raw)
            except PayloadError:
                requeued.append(raw)  # the worker will bury it properly
                continue
            count = payload.get("kiq_recoveries", 0) + 1  # an int >= 0 (payload.loads)
            payload["kiq_recoveries"] = count
            if count > self.config.max_recoveries:
                payload["error_class"] = POISON
                payload["error_message"] = (
                    f"the process running this job died {count} times (SIGKILL, OOM or a "
                    f"crash in native code); not retried again. Fix the job, then retry it "
                    f"from the dead set."
                )
                payload.setdefault("failed_at", timestamp(self.config, now))
                buried.append((payload, wire.dumps(payload)))
            else:
                requeued.append(wire.dumps(payload))
        return requeued, buried

    def _settle(self, poison: list[Payload], moves: Moves) -> int:
        """After the moves were written: log each poison job and free its unique lock;
        return how many jobs were moved."""
        for payload in poison:
            log.error(
                "poison job %s (%s) sent to the dead set", payload.get("jid"), payload["class"]
            )
            if unique.is_unique(payload):
                unique.release(self.config, payload)  # dead: its unique lock is freed
        return sum(len(requeued) + len(buried) for _, requeued, buried in moves)

    def recover(self, ident: str) -> int:
        """Requeue (or bury) the jobs of ``ident``, a process known to be dead; return how many.

        For kiq's supervisor, which sees its child exit and need not wait ``process_ttl``
        for the heartbeat to expire (``Store.recover_process``). Each job that may have
        started (no ahead mark) counts as crashed (``kiq_recoveries`` + 1), as in a sweep.
        """
        store = self.config.store
        now = wire.now()
        poison: list[Payload] = []
        plan = self._planner(now, poison)

        for _ in range(3):  # only a concurrent sweep writes those lists, and it empties them
            poison.clear()
            moves = store.recover_process(
                ident, plan, now, self.config.dead_max_jobs, self.config.dead_timeout
            )
            if moves is not None:
                break
        else:
            return 0
        moved = self._settle(poison, moves)
        if moved:
            log.warning("recovered %d jobs of %s, which died", moved, ident)
        return moved
