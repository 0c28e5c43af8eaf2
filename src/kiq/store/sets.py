"""The sorted sets ``schedule``, ``retry`` and ``dead``: adds, due-job moves, admin edits.

Why one file: a job leaves one of these sets only through a step that cannot lose or
double it. The poller's move is one Lua call (``move_due``: ZREM + push), an admin
move takes a member with ZREM/ZPOPMIN so only one caller ever gets it, and every add
to ``dead`` trims it in the same MULTI (Sidekiq's ``DeadSet#kill``): the one place the
dead-set trim is written (``trim_dead_commands``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from kiq.store.connection import Connection


def trim_dead_commands(pipe: Any, key: str, now: float, max_jobs: int, timeout: float) -> None:
    """Queue the dead-set trim on ``pipe``: older than ``timeout`` seconds, beyond ``max_jobs``."""
    pipe.zremrangebyscore(key, "-inf", now - timeout)
    pipe.zremrangebyrank(key, 0, -(max_jobs + 1))


class Sets(Connection):
    """The sorted-set half of ``Store`` (see the module docstring).

    ``key`` arguments are the set's full key (``keys.schedule``, ``keys.retry`` or
    ``keys.dead``), as ``kiq.api.JobSet.name`` holds it.
    """

    def schedule(self, jobs: Sequence[tuple[float, bytes]]) -> None:
        """ZADD schedule <at> <job> for each job (the member carries no ``at``)."""
        mapping = {raw: at for at, raw in jobs}
        with self.translate_errors():
            self._retry_once_on_failover(self._redis.zadd, self.keys.schedule, mapping)

    # -- the poller ---------------------------------------------------------------------
    def due_sets(self) -> list[str]:
        """The sorted sets the poller drains, in order: ``retry`` then ``schedule`` (a
        cluster: every shard's, kiq.store.cluster)."""
        return [self.keys.retry, self.keys.schedule]

    def first_due(self, key: str, now: float) -> bytes | None:
        """The member of ``key`` (schedule or retry) with the lowest score <= now, if any."""
        due = self._r.zrangebyscore(key, "-inf", now, start=0, num=1)
        return due[0] if due else None

    def move_due(self, key: str, member: bytes, job: tuple[str, bytes] | None) -> bool:
        """Remove ``member`` from ``key`` and push ``job`` (queue, raw) in one step.

        ``job`` None only removes it. False if another poller removed it first. A
        WRONGTYPE ``queue:<q>`` raises before anything is written (the member stays).
        """
        queue, raw = job or ("", b"")
        keys = [key, self.keys.queues, self.keys.queue(queue)]
        return bool(self._script("move_due")(keys=keys, args=[member, raw, queue]))

    # -- the engine's adds ----------------------------------------------------------------
    def add_retry(self, at: float, raw: bytes) -> None:
        """ZADD retry: one command, so atomic by itself (the job left in-progress already
        acknowledged is the processor's concern: it acks only after this returns)."""
        self._redis.zadd(self.keys.retry, {raw: at})

    def add_dead(self, raw: bytes, now: float, max_jobs: int, timeout: float) -> None:
        """ZADD dead now + both trims in one MULTI (Sidekiq: DeadSet#kill)."""
        self.bury([raw], now, max_jobs, timeout)

    def bury(
        self, raws: Sequence[bytes], now: float, max_jobs: int, timeout: float, *, trim: bool = True
    ) -> None:
        """Add ``raws`` to ``dead`` at ``now`` and (``trim``) trim it, in one MULTI."""
        pipe = self._pipeline(transaction=True)
        pipe.zadd(self.keys.dead, dict.fromkeys(raws, now))
        if trim:
            trim_dead_commands(pipe, self.keys.dead, now, max_jobs, timeout)
        pipe.execute()

    def trim_dead(self, now: float, max_jobs: int, timeout: float) -> None:
        """Drop dead jobs older than ``timeout`` seconds and all but the newest ``max_jobs``."""
        pipe = self._pipeline(transaction=True)
        trim_dead_commands(pipe, self.keys.dead, now, max_jobs, timeout)
        pipe.execute()

    # -- admin (kiq.api.JobSet and its subclasses) ----------------------------------------
    def set_size(self, key: str) -> int:
        return int(self._r.zcard(key))

    def set_range(
        self, key: str, start: int, end: int, *, desc: bool = False
    ) -> list[tuple[bytes, float]]:
        """ZRANGE by rank with scores (``desc``: highest first)."""
        return list(self._r.zrange(key, start, end, desc=desc, withscores=True))

    def set_at_score(self, key: str, low: float, high: float) -> list[tuple[bytes, float]]:
        """Members whose score is within [low, high], with scores."""
        return list(self._r.zrange(key, low, high, byscore=True, withscores=True))

    def set_scan(self, key: str, match: str, count: int) -> Iterator[tuple[bytes, float]]:
        """ZSCAN MATCH: members whose JSON matches the glob, never blocking Redis."""
        yield from self._r.zscan_iter(key, match=match, count=count)

    def set_add(self, key: str, members: Mapping[bytes, float]) -> None:
        """ZADD members (a member taken out by a failed admin move goes back this way)."""
        self._r.zadd(key, dict(members))

    def set_remove(self, key: str, raw: bytes | str) -> bool:
        """ZREM this exact member; True only for the one caller that removed it."""
        return bool(self._r.zrem(key, raw))

    def set_pop(self, key: str, count: int) -> list[tuple[bytes, float]]:
        """ZPOPMIN ``count`` members: each goes to exactly one caller."""
        return list(self._r.zpopmin(key, count))

    def set_kill(self, key: str, member: bytes, now: float, max_jobs: int, timeout: float) -> bool:
        """Move ``member`` from ``key`` to ``dead`` and trim it, in one step (``kill.lua``).

        False if it was no longer in ``key`` (another caller moved it first)."""
        args: list[bytes | str | int] = [member, 0, repr(now), repr(now - timeout), max_jobs]
        return bool(self._script("kill")(keys=[key, self.keys.dead], args=args))

    def set_kill_lowest(self, key: str, count: int, now: float) -> list[bytes]:
        """Move the ``count`` lowest-scored members of ``key`` to ``dead`` in one step,
        untrimmed (``trim_dead`` once after a batch); return them."""
        args: list[str | int] = ["", count, repr(now), "", 0]
        return list(self._script("kill")(keys=[key, self.keys.dead], args=args))

    def set_rescore(self, key: str, raw: bytes, score: float) -> bool:
        """Give an existing member a new score (ZADD XX); False if it is no longer there."""
        pipe = self._pipeline(transaction=True)
        pipe.zadd(key, {raw: score}, xx=True)
        pipe.zscore(key, raw)
        return pipe.execute()[1] is not None

    def set_clear(self, key: str) -> None:
        self._r.unlink(key)
