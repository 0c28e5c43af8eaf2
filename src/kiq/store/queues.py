"""Queues: push, fetch, wait, acknowledge and requeue jobs; the admin reads of a queue.

Why one file: this is the job's path through Redis (issue 5's hot path). A push is
``SADD queues`` + ``LPUSH queue:<q>`` in one round trip on the lane; a fetch is one
Lua call that acknowledges finished jobs and takes new ones into this process's
in-progress lists (at-least-once: a taken job is always in Redis until acknowledged);
an idle worker waits in BLMOVE, which moves the job straight into in-progress.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis.asyncio
from redis.exceptions import NoScriptError, ReadOnlyError, ResponseError

from kiq.keys import FETCH_CALL_TTL
from kiq.store.connection import (
    CONNECT_TIMEOUT,
    SOCKET_TIMEOUT,
    UNREACHABLE,
    Connection,
    connect_async,
    lua,
)
from kiq.store.lane import AsyncLane, Lane

# One unique push: (lock key, jid, lock TTL in ms, queue, at or None, encoded payload)
UniquePush = tuple[str, str, int, str, float | None, bytes]


def by_queue(jobs: Iterable[tuple[str, bytes]]) -> dict[str, list[bytes]]:
    """(queue, raw) pairs grouped by queue, in first-seen order."""
    grouped: dict[str, list[bytes]] = {}
    for queue, raw in jobs:
        grouped.setdefault(queue, []).append(raw)
    return grouped


class Queues(Connection):
    """The queue half of ``Store`` (see the module docstring)."""

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self._wait_lanes = threading.local()  # a Lane per waiter thread (see wait)
        self._fetch_lanes = threading.local()  # a Lane per fetcher thread (see fetch_batch)
        self._async_lanes: weakref.WeakKeyDictionary[Any, AsyncLane] = weakref.WeakKeyDictionary()
        self._async_clients: weakref.WeakKeyDictionary[Any, redis.asyncio.Redis] = (
            weakref.WeakKeyDictionary()
        )
        self._async_scripts: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    def _push_commands(self, jobs: Iterable[tuple[str, bytes]]) -> list[tuple[Any, ...]]:
        grouped = by_queue(jobs)
        if not grouped:
            return []
        commands: list[tuple[Any, ...]] = [("SADD", self.keys.queues, *grouped)]
        commands += [("LPUSH", self.keys.queue(q), *raws) for q, raws in grouped.items()]
        return commands

    # -- client side ------------------------------------------------------------------
    def push(self, jobs: Sequence[tuple[str, bytes]]) -> None:
        """SADD queues + LPUSH queue:<q>, one round trip for all jobs (Sidekiq: atomic_push).

        The client's hot path (issue 5: perform_async one call at a time): the write
        goes on the lane's held connection, or on the pool (packed commands, without
        redis-py's Pipeline object) while another thread holds the lane. Plain
        try/except rather than the ``translate_errors`` context manager: a web app
        enqueues on cold caches, where each layer of Python shows.
        """
        try:
            self._retry_once_on_failover(self._call, self._push_commands(jobs))
        except UNREACHABLE as exc:
            raise self.unavailable(exc) from exc

    async def apush(
        self, immediate: Sequence[tuple[str, bytes]], scheduled: Sequence[tuple[float, bytes]]
    ) -> None:
        """The asyncio form of push + schedule, for ``AsyncClient`` (one round trip)."""
        client = self._async_client()
        commands = self._push_commands(immediate)
        if scheduled:
            flat = [part for at, raw in scheduled for part in (repr(float(at)), raw)]
            commands.append(("ZADD", self.keys.schedule, *flat))
        # As in push(): the loop's lane, or packed commands on a pooled connection when
        # another coroutine holds it; one round trip either way, no Pipeline object.
        try:
            if await self._async_lane(client).call(commands) is None:
                await self._acall_pooled(client, commands)
        except UNREACHABLE as exc:
            raise self.unavailable(exc) from exc

    # -- unique jobs (docs/unique.md): lock and push in one Lua step ---------------------
    def _unique_call(self, jobs: Sequence[UniquePush]) -> tuple[list[str], list[Any]]:
        keys = [self.keys.queues, self.keys.schedule]
        args: list[Any] = []
        for lock, jid, ttl_ms, queue, at, raw in jobs:
            keys += (lock, self.keys.queue(queue))
            args += (jid, ttl_ms, queue, "" if at is None else repr(float(at)), raw)
        return keys, args

    def push_unique(self, jobs: Sequence[UniquePush]) -> list[bool]:
        """Take each job's lock (SET NX PX jid) and push it only if the lock was free.

        One script per call (``unique_push.lua``): SET NX + SADD queues + LPUSH, or
        ZADD schedule for a job with ``at``. Returns, per job, whether it was pushed.
        Jobs without a lock never come here (``push`` stays as fast as it was).
        """
        keys, args = self._unique_call(jobs)
        try:
            reply = self._retry_once_on_failover(self._unique_script, keys, args)
        except UNREACHABLE as exc:
            raise self.unavailable(exc) from exc
        return [bool(int(flag)) for flag in reply]

    def _unique_script(self, keys: list[str], args: list[Any]) -> Any:
        # EVALSHA on the lane, as push() writes (one packed write, hiredis's packer): the
        # redis-py Script path tripled a push's cost. NOSCRIPT (a fresh or flushed
        # server) once: the Script object loads it and runs it.
        script = self._script("unique_push")
        try:
            (reply,) = self._call([("EVALSHA", script.sha, len(keys), *keys, *args)])
        except NoScriptError:
            reply = script(keys=keys, args=args)
        return reply

    async def apush_unique(self, jobs: Sequence[UniquePush]) -> list[bool]:
        """The asyncio form of ``push_unique``, for ``AsyncClient`` (one round trip)."""
        client = self._async_client()
        keys, args = self._unique_call(jobs)
        script = self._async_scripts.get(client)
        if script is None:
            script = self._async_scripts[client] = client.register_script(lua("unique_push"))
        try:
            reply = await script(keys=keys, args=args)
        except UNREACHABLE as exc:
            raise self.unavailable(exc) from exc
        return [bool(int(flag)) for flag in reply]

    def unique_release(self, locks: Sequence[tuple[str, str]]) -> int:
        """Delete each (lock, jid) lock still held by that jid; return how many were freed."""
        if not locks:
            return 0
        keys = [lock for lock, _ in locks]
        return int(self._script("unique_release")(keys=keys, args=[jid for _, jid in locks]))

    def unique_holder(self, lock: str) -> tuple[str, int] | None:
        """(jid holding ``lock``, ms left), or None when it is free."""
        pipe = self._pipeline()
        pipe.get(lock)
        pipe.pttl(lock)
        jid, ttl = pipe.execute()
        return None if jid is None else (bytes(jid).decode(), int(ttl))

    @staticmethod
    async def _acall_pooled(client: redis.asyncio.Redis, commands: list[tuple[Any, ...]]) -> None:
        pool = client.connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.send_packed_command(conn.pack_commands(commands))
            for _ in commands:
                await conn.read_response()
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)

    def _async_lane(self, client: redis.asyncio.Redis) -> AsyncLane:
        lane = self._async_lanes.get(client)
        if lane is None:
            lane = self._async_lanes[client] = AsyncLane(client.connection_pool, SOCKET_TIMEOUT)
        return lane

    def _async_client(self) -> redis.asyncio.Redis:
        # One asyncio client per event loop: redis.asyncio connections are bound to the
        # loop that opened them, and a web app may run several loops over its life.
        import asyncio  # local: the sync engine never needs it

        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            client = connect_async(
                self.url,
                socket_timeout=SOCKET_TIMEOUT,
                socket_connect_timeout=CONNECT_TIMEOUT,
                protocol=2,
            )
            self._async_clients[loop] = client
        return client

    async def aclose(self) -> None:
        """Close the running loop's asyncio client (an ASGI lifespan's shutdown calls this).

        Its connections are bound to the loop; left open when the loop ends, they are
        reported as unclosed when garbage-collected (ResourceWarning).
        """
        import asyncio

        client = self._async_clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            self._async_scripts.pop(client, None)
            lane = self._async_lanes.pop(client, None)
            if lane is not None:
                await lane.close()
            await client.aclose()

    # -- fetch ------------------------------------------------------------------------
    def fetch(
        self,
        identity: str,
        queues: Sequence[str],
        count: int,
        acks: Sequence[tuple[str, bytes]] = (),
        skipped: list[tuple[str, str]] | None = None,
        limits: Mapping[str, tuple[int, int, float]] | None = None,
        lease: float = 60.0,
    ) -> list[tuple[str, bytes]]:
        """Acknowledge ``acks`` (queue, raw) and take up to ``count`` jobs, in queue order.

        A queue whose key (or in-progress key) holds another type is left out and, if
        ``skipped`` is given, added to it as (queue, "<key>: <Redis's error>").
        ``limits``: queue -> (concurrency, rate count, rate period s), 0 for none: such a
        queue gives only what its permits allow across every process (fetch.lua's queue
        permits; this identity's lease on them lasts ``lease`` s from this call). No job
        is marked ahead (``fetch_batch`` does that for the worker's fetcher).
        """
        return self.fetch_batch(
            identity, queues, count, acks, skipped=skipped, limits=limits, lease=lease
        )[0]

    def fetch_batch(
        self,
        identity: str,
        queues: Sequence[str],
        count: int,
        acks: Sequence[tuple[str, bytes]] = (),
        *,
        release: Sequence[bytes] = (),
        ahead_from: int | None = None,
        call: str = "",
        skipped: list[tuple[str, str]] | None = None,
        limits: Mapping[str, tuple[int, int, float]] | None = None,
        lease: float = 60.0,
    ) -> tuple[list[tuple[str, bytes]], bool]:
        """``fetch``, plus the ahead marks (issue 12) and a call id; one Lua call.

        The taken jobs from index ``ahead_from`` (0-based; None: none) on are marked in
        ``kiq|ahead|<identity>``: taken, not allowed to start yet. ``release`` are raw
        jobs marked before that may start now (their marks go). A recovery counts a
        crash (``kiq_recoveries``) only against the jobs without a mark. With a ``call``
        id, sending the same call again (its reply was lost) returns the jobs it took
        instead of taking more. Returns the (queue, raw) pairs and whether the marks
        were written (False: a foreign key of another type is in the way; the jobs then
        count as started, as they would with an older kiq).
        """
        k = self.keys
        keys: list[str] = [k.ahead(identity), k.fetch_call(identity)]
        for queue in queues:
            keys.append(k.queue(queue))
            keys.append(k.inprogress(identity, queue))
        mark_from = count + 1 if ahead_from is None else ahead_from + 1
        args: list[Any] = [count, len(acks), call, mark_from, len(release), FETCH_CALL_TTL]
        lists: dict[str, str] = {}  # queue -> its in-progress list: one key per queue, not per ack
        for queue, raw in acks:
            key = lists.get(queue)
            if key is None:
                key = lists[queue] = k.inprogress(identity, queue)
            args.append(key)
            args.append(raw)
        args.extend(release)
        if limits:  # after the releases: fetch.lua reads the permits section last
            self._permit_args(identity, queues, limits, lease, keys, args)
        reply = self._fetch_script(keys, args)
        marked, bad = int(reply[0]), int(reply[1])
        end = 2 + 2 * bad
        if skipped is not None:  # rare: queues left out (see fetch.lua)
            for i in range(2, end, 2):
                skipped.append((queues[int(reply[i]) - 1], bytes(reply[i + 1]).decode()))
        pairs = [(queues[int(reply[i]) - 1], reply[i + 1]) for i in range(end, len(reply), 2)]
        return pairs, bool(marked)

    def _fetch_script(self, keys: list[str], args: list[Any]) -> Any:
        """``fetch.lua`` as EVALSHA on the calling fetcher's own lane: hiredis packs a
        call's ~2 arguments per job in C, where redis-py's Script path ran Python per
        argument (a fifth of the fetcher thread's instructions per async job).

        NOSCRIPT (a fresh or flushed server): once through redis-py's Script, which
        loads it. READONLY (a failover): the lane's connection goes back to the pool and
        this call takes redis-py's path, whose Sentinel connection finds the new primary.
        """
        script = self._script("fetch")
        lane: Lane | None = getattr(self._fetch_lanes, "lane", None)
        if lane is None:
            lane = self._fetch_lanes.lane = Lane(self._redis.connection_pool)
        try:
            replies = lane.call([("EVALSHA", script.sha, len(keys), *keys, *args)])
        except NoScriptError:
            replies = None
        except ReadOnlyError:
            lane.drop()
            replies = None
        return script(keys=keys, args=args) if replies is None else replies[0]

    def _permit_args(
        self,
        identity: str,
        queues: Sequence[str],
        limits: Mapping[str, tuple[int, int, float]],
        lease: float,
        keys: list[str],
        args: list[Any],
    ) -> None:
        limited = [(i, q) for i, q in enumerate(queues, 1) if q in limits]
        args += [len(limited), identity, max(1, round(lease * 1000))]
        for index, queue in limited:
            concurrency, rate, per = limits[queue]
            keys += (self.keys.queue_limit(queue), self.keys.queue_rate(queue))
            args += (index, concurrency, rate, max(1, round(per * 1000)))
            args += self.keys.inprogress_parts(queue)

    def wait(self, identity: str, queue: str) -> bytes | None:
        """Block up to ``block_timeout`` for one job, moved straight into in-progress."""
        # On the calling thread's own lane: a waiter's BLMOVE reply is the start of an
        # idle worker's enqueue-to-start latency, and the lane reads it with the least
        # Python in between (issue 5). Redis 6+ takes a float timeout.
        lane: Lane | None = getattr(self._wait_lanes, "lane", None)
        if lane is None:
            # No resend: a waiter is woken on stop by closing its connection, and must
            # not block again; it retries in its own loop (kiq.fetch, _wait_one).
            lane = self._wait_lanes.lane = Lane(self._blocking.connection_pool, resend=False)
        source, target = self.keys.queue(queue), self.keys.inprogress(identity, queue)
        timeout = repr(float(self.block_timeout))
        try:
            replies = lane.call([("BLMOVE", source, target, "RIGHT", "LEFT", timeout)])
            if replies is None:  # no hiredis: the plain client
                replies = [self._blocking.blmove(source, target, timeout, "RIGHT", "LEFT")]  # type: ignore[arg-type]
            result = replies[0]
        except ResponseError as exc:
            # A primary demoted to replica (REPLICAOF, failover) ends every blocked command
            # with "UNBLOCKED ... (master -> replica?)", and then answers READONLY: a
            # failover, not a bug; callers back off and retry (issue 4). The lane's
            # connection still talks to the demoted server (redis-py's Sentinel connection
            # would drop itself on READONLY, but the lane reads replies under it): drop it,
            # so the next BLMOVE connects to the new primary instead of failing forever.
            unblocked = str(exc).startswith("UNBLOCKED")
            if unblocked or isinstance(exc, ReadOnlyError):
                lane.drop()
            if unblocked:
                raise ReadOnlyError(str(exc)) from exc
            raise
        return result if isinstance(result, bytes) else None

    def ack(self, identity: str, acks: Iterable[tuple[str, bytes]]) -> None:
        """LREM each finished job from its in-progress list, one round trip. Not a MULTI:
        each LREM stands alone, and one left undone (a crash) only runs that job again."""
        pipe = self._pipeline()
        for queue, raw in acks:
            pipe.lrem(self.keys.inprogress(identity, queue), -1, raw)
        pipe.execute()

    def requeue(self, identity: str, queue: str, raws: Sequence[bytes]) -> int:
        """Move these unfinished jobs (oldest first) from in-progress back to the tail of
        their queue, so they are fetched again in their original order."""
        keys = [self.keys.inprogress(identity, queue), self.keys.queue(queue)]
        keys.append(self.keys.ahead(identity))
        return int(self._script("requeue")(keys=keys, args=list(raws)))

    def requeue_all(self, identity: str, queues: Iterable[str]) -> int:
        """Move everything still in this identity's in-progress lists back to its queues,
        then drop its ahead marks and last fetch call (they describe those lists only:
        dropped after the moves, a crash in between leaves marks of jobs gone)."""
        moved = 0
        for queue in queues:
            keys = [self.keys.inprogress(identity, queue), self.keys.queue(queue)]
            moved += int(self._script("requeue_all")(keys=keys))
        self._redis.unlink(self.keys.ahead(identity), self.keys.fetch_call(identity))
        return moved

    def register_fetcher(self, identity: str, queues_json: bytes) -> None:
        """HSET kiq|fetchers (the heartbeat does it too, in its MULTI)."""
        self._redis.hset(self.keys.fetchers, identity, queues_json)

    def unregister_fetcher(self, identity: str) -> None:
        self._redis.hdel(self.keys.fetchers, identity)

    # -- admin reads and writes (kiq.api.Queue) -----------------------------------------
    def queue_names(self) -> list[str]:
        """Every name in the ``queues`` set (SSCAN, never blocking Redis), sorted."""
        return self._set_members(self.keys.queues)

    def _set_members(self, key: str) -> list[str]:
        return sorted({m.decode() for m in self._r.sscan_iter(key)})

    def queue_sizes(self, names: Sequence[str]) -> list[int]:
        """LLEN of each queue, one pipeline."""
        pipe = self._pipeline()
        for name in names:
            pipe.llen(self.keys.queue(name))
        return [int(n) for n in pipe.execute()]

    def queue_summaries(self, names: Sequence[str]) -> list[tuple[int, bytes | None, bool]]:
        """(size, oldest job, paused) per queue: Sidekiq 8.1's LLEN, LINDEX -1, SISMEMBER."""
        pipe = self._pipeline()
        for name in names:
            pipe.llen(self.keys.queue(name))
            pipe.lindex(self.keys.queue(name), -1)
            pipe.sismember(self.keys.paused, name)
        replies = pipe.execute()
        return [
            (int(replies[i]), replies[i + 1], bool(replies[i + 2]))
            for i in range(0, len(replies), 3)
        ]

    def queue_size(self, name: str) -> int:
        return int(self._r.llen(self.keys.queue(name)))

    def queue_oldest(self, name: str) -> bytes | None:
        """The job at the tail (fetched next), or None when the queue is empty."""
        oldest: bytes | None = self._r.lindex(self.keys.queue(name), -1)
        return oldest

    def queue_range(self, name: str, start: int, end: int) -> list[bytes]:
        """LRANGE: jobs ``start``..``end`` (inclusive, negative from the tail), newest first."""
        return list(self._r.lrange(self.keys.queue(name), start, end))

    def queue_clear(self, name: str) -> None:
        """Drop every job and the name from ``queues`` (MULTI UNLINK + SREM)."""
        pipe = self._pipeline(transaction=True)
        pipe.unlink(self.keys.queue(name))
        pipe.srem(self.keys.queues, name)
        pipe.execute()

    def queue_remove(self, name: str, raw: bytes) -> bool:
        """LREM one copy of this exact job."""
        return bool(self._r.lrem(self.keys.queue(name), 1, raw))

    def is_paused(self, name: str) -> bool:
        return bool(self._r.sismember(self.keys.paused, name))

    def pause(self, name: str) -> None:
        self._r.sadd(self.keys.paused, name)

    def unpause(self, name: str) -> None:
        self._r.srem(self.keys.paused, name)

    def in_progress(self, identity: str, names: Sequence[str]) -> list[bytes]:
        """Every raw job in this identity's in-progress lists (one pipeline of LRANGEs)."""
        pipe = self._pipeline()
        for name in names:
            pipe.lrange(self.keys.inprogress(identity, name), 0, -1)
        return [raw for raws in pipe.execute() for raw in raws]

    def in_progress_sizes(self, identity: str, names: Sequence[str]) -> list[int]:
        """LLEN of this process's in-progress list of each queue (the demo's screen)."""
        pipe = self._pipeline()
        for name in names:
            pipe.llen(self.keys.inprogress(identity, name))
        return [int(n) for n in pipe.execute()]
