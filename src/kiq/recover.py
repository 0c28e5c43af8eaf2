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
from typing import Final

import orjson

from kiq import payload as wire
from kiq.client import timestamp
from kiq.config import Config
from kiq.errors import PayloadError

log = logging.getLogger(__name__)

LOCK_TTL: Final = 30  # seconds; one sweep at a time across the cluster
POISON: Final = "kiq.PoisonJob"


class Recoverer:
    def __init__(self, config: Config, identity: str) -> None:
        self.config = config
        self.identity = identity

    def sweep(self) -> int:
        """Requeue (or bury) the jobs of every dead fetcher; return how many were moved."""
        r = self.config.store.redis
        keys = self.config.keys
        if not r.set(keys.recover_lock, self.identity, nx=True, ex=LOCK_TTL):
            return 0
        moved = 0
        try:
            for raw_ident, raw_queues in r.hgetall(keys.fetchers).items():
                ident = raw_ident.decode() if isinstance(raw_ident, bytes) else raw_ident
                if ident == self.identity or r.exists(keys.process(ident)):
                    continue
                for queue in orjson.loads(raw_queues):
                    moved += self._recover(ident, str(queue))
                r.hdel(keys.fetchers, ident)
        finally:
            if r.get(keys.recover_lock) == self.identity.encode():
                r.delete(keys.recover_lock)
        if moved:
            log.warning("recovered %d jobs from processes that died", moved)
        return moved

    def _recover(self, ident: str, queue: str) -> int:
        r = self.config.store.redis
        keys = self.config.keys
        source = keys.inprogress(ident, queue)
        raws: list[bytes] = r.lrange(source, 0, -1)  # type: ignore[assignment]  # bytes client
        if not raws:
            return 0
        now = wire.now()
        pipe = r.pipeline(transaction=True)
        buried = False
        # LRANGE gives newest first (fetch LPUSHes); RPUSHing in that order leaves the
        # oldest at the tail, fetched next, as requeue_all does.
        for raw in raws:
            try:
                payload = wire.loads(raw)
            except PayloadError:
                pipe.rpush(keys.queue(queue), raw)  # the worker will bury it properly
                continue
            count = int(payload.get("kiq_recoveries", 0)) + 1
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
                buried = True
                log.error(
                    "poison job %s (%s) sent to the dead set", payload.get("jid"), payload["class"]
                )
            else:
                pipe.rpush(keys.queue(queue), wire.dumps(payload))
        if buried:  # every add to the dead set trims it (Sidekiq: DeadSet#kill)
            pipe.zremrangebyscore(keys.dead, "-inf", now - self.config.dead_timeout)
            pipe.zremrangebyrank(keys.dead, 0, -(self.config.dead_max_jobs + 1))
        pipe.sadd(keys.queues, queue)
        pipe.delete(source)
        pipe.execute()
        return len(raws)
