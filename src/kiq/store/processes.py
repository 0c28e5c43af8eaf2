"""Processes: heartbeats, remote signals, the process registry and orphan recovery.

Why one file: a process's liveness is all in these keys. Each beat rewrites its hash,
its busy-jobs hashes and its ``processes`` membership in one MULTI, and reads back one
remote signal and the paused queues; a process whose hash expired is dead, and a
survivor moves what it had taken back to its queues (``recover_orphans``) in one
WATCHed MULTI. The admin API reads the same keys (``ProcessSet``, ``WorkSet``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson
from redis.exceptions import WatchError

from kiq.store.connection import Connection
from kiq.store.sets import trim_dead_commands

# For one dead process's in-progress list of ``queue`` (newest first, as LRANGE gives
# it) and its ahead marks (the raw jobs it took but had not started, kiq/store/lua/
# fetch.lua): which raw jobs go back to the queue (RPUSHed in that order) and which to
# ``dead``.
Plan = Callable[[str, list[bytes], frozenset[bytes]], tuple[list[bytes], list[bytes]]]
Taken = list[tuple[str, str, list[bytes], frozenset[bytes]]]  # (identity, queue, jobs, ahead)


class Processes(Connection):
    """The process half of ``Store`` (see the module docstring)."""

    def beat(
        self,
        identity: str,
        fields: dict[str, Any],
        work: dict[str, bytes],
        ttl: int,
        fetcher_queues: bytes | None = None,
        watch: Sequence[str] = (),
    ) -> tuple[bool, bytes | None, frozenset[str], list[str]]:
        """One heartbeat round trip: the process and busy-jobs hashes, this process's
        in-progress registration, one remote signal and the paused queues.

        Returns (the process hash existed before, the signal or None, paused queues,
        the cancelled jids). ``watch``: the jids running here; their ``it-<jid>``
        ``cancelled`` flags are read in the same round trip (one HGET each), so a
        cancel reaches a running job within one beat (kiq.cancel).
        """
        k = self.keys
        pipe = self._pipeline(transaction=True)
        for work_key in (k.work(identity), k.workers(identity)):
            pipe.unlink(work_key)
            if work:
                pipe.hset(work_key, mapping=work)
                pipe.expire(work_key, ttl)
        pipe.sadd(k.processes, identity)
        pipe.exists(k.process(identity))
        pipe.hset(k.process(identity), mapping=fields)
        pipe.expire(k.process(identity), ttl)
        if fetcher_queues is not None:
            pipe.hset(k.fetchers, identity, fetcher_queues)
        pipe.rpop(k.signals(identity))
        pipe.smembers(k.paused)
        for jid in watch:
            pipe.hget(k.iteration(jid), "cancelled")
        replies = pipe.execute()
        cancelled: list[str] = []
        if watch:
            flags = replies[-len(watch) :]
            del replies[-len(watch) :]
            cancelled = [jid for jid, f in zip(watch, flags, strict=True) if f is not None]
        exists_at = -6 if fetcher_queues is not None else -5
        paused = frozenset(p.decode() if isinstance(p, bytes) else p for p in replies[-1])
        return bool(replies[exists_at]), replies[-2], paused, cancelled

    def clear_process(self, identity: str) -> None:
        """At exit: SREM processes, drop busy hashes; the hash itself is left to expire."""
        k = self.keys
        pipe = self._pipeline(transaction=True)
        pipe.srem(k.processes, identity)
        pipe.unlink(k.work(identity), k.workers(identity))
        pipe.hset(k.process(identity), "quiet", "true")
        pipe.execute()

    # -- orphan recovery (kiq.recover) --------------------------------------------------
    def recover_lock(self, identity: str, ttl: int) -> bool:
        """SET kiq|recover-lock NX EX: one sweep at a time cluster-wide."""
        return bool(self._redis.set(self.keys.recover_lock, identity, nx=True, ex=ttl))

    def recover_unlock(self, identity: str) -> None:
        """Release the lock if this process still holds it.

        GET then DEL, not atomic: the lock is only an optimisation (each sweep is one
        WATCHed MULTI, which releases the lock itself when it commits), so deleting a
        lock another process took in between costs at most one redundant sweep.
        """
        if self._redis.get(self.keys.recover_lock) == identity.encode():
            self._redis.delete(self.keys.recover_lock)

    def recover_orphans(
        self, identity: str, plan: Plan, now: float, dead_max_jobs: int, dead_timeout: float
    ) -> list[tuple[str, list[bytes], list[bytes]]] | None:
        """Move the in-progress jobs of every dead fetcher, as ``plan`` decides, in one step.

        A fetcher is dead when its heartbeat hash is gone. One MULTI/EXEC moves every
        dead process's jobs, unregisters those processes and releases the lock. It
        WATCHes their heartbeat hashes and in-progress lists, so a process that was only
        slow to beat (a Redis outage longer than ``process_ttl``) and beats or fetches
        meanwhile makes it abort instead of losing what it fetched: then None is
        returned and the next sweep decides again. Releasing the lock in the same EXEC
        matters: a requeued poison job is fetched within a millisecond, often by the
        sweeping process itself, and would otherwise kill it while it still held the
        lock, stopping every recovery until the lock expired (found by bench/chaos.py).

        Returns (queue, requeued, buried) for every in-progress list that held jobs.
        """
        keys = self.keys
        r = self._r
        with r.pipeline(transaction=True) as pipe:
            try:
                dead: list[tuple[str, list[str]]] = []
                for raw_ident, raw_queues in r.hgetall(keys.fetchers).items():
                    ident = raw_ident.decode()
                    if ident == identity or r.exists(keys.process(ident)):
                        continue
                    queues = [str(queue) for queue in orjson.loads(raw_queues)]
                    lists = (keys.inprogress(ident, q) for q in queues)
                    pipe.watch(keys.process(ident), keys.ahead(ident), *lists)
                    if not pipe.exists(keys.process(ident)):
                        dead.append((ident, queues))
                if not dead:
                    return []
                taken = [
                    taking for ident, queues in dead for taking in self._taken(pipe, ident, queues)
                ]
                pipe.multi()
                moves = self._queue_moves(pipe, taken, plan, now, dead_max_jobs, dead_timeout)
                pipe.hdel(keys.fetchers, *(ident for ident, _ in dead))
                for ident, _ in dead:
                    pipe.unlink(keys.ahead(ident), keys.fetch_call(ident))
                pipe.delete(keys.recover_lock)
                pipe.execute()
            except WatchError:
                return None  # a "dead" process beat or fetched: not dead after all
        return moves

    def _taken(self, pipe: Any, ident: str, queues: list[str]) -> Taken:
        """(identity, queue, in-progress jobs, ahead marks) per queue of ``ident``, read
        on ``pipe`` while it WATCHes them (before MULTI)."""
        keys = self.keys
        # A foreign key of another type where the marks live: no marks, every job counts
        # as started (as with a kiq that wrote none).
        ahead = (
            frozenset(pipe.smembers(keys.ahead(ident)))
            if pipe.type(keys.ahead(ident)) in (b"set", "set")
            else frozenset()
        )
        return [
            (ident, queue, list(pipe.lrange(keys.inprogress(ident, queue), 0, -1)), ahead)
            for queue in queues
        ]

    def _queue_moves(
        self,
        pipe: Any,
        taken: Taken,
        plan: Plan,
        now: float,
        dead_max_jobs: int,
        dead_timeout: float,
    ) -> list[tuple[str, list[bytes], list[bytes]]]:
        """Queue, inside a recovery's MULTI, the moves ``plan`` decides for each
        (identity, queue, in-progress jobs, ahead marks); the dead set is trimmed if it
        grew."""
        keys = self.keys
        moves: list[tuple[str, list[bytes], list[bytes]]] = []
        for ident, queue, raws, ahead in taken:
            if not raws:
                continue
            requeued, buried = plan(queue, raws, ahead)
            if requeued:
                pipe.rpush(keys.queue(queue), *requeued)
            if buried:
                pipe.zadd(keys.dead, dict.fromkeys(buried, now))
            pipe.sadd(keys.queues, queue)
            pipe.delete(keys.inprogress(ident, queue))
            moves.append((queue, requeued, buried))
        if any(buried for _, _, buried in moves):  # every add to dead trims it
            trim_dead_commands(pipe, keys.dead, now, dead_max_jobs, dead_timeout)
        return moves

    def recover_process(
        self, ident: str, plan: Plan, now: float, dead_max_jobs: int, dead_timeout: float
    ) -> list[tuple[str, list[bytes], list[bytes]]] | None:
        """Move the in-progress jobs of ``ident``, a process known to be dead, as ``plan``
        decides (kiq's supervisor, which saw its child exit: no wait for the hash to
        expire). Its in-progress lists are WATCHed, so a sweep at the same time moves
        each job once (then None: try again). Its ``kiq|fetchers`` entry stays for the
        sweep after the expiry: a fetch the process sent just before it died may still
        land in its list; so do its ahead marks, which that sweep reads and drops.
        Returns (queue, requeued, buried) per list that held jobs.
        """
        keys = self.keys
        r = self._r
        registered = r.hget(keys.fetchers, ident)
        if registered is None:
            return []  # exited cleanly (unregistered), or died before it could fetch
        queues = [str(queue) for queue in orjson.loads(registered)]
        with r.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(keys.ahead(ident), *(keys.inprogress(ident, q) for q in queues))
                taken = self._taken(pipe, ident, queues)
                pipe.multi()
                moves = self._queue_moves(pipe, taken, plan, now, dead_max_jobs, dead_timeout)
                pipe.execute()
            except WatchError:
                return None
        return moves

    def fetchers(self) -> dict[str, bytes]:
        """``kiq|fetchers``: identity -> the JSON list of its queues (every fetcher
        registered, live or not yet recovered)."""
        return {k.decode(): bytes(v) for k, v in self._r.hgetall(self.keys.fetchers).items()}

    def forget_process(self, identity: str) -> None:
        """A process known to be dead: off ``processes``, its hash and busy hashes gone."""
        k = self.keys
        pipe = self._pipeline(transaction=True)
        pipe.srem(k.processes, identity)
        pipe.unlink(k.process(identity), k.work(identity), k.workers(identity))
        pipe.execute()

    # -- admin (kiq.api.ProcessSet, Process, WorkSet) -------------------------------------
    def process_identities(self) -> list[str]:
        """Every member of ``processes`` (SSCAN), sorted; may include expired ones."""
        return sorted({m.decode() for m in self._r.sscan_iter(self.keys.processes)})

    def process_count(self) -> int:
        """SCARD ``processes`` (counts a dead process until someone prunes it)."""
        return int(self._r.scard(self.keys.processes))

    def prune_processes(self) -> int:
        """SREM members of ``processes`` whose heartbeat hash expired; return how many."""
        identities = self.process_identities()
        pipe = self._pipeline()
        for identity in identities:
            pipe.hexists(self.keys.process(identity), "info")
        alive = pipe.execute()
        dead = [i for i, ok in zip(identities, alive, strict=True) if not ok]
        return int(self._r.srem(self.keys.processes, *dead)) if dead else 0

    def process_fields(
        self, identities: Sequence[str], fields: Sequence[str]
    ) -> list[list[bytes | None]]:
        """HMGET ``fields`` of each process hash, one pipeline."""
        pipe = self._pipeline()
        for identity in identities:
            pipe.hmget(self.keys.process(identity), list(fields))
        return list(pipe.execute())

    def process_get(self, identity: str, fields: Sequence[str]) -> list[bytes | None] | None:
        """HMGET of one process, or None when it is not in ``processes`` (one MULTI)."""
        pipe = self._pipeline(transaction=True)
        pipe.sismember(self.keys.processes, identity)
        pipe.hmget(self.keys.process(identity), list(fields))
        member, values = pipe.execute()
        return list(values) if member else None

    def busy_counts(self, identities: Sequence[str]) -> list[bytes | None]:
        """The ``busy`` field of each process hash (as of its last beat)."""
        pipe = self._pipeline()
        for identity in identities:
            pipe.hget(self.keys.process(identity), "busy")
        return list(pipe.execute())

    def busy_jobs(self, identities: Sequence[str]) -> list[dict[bytes, bytes]]:
        """Each process's busy-jobs hash: ``<identity>:work`` (6.5+), else ``:workers`` (6.4)."""
        pipe = self._pipeline()
        for identity in identities:
            pipe.hgetall(self.keys.work(identity))
            pipe.hgetall(self.keys.workers(identity))
        replies = pipe.execute()
        return [replies[i] or replies[i + 1] for i in range(0, len(replies), 2)]

    def signal(self, identity: str, name: str, ttl: int) -> None:
        """LPUSH a signal (TSTP, TERM, TTIN) read at the process's next beat; EXPIRE it."""
        key = self.keys.signals(identity)
        pipe = self._pipeline(transaction=True)
        pipe.lpush(key, name)
        pipe.expire(key, ttl)
        pipe.execute()

    def leader(self) -> str | None:
        """The Sidekiq Enterprise leader's identity, if one is elected."""
        value = self._r.get(self.keys.leader)
        return value.decode() if value else None
