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
unknown fields). A job recovered more than ``max_recoveries`` times (3) killed its
process every time it ran: it goes to the dead set with ``error_class``
``kiq.PoisonJob`` instead of looping forever.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import orjson

from kiq import payload as wire
from kiq.client import timestamp
from kiq.config import Config
from kiq.errors import PayloadError
from kiq.payload import Payload
from kiq.store import WatchError

log = logging.getLogger(__name__)

# Seconds; one sweep at a time across the cluster. Only an optimisation (each sweep is
# one WATCHed transaction), so short: it bounds the pause when a process dies mid-sweep.
LOCK_TTL: Final = 5
POISON: Final = "kiq.PoisonJob"


class Recoverer:
    def __init__(self, config: Config, identity: str) -> None:
        self.config = config
        self.identity = identity

    def sweep(self) -> int:
        """Requeue (or bury) the jobs of every dead fetcher; return how many were moved.

        One MULTI/EXEC moves every dead process's jobs, unregisters those processes and
        releases the lock. It WATCHes their heartbeat hashes and in-progress lists, so a
        process that was only slow to beat (a Redis outage longer than ``process_ttl``)
        and beats or fetches meanwhile makes it abort instead of losing what it fetched;
        the next sweep decides again. Releasing the lock in the same EXEC matters: a
        requeued poison job is fetched within a millisecond, often by the sweeping
        process itself, and would otherwise kill it while it still held the lock,
        stopping every recovery until LOCK_TTL ran out (found by bench/chaos.py).
        """
        r = self.config.store.redis
        keys = self.config.keys
        if not r.set(keys.recover_lock, self.identity, nx=True, ex=LOCK_TTL):
            return 0
        try:
            moved, poison = self._sweep()
        except WatchError:
            moved, poison = 0, []  # a "dead" process beat or fetched: not dead after all
        finally:
            if r.get(keys.recover_lock) == self.identity.encode():
                r.delete(keys.recover_lock)
        for payload in poison:
            log.error(
                "poison job %s (%s) sent to the dead set", payload.get("jid"), payload["class"]
            )
        if moved:
            log.warning("recovered %d jobs from processes that died", moved)
        return moved

    def _sweep(self) -> tuple[int, list[Payload]]:
        r = self.config.store.redis
        keys = self.config.keys
        with r.pipeline(transaction=True) as pipe:
            dead: list[tuple[str, list[str]]] = []
            for raw_ident, raw_queues in r.hgetall(keys.fetchers).items():
                ident = raw_ident.decode() if isinstance(raw_ident, bytes) else raw_ident
                if ident == self.identity or r.exists(keys.process(ident)):
                    continue
                queues = [str(queue) for queue in orjson.loads(raw_queues)]
                watched = [keys.process(ident), *(keys.inprogress(ident, q) for q in queues)]
                pipe.watch(*watched)  # type: ignore[no-untyped-call]  # redis-py
                if not pipe.exists(keys.process(ident)):
                    dead.append((ident, queues))
            if not dead:
                return 0, []
            taken: list[tuple[str, str, list[bytes]]] = [
                (ident, queue, pipe.lrange(keys.inprogress(ident, queue), 0, -1))  # type: ignore[misc]
                for ident, queues in dead
                for queue in queues
            ]
            pipe.multi()
            poison: list[Payload] = []
            for ident, queue, raws in taken:
                if raws:
                    poison += self._requeue(pipe, queue, raws)
                    pipe.delete(keys.inprogress(ident, queue))
            if poison:  # every add to the dead set trims it (Sidekiq: DeadSet#kill)
                now = wire.now()
                pipe.zremrangebyscore(keys.dead, "-inf", now - self.config.dead_timeout)
                pipe.zremrangebyrank(keys.dead, 0, -(self.config.dead_max_jobs + 1))
            pipe.hdel(keys.fetchers, *(ident for ident, _ in dead))
            pipe.delete(keys.recover_lock)
            pipe.execute()
        return sum(len(raws) for _, _, raws in taken), poison

    def _requeue(self, pipe: Any, queue: str, raws: list[bytes]) -> list[Payload]:
        """Queue the RPUSHes (or dead-set ZADDs) for one in-progress list; return the buried."""
        keys = self.config.keys
        now = wire.now()
        buried: list[Payload] = []
        # LRANGE gives newest first (fetch LPUSHes); RPUSHing in that order leaves the
        # oldest at the tail, fetched next, as requeue_all does.
        for raw in raws:
            try:
                payload = wire.loads(raw)
            except PayloadError:
                pipe.rpush(keys.queue(queue), raw)  # the worker will bury it properly
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
                pipe.zadd(keys.dead, {wire.dumps(payload): now})
                buried.append(payload)
            else:
                pipe.rpush(keys.queue(queue), wire.dumps(payload))
        pipe.sadd(keys.queues, queue)
        return buried
