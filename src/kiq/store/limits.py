"""Limits: limiter tries and releases (``lua/limit*.lua``), their admin reads, the
reschedule of a job a limiter refused, and the unique locks' admin reads.

Why its own file: every limiter call is one Lua step on the hot path of the jobs that
use it (``kiq.limiter``: one round trip to try, one to release), and the Web UI, the
API and Prometheus read the same keys; nothing else in the store knows their layout.
The keys are ``Keys.limiter*`` (docs/internals.md's key table, docs/limits.md).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple

from redis.exceptions import NoScriptError

from kiq.keys import LIMITER_STATS_TTL, LIMITERS_MAX
from kiq.store.connection import UNREACHABLE, Connection, lua

WAIT_SLICE: Final = 1.0  # s a concurrent waiter blocks at most between two tries (and its
# lease: twice that); under the sockets' read timeouts (kiq.limiter.SLICE)
SLICE_MS: Final = round(WAIT_SLICE * 1000)


class LimitCall(NamedTuple):
    """One try's arguments (``kiq.limiter`` builds it; ``limit.lua``'s ARGV, in order)."""

    kind: str
    name: str
    limit: int
    interval_ms: int
    cost: int
    token: str
    ttl_ms: int
    waited_ms: int
    left_ms: int
    at: datetime  # names the per-minute stats key


def _granted(reply: list[Any]) -> tuple[bool, int, int]:
    return bool(int(reply[0])), int(reply[1]), int(reply[2]) if len(reply) > 2 else 0


class Limits(Connection):
    """The limiter half of ``Store`` (see the module docstring)."""

    # -- one try, one release (kiq.limiter) ----------------------------------------------
    def _limit_index(self, name: str) -> str:
        """The index ``limit.lua`` records the limiter in (a cluster's is per limiter)."""
        return self.keys.limiters

    def _limit_minute(self, name: str, at: datetime) -> str:
        """The minute hash a try or a handoff counts in (a cluster's is per limiter)."""
        return self.keys.limiter_minute(at)

    def _limit_args(self, call: LimitCall) -> tuple[list[str], list[Any]]:
        k, name = self.keys, call.name
        aux = k.limiter_log(name) if call.kind == "window" else k.limiter_holders(name)
        keys = [k.limiter(name), aux, self._limit_index(name), self._limit_minute(name, call.at)]
        keys += [k.limiter_waiters(name), k.limiter_leases(name)]
        extra = [LIMITER_STATS_TTL, LIMITERS_MAX, k.limiter_wake_prefix(name), SLICE_MS]
        return keys, [*call[:-1], *extra]

    def _release_args(
        self, kind: str, name: str, value: str | int, limit: int, lock_ms: int, ttl_ms: int
    ) -> tuple[list[str], list[Any]]:
        k = self.keys
        keys = [k.limiter(name), k.limiter_holders(name), k.limiter_waiters(name)]
        keys += [k.limiter_leases(name), self._limit_minute(name, datetime.now(UTC))]
        args = [kind, value, limit, lock_ms, k.limiter_wake_prefix(name), ttl_ms]
        return keys, [*args, LIMITER_STATS_TTL, name]

    def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        script = self._script(name)
        try:
            # EVALSHA on the lane, as a push: the Script object's path costs a round trip
            # of Python; NOSCRIPT (a fresh or flushed server) once through the Script.
            try:
                (reply,) = self._call([("EVALSHA", script.sha, len(keys), *keys, *args)])
            except NoScriptError:
                reply = script(keys=keys, args=args)
        except UNREACHABLE as exc:
            raise self.unavailable(exc) from exc
        return reply

    def limit_try(self, call: LimitCall) -> tuple[bool, int, int]:
        """One try (``limit.lua``): (True, 0, server epoch ms of the grant) to go ahead,
        or (False, ms until it may, 0)."""
        return _granted(self._run("limit", *self._limit_args(call)))

    def limit_release(
        self, kind: str, name: str, value: str | int, limit: int, lock_ms: int, ttl_ms: int
    ) -> bool:
        """Give back a concurrent slot (``value``: its token; the slot goes to the oldest
        waiter in the same step) or unspent points (Lua). A waiter that stops waiting
        early gives back its place in line (or the slot it was just handed) the same way."""
        args = self._release_args(kind, name, value, limit, lock_ms, ttl_ms)
        return bool(int(self._run("limit_release", *args)))

    def limit_wait(self, name: str, token: str, timeout: float) -> int | None:
        """BLPOP this waiter's own wake-up list up to ``timeout`` s: the server epoch ms
        at which a release made it a holder, or None (then it tries again).

        The release did the taking (``limit_release.lua``), so a woken waiter holds the
        slot without another round trip, and no fresh caller can take it first.
        """
        with self.translate_errors():
            reply = self._blocking.blpop([self.keys.limiter_wake(token, name)], max(0.01, timeout))
        return None if reply is None else int(reply[1])

    async def alimit_try(self, call: LimitCall) -> tuple[bool, int, int]:
        """The asyncio form of ``limit_try`` (one round trip on the loop's client)."""
        return _granted(await self._arun("limit", *self._limit_args(call)))

    async def alimit_release(
        self, kind: str, name: str, value: str | int, limit: int, lock_ms: int, ttl_ms: int
    ) -> bool:
        """The asyncio form of ``limit_release``."""
        args = self._release_args(kind, name, value, limit, lock_ms, ttl_ms)
        return bool(int(await self._arun("limit_release", *args)))

    async def alimit_wait(self, name: str, token: str, timeout: float) -> int | None:
        """The asyncio form of ``limit_wait`` (``timeout`` is kept under the socket's)."""
        client = self._async_client()  # type: ignore[attr-defined]  # Queues provides it
        try:
            reply = await client.blpop([self.keys.limiter_wake(token, name)], max(0.01, timeout))
        except UNREACHABLE as exc:
            raise self.unavailable(exc) from exc
        return None if reply is None else int(reply[1])

    async def _arun(self, name: str, keys: list[str], args: list[Any]) -> Any:
        client = self._async_client()  # type: ignore[attr-defined]  # Queues provides it
        cache = self.__dict__.get("_alimit_scripts")
        if cache is None:  # per asyncio client: its connections belong to one loop
            cache = self.__dict__["_alimit_scripts"] = weakref.WeakKeyDictionary()
        scripts = cache.setdefault(client, {})
        script = scripts.get(name)
        if script is None:
            script = scripts[name] = client.register_script(lua(name))
        try:
            return await script(keys=keys, args=args)
        except UNREACHABLE as exc:
            raise self.unavailable(exc) from exc

    # -- a job a limiter refused (kiq.processor) ----------------------------------------
    def reschedule_limited(self, at: float, raw: bytes, klass: str) -> None:
        """ZADD the job to ``schedule`` at ``at`` and count it in ``kiq|limited``, one MULTI."""
        pipe = self._pipeline(transaction=True)
        pipe.zadd(self.keys.schedule, {raw: at})
        pipe.hincrby(self.keys.limited, klass, 1)
        pipe.hincrby(self.keys.limited, "total", 1)
        pipe.execute()

    # -- admin reads (kiq.api.limiters, the Web UI, Prometheus) --------------------------
    def limiter_names(self, count: int = 1000) -> list[tuple[str, float]]:
        """The most recently used limiters, newest first: (name, last use epoch s)."""
        rows = self._r.zrevrange(self.keys.limiters, 0, count - 1, withscores=True)
        return [(bytes(m).decode(), float(s) / 1000) for m, s in rows]

    def limiter_details(
        self, names: Sequence[str], minutes: Sequence[datetime], now_ms: int
    ) -> list[tuple[dict[str, str], int, list[list[int]]]]:
        """Per limiter: its hash, its holders now, and (held, waited, overlimit) per minute.

        One pipeline. A name whose hash has expired comes back with an empty hash (the
        caller forgets it: ``forget_limiters``).
        """
        pipe = self._pipeline()
        k = self.keys
        for name in names:
            pipe.hgetall(k.limiter(name))
            pipe.zcount(k.limiter_holders(name), f"({now_ms}", "+inf")
            for minute in minutes:
                names_ = [f"{name}|held", f"{name}|waited", f"{name}|overlimit"]
                pipe.hmget(k.limiter_minute(minute), names_)
        replies = pipe.execute()
        out: list[tuple[dict[str, str], int, list[list[int]]]] = []
        step = 2 + len(minutes)
        for i in range(0, len(replies), step):
            raw = replies[i]
            fields = {bytes(a).decode(): bytes(b).decode() for a, b in raw.items()}
            counts = [[int(v or 0) for v in row] for row in replies[i + 2 : i + step]]
            out.append((fields, int(replies[i + 1]), counts))
        return out

    def forget_limiters(self, names: Sequence[str]) -> None:
        """ZREM limiters whose keys have expired from the index."""
        if names:
            self._r.zrem(self.keys.limiters, *names)

    def limited_counts(self) -> dict[str, int]:
        """``kiq|limited``: job class -> jobs rescheduled by a full limiter (``total`` too)."""
        raw = self._r.hgetall(self.keys.limited)
        return {bytes(a).decode(): int(b) for a, b in raw.items()}

    def unique_locks(self, count: int = 100) -> tuple[int, list[tuple[str, str, int]]]:
        """(how many ``unique:*`` locks, up to ``count`` of them as (key, jid, ms left)).

        SCAN, never KEYS: a big Redis is not blocked. The count is exact (a full scan).
        """
        found: list[str] = []
        total = 0
        for key in self._r.scan_iter(match=self.keys.unique_pattern(), count=1000):
            total += 1
            if len(found) < count:
                found.append(bytes(key).decode())
        pipe = self._pipeline()
        for key in found:
            pipe.get(key)
            pipe.pttl(key)
        replies = pipe.execute() if found else []
        rows = [
            (key, bytes(replies[2 * i] or b"").decode(), int(replies[2 * i + 1]))
            for i, key in enumerate(found)
        ]
        return total, [row for row in rows if row[1]]

    def queue_limit_usage(self, queues: Sequence[str], now_ms: int) -> list[int]:
        """Jobs each queue's permit holders have in progress now (the fetch.lua count)."""
        pipe = self._pipeline()
        for queue in queues:
            pipe.zrangebyscore(self.keys.queue_limit(queue), f"({now_ms}", "+inf")
        holders = pipe.execute()
        pipe = self._pipeline()
        for queue, members in zip(queues, holders, strict=True):
            for member in members:
                pipe.llen(self.keys.inprogress(bytes(member).decode(), queue))
        counts = [int(n) for n in pipe.execute()] if any(holders) else []
        out: list[int] = []
        for members in holders:
            out.append(sum(counts[: len(members)]))
            counts = counts[len(members) :]
        return out
