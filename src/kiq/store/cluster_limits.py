"""Redis Cluster: limiters (``kiq.Limiter``), split per slot.

Why its own file: on one Redis ``limit.lua`` takes a try at a limiter and, in the same
step, records the limiter in the ``kiq|limiters`` index and counts the try in the
minute's ``kiq|limiter-stats`` hash, both cluster-wide (global slot). On a cluster every
key of one limiter shares the tag ``{<name>}`` (``SLOT_RULES``), and the script runs on
that slot with a per-limiter index and minute hash beside them (``ClusterKeys.
limiter_index_of`` / ``limiter_minute_of``). The admin view reads each limiter's
minute counts there (``limiter_details``); only its last use is copied to the global
``kiq|limiters`` index (which names the limiters to show), at most once a second per
limiter and process. Why that is safe: the try itself (the slot, bucket or window, the
only thing a limit depends on) is one step on one slot, as on one Redis; the copy is an
absolute value (ZADD GT of the last use), so a repeat or a lost copy changes no count,
it only delays a new limiter's first appearance in the Web UI's Limits page by up to a
second (or until its next use). A release and a wait touch only the limiter's own keys
(and the release's handoff counts in the same per-limiter minute hash: ``_limit_minute``).

In async code (``async with limiter.within_limit()``) the same calls go through the
store's asyncio cluster client (``ClusterBase._async_client``): the try on the
limiter's slot, the copy to the index, the release and the wait (BLPOP on the
waiter's own wake-up list, so a waiting coroutine holds no thread) as in sync code.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime

from kiq.keys import LIMITER_TTL
from kiq.store.cluster_sets import ClusterSets
from kiq.store.connection import UNREACHABLE
from kiq.store.limits import LimitCall, Limits, _granted

SYNC_EVERY = 1.0  # seconds between two copies of one limiter's index entry and stats


class ClusterLimits(ClusterSets, Limits):
    """``Limits``' tries on a cluster (see the module docstring)."""

    def _limit_index(self, name: str) -> str:
        """``Limits._limit_index`` on a cluster: the index beside the limiter's keys."""
        return self.keys.limiter_index_of(name)

    def _limit_minute(self, name: str, at: datetime) -> str:
        """``Limits._limit_minute`` on a cluster (the release's handoff counts there too)."""
        return self.keys.limiter_minute_of(name, at)

    def limit_try(self, call: LimitCall) -> tuple[bool, int, int]:
        """One try (``limit.lua`` on the limiter's slot), then the copy (module docstring)."""
        keys, args = self._limit_args(call)  # Limits', with this file's index and minute
        name = call.name
        try:
            reply = self._script("limit")(keys=keys, args=args)
            self._limit_sync(name)
        except UNREACHABLE as exc:
            raise self.unavailable(exc) from exc
        return _granted(reply)

    async def alimit_try(self, call: LimitCall) -> tuple[bool, int, int]:
        """``limit_try`` on the asyncio cluster client: ``Limits.alimit_try``'s script
        call (``_arun``) with this file's keys, then the copy, as in sync code;
        ``alimit_release`` and ``alimit_wait`` are ``Limits``' own (one slot each)."""
        reply = await self._arun("limit", *self._limit_args(call))
        await self._alimit_sync(call.name)
        return _granted(reply)

    async def _alimit_sync(self, name: str) -> None:
        """``_limit_sync`` on the asyncio client (the ZADD GT and its PEXPIRE in two
        commands: each is an absolute write, so a lost second one changes nothing)."""
        synced: dict[str, float] = self.__dict__.setdefault("_limit_synced", {})
        now = time.monotonic()
        if now - synced.get(name, -SYNC_EVERY) < SYNC_EVERY:
            return
        synced[name] = now
        k, client = self.keys, self._async_client()
        try:
            score = await client.zscore(k.limiter_index_of(name), name)
            if score is not None:
                await client.zadd(k.limiters, {name: score}, gt=True)
                await client.pexpire(k.limiters, LIMITER_TTL * 1000)
        except UNREACHABLE as exc:
            raise self.unavailable(exc) from exc

    def _limit_sync(self, name: str) -> None:
        """Copy this limiter's last use to ``kiq|limiters`` (global slot), at most once a
        second per limiter and process: the index only names limiters for the admin
        view and orders them; their counts are read beside each limiter."""
        synced: dict[str, float] = self.__dict__.setdefault("_limit_synced", {})
        now = time.monotonic()
        if now - synced.get(name, -SYNC_EVERY) < SYNC_EVERY:
            return
        synced[name] = now
        k = self.keys
        score = self._r.zscore(k.limiter_index_of(name), name)
        if score is not None:
            pipe = self._redis.pipeline(transaction=True)
            pipe.zadd(k.limiters, {name: score}, gt=True)
            pipe.pexpire(k.limiters, LIMITER_TTL * 1000)
            pipe.execute()

    def limiter_details(
        self, names: Sequence[str], minutes: Sequence[datetime], now_ms: int
    ) -> list[tuple[dict[str, str], int, list[list[int]]]]:
        """As on one Redis (``Limits.limiter_details``), the minute counts read from each
        limiter's own minute hashes (exact: nothing is copied)."""
        pipe = self._redis.pipeline(transaction=False)
        k = self.keys
        for name in names:
            pipe.hgetall(k.limiter(name))
            pipe.zcount(k.limiter_holders(name), f"({now_ms}", "+inf")
            for minute in minutes:
                fields = [f"{name}|held", f"{name}|waited", f"{name}|overlimit"]
                pipe.hmget(k.limiter_minute_of(name, minute), fields)
        replies = pipe.execute() if names else []
        out: list[tuple[dict[str, str], int, list[list[int]]]] = []
        step = 2 + len(minutes)
        for i in range(0, len(replies), step):
            fields_ = {bytes(a).decode(): bytes(b).decode() for a, b in replies[i].items()}
            counts = [[int(v or 0) for v in row] for row in replies[i + 2 : i + step]]
            out.append((fields_, int(replies[i + 1]), counts))
        return out

    def reschedule_limited(self, at: float, raw: bytes, klass: str) -> None:
        """The job to its schedule shard, then the count (global slot): two steps on a
        cluster; a crash between them misses one count, never the job."""
        self.schedule([(at, raw)])
        pipe = self._redis.pipeline(transaction=True)
        pipe.hincrby(self.keys.limited, klass, 1)
        pipe.hincrby(self.keys.limited, "total", 1)
        pipe.execute()
