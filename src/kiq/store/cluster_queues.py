"""Redis Cluster: push, fetch, wait, acknowledge and requeue, per queue shard.

Why one file: on one Redis a push is ``SADD queues`` + ``LPUSH`` and a fetch one Lua
call over every queue; on a cluster those keys sit on different slots, so each is split
per slot here, and each split says why it is safe. A queue shard ``<s>`` (the queue, or
one of its partitions) holds ``queue:{<s>}`` and every process's
``kiq|inprogress|<identity>|{<s>}``: the move from one to the other stays one atomic
step on one slot, so at-least-once holds as on one Redis. The engine above is unchanged:
it sees queue names, never shards.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from redis.exceptions import ReadOnlyError, ResponseError

from kiq.keys import FETCH_CALL_TTL
from kiq.store.cluster import queue_of_payload
from kiq.store.cluster_sets import ClusterSets
from kiq.store.queues import UniquePush, by_queue


class ClusterQueues(ClusterSets):
    """The queue half of ``Store`` on a cluster (see the module docstring)."""

    # -- client side ------------------------------------------------------------------
    def _lpushes(self, jobs: Iterable[tuple[str, bytes]]) -> list[tuple[str, tuple[Any, ...]]]:
        by_shard: dict[str, list[bytes]] = {}
        for queue, raw in jobs:
            by_shard.setdefault(self.keys.queue(self.shard_for(queue, raw)), []).append(raw)
        return [(key, ("LPUSH", key, *raws)) for key, raws in by_shard.items()]

    def push(self, jobs: Sequence[tuple[str, bytes]]) -> None:
        """LPUSH each job to its queue shard, one pipeline per node (then WAIT, if
        ``wait_replicas``); ``SADD queues`` split off (``ClusterBase._register``).

        Jobs of different nodes are not one atomic step: a node lost mid-call leaves the
        jobs of the other nodes pushed and raises, as a bulk push cut by an outage does.
        """
        registering = self._register([queue for queue, _ in jobs])
        with self.translate_errors():
            if registering:  # no WAIT for these: names, not jobs (at most every 10 s)
                self._per_node(registering)
            self._per_node(self._lpushes(jobs), wait=self.wait_replicas)

    async def apush(
        self, immediate: Sequence[tuple[str, bytes]], scheduled: Sequence[tuple[float, bytes]]
    ) -> None:
        """The asyncio form (redis-py's asyncio cluster client is not used: the write
        path with WAIT per node is the sync one, run in a thread)."""
        if immediate:
            await asyncio.to_thread(self.push, immediate)
        if scheduled:
            await asyncio.to_thread(self.schedule, scheduled)

    def push_unique(self, jobs: Sequence[UniquePush]) -> list[bool]:
        """Take each lock (SET NX PX, the lock's own slot), then push the jobs that got
        theirs; a failed push gives its lock back.

        Two steps, not one script: the lock is found by its digest alone (released by a
        worker that knows no shard), so it cannot share the queue's slot. This is Sidekiq
        Enterprise's own order (lock, then push); a process killed between the two leaves
        a lock with no job until the lock's TTL (``unique_for``) ends.
        """
        items = [(lock, ("SET", lock, jid, "NX", "PX", ttl)) for lock, jid, ttl, *_ in jobs]
        with self.translate_errors():
            taken = [reply is not None for reply in self._per_node(items)]
            won = [job for job, ok in zip(jobs, taken, strict=True) if ok]
            try:
                self.push([(queue, raw) for _, _, _, queue, at, raw in won if at is None])
                self.schedule([(at, raw) for _, _, _, _, at, raw in won if at is not None])
            except BaseException:
                self.unique_release([(lock, jid) for lock, jid, *_ in won])
                raise
        return taken

    async def apush_unique(self, jobs: Sequence[UniquePush]) -> list[bool]:
        return await asyncio.to_thread(self.push_unique, jobs)

    def unique_release(self, locks: Sequence[tuple[str, str]]) -> int:
        """Compare-and-delete each lock: one script call per lock (each its own slot)."""
        script = self._script("unique_release")
        return sum(int(script(keys=[lock], args=[jid])) for lock, jid in locks)

    # -- fetch ------------------------------------------------------------------------
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
        """As on one Redis (``Queues.fetch_batch``): acknowledge ``acks``, release the
        ahead marks of ``release``, then take up to ``count`` jobs in queue order, the
        shards of a partitioned queue round-robin.

        Split per shard (``fetch.lua`` with one queue pair, so one slot per call): safe,
        because each call moves its jobs atomically into this process's in-progress list
        of that shard, with their ahead marks (``ahead_shard``) and its call record
        (``fetch_call_shard``) on the same slot: a resent call returns, shard by shard,
        what that shard gave it. The acks and releases before are LREMs and SREMs that
        stand alone (as ``ack``; a release lost to a crash only counts that job as not
        started, which it was not). A limited queue's permit keys are on its slot (queue
        limits on a partitioned queue are refused at start-up). It costs one round trip
        per shard visited; a busy queue fills ``count`` at the first.
        """
        if acks:
            self.ack(identity, acks)
        if release:
            items = []
            for raw in release:
                for shard in self._release_shards(raw, queues):
                    key = self.keys.ahead_shard(identity, shard)
                    items.append((key, ("SREM", key, raw)))
            self._per_node(items)
        if call:
            self._replay_rotation(call, queues)
        taken: list[tuple[str, bytes]] = []
        marked = True
        script = self._script("fetch")
        for queue in queues:
            for shard in self.rotated(queue) if count > len(taken) else ():
                want = count - len(taken)
                k = self.keys
                keys = [k.ahead_shard(identity, shard), k.fetch_call_shard(identity, shard)]
                keys += [k.queue(shard), k.inprogress(identity, shard)]
                mark_from = want + 1 if ahead_from is None else max(1, ahead_from - len(taken) + 1)
                args: list[Any] = [want, 0, call, mark_from, 0, FETCH_CALL_TTL]
                if limits and queue in limits:
                    concurrency, rate, per = limits[queue]
                    keys += (k.queue_limit(queue), k.queue_rate(queue))
                    args += [1, identity, max(1, round(lease * 1000))]
                    args += (1, concurrency, rate, max(1, round(per * 1000)))
                    args += k.inprogress_parts(queue)
                reply = script(keys=keys, args=args)
                marked = marked and bool(int(reply[0]))
                bad = int(reply[1])
                if bad and skipped is not None:
                    skipped.append((queue, bytes(reply[3]).decode()))
                end = 2 + 2 * bad
                taken += [(queue, reply[i + 1]) for i in range(end, len(reply), 2)]
                if len(taken) >= count:
                    break
        return taken, marked

    def _replay_rotation(self, call: str, queues: Sequence[str]) -> None:
        """A call id seen before (a resend): start from the shards it started from; a
        new one: remember where it starts (the last 16 calls)."""
        saved = self._call_rotation.get(call)
        if saved is not None:
            self._rotation.update(saved)
            return
        self._call_rotation[call] = {q: self._rotation.get(q, 0) for q in queues}
        while len(self._call_rotation) > 16:
            del self._call_rotation[next(iter(self._call_rotation))]

    def _release_shards(self, raw: bytes, queues: Sequence[str]) -> list[str]:
        """The shard whose ahead set marks ``raw``: its payload's queue's shard by jid; if
        the payload names no fetched queue, every shard of the fetched queues."""
        queue = queue_of_payload(raw)[0]
        if queue in queues:
            return [self.shard_for(queue, raw)]
        return [shard for q in queues for shard in self.keys.shards(q)]

    def wait(self, identity: str, queue: str) -> bytes | None:
        """Block up to ``block_timeout`` for one job, moved straight into in-progress.

        A partitioned queue: one non-blocking LMOVE per shard first, then a BLMOVE on
        the next shard in turn for a share of the timeout, so a job in any partition is
        taken within about ``block_timeout``.
        """
        shards = self.rotated(queue)
        timeout = self.block_timeout
        if len(shards) > 1:
            for shard in shards:
                src, dst = self.keys.queue(shard), self.keys.inprogress(identity, shard)
                found = self._r.lmove(src, dst, "RIGHT", "LEFT")
                if found is not None:
                    return bytes(found)
            timeout = max(0.1, self.block_timeout / len(shards))
        src, dst = self.keys.queue(shards[0]), self.keys.inprogress(identity, shards[0])
        try:
            result = self._blocking.blmove(src, dst, timeout, "RIGHT", "LEFT")
        except ResponseError as exc:
            if str(exc).startswith("UNBLOCKED"):  # the primary was demoted (a failover)
                raise ReadOnlyError(str(exc)) from exc
            raise
        return bytes(result) if isinstance(result, bytes) else None

    def ack(self, identity: str, acks: Iterable[tuple[str, bytes]]) -> None:
        """LREM each job from its shard's in-progress list, one pipeline per node (then
        WAIT, if ``wait_replicas``). Each LREM stands alone, as on one Redis.

        A job of a partitioned queue not found in its jid's shard (a cron run, pushed to
        its tick's shard; or ``partitions`` changed meanwhile) is looked for in the others.
        """
        pairs = list(acks)
        items = []
        for queue, raw in pairs:
            key = self.keys.inprogress(identity, self.shard_for(queue, raw))
            items.append((key, ("LREM", key, -1, raw)))
        replies = self._per_node(items, wait=self.wait_replicas)
        for (queue, raw), (key, _), removed in zip(pairs, items, replies, strict=True):
            if int(removed) == 0 and len(self.shards_of(queue)) > 1:
                for shard in self.shards_of(queue):
                    other = self.keys.inprogress(identity, shard)
                    if other != key and self._r.lrem(other, -1, raw):
                        break

    def requeue(self, identity: str, queue: str, raws: Sequence[bytes]) -> int:
        """Back to the tail of their shards, oldest first (``requeue.lua`` per shard)."""
        moved = 0
        for shard, shard_raws in by_queue(
            (self.shard_for(queue, raw), raw) for raw in raws
        ).items():
            keys = [self.keys.inprogress(identity, shard), self.keys.queue(shard)]
            keys.append(self.keys.ahead_shard(identity, shard))
            moved += int(self._script("requeue")(keys=keys, args=shard_raws))
        return moved

    def requeue_all(self, identity: str, queues: Iterable[str]) -> int:
        moved = 0
        for queue in queues:
            for shard in self.keys.shards(queue):
                keys = [self.keys.inprogress(identity, shard), self.keys.queue(shard)]
                moved += int(self._script("requeue_all")(keys=keys))
                k = self.keys
                ahead = k.ahead_shard(identity, shard)
                call = k.fetch_call_shard(identity, shard)
                self._per_node([(ahead, ("UNLINK", ahead, call))])  # after the move, as one Redis
        return moved

    # -- admin reads and writes (kiq.api.Queue): every shard of a queue -----------------
    def _per_shard(self, names: Sequence[str], method: str, *args: Any) -> list[list[Any]]:
        """``method`` on every shard's queue key of each name: one cluster pipeline."""
        pipe = self._redis.pipeline(transaction=False)
        counts = []
        for name in names:
            shards = self.shards_of(name)
            counts.append(len(shards))
            for shard in shards:
                getattr(pipe, method)(self.keys.queue(shard), *args)
        replies = list(pipe.execute()) if counts else []
        out, at = [], 0
        for n in counts:
            out.append(replies[at : at + n])
            at += n
        return out

    def queue_sizes(self, names: Sequence[str]) -> list[int]:
        return [sum(int(n) for n in sizes) for sizes in self._per_shard(names, "llen")]

    def queue_summaries(self, names: Sequence[str]) -> list[tuple[int, bytes | None, bool]]:
        sizes = self.queue_sizes(names)
        oldest = [self.queue_oldest(name) for name in names]
        paused = self._r.smembers(self.keys.paused)
        return [
            (size, old, name.encode() in paused)
            for name, size, old in zip(names, sizes, oldest, strict=True)
        ]

    def queue_size(self, name: str) -> int:
        return self.queue_sizes([name])[0]

    def queue_oldest(self, name: str) -> bytes | None:
        """The tail of the first non-empty shard (a partitioned queue has no one oldest)."""
        return next((job for job in self._per_shard([name], "lindex", -1)[0] if job), None)

    def queue_range(self, name: str, start: int, end: int) -> list[bytes]:
        """LRANGE across the shards of ``name``, as if they were one list (shard by shard)."""
        shards = self.shards_of(name)
        if len(shards) == 1:
            return list(self._r.lrange(self.keys.queue(name), start, end))
        sizes = self._per_shard([name], "llen")[0]
        total = sum(int(n) for n in sizes)
        low = start if start >= 0 else max(total + start, 0)
        high = min(end if end >= 0 else total + end, total - 1)
        found: list[bytes] = []
        offset = 0
        for shard, size in zip(shards, sizes, strict=True):
            size = int(size)
            a, b = max(low - offset, 0), min(high - offset, size - 1)
            if a <= b:
                found += self._r.lrange(self.keys.queue(shard), a, b)
            offset += size
        return found

    def queue_clear(self, name: str) -> None:
        """UNLINK every shard, then SREM ``queues``: not one MULTI (other slots); a
        crash between leaves an empty queue listed, cleared again by the next call."""
        for shard in self.shards_of(name):
            self._r.unlink(self.keys.queue(shard))
        self._r.srem(self.keys.queues, name)
        self._registered.pop(name, None)
        self._registry_at = None

    def queue_remove(self, name: str, raw: bytes) -> bool:
        return any(self._r.lrem(self.keys.queue(s), 1, raw) for s in self.shards_of(name))

    def in_progress(self, identity: str, names: Sequence[str]) -> list[bytes]:
        """Every raw job in this identity's in-progress lists, every shard of each queue
        (the fetcher's resync must see a partition's jobs, or it drops them)."""
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            for shard in self.shards_of(name):
                pipe.lrange(self.keys.inprogress(identity, shard), 0, -1)
        return [raw for raws in (pipe.execute() if names else []) for raw in raws]

    def in_progress_sizes(self, identity: str, names: Sequence[str]) -> list[int]:
        pipe = self._redis.pipeline(transaction=False)
        for name in names:
            for shard in self.shards_of(name):
                pipe.llen(self.keys.inprogress(identity, shard))
        replies = iter(pipe.execute() if names else [])
        return [sum(int(next(replies)) for _ in self.shards_of(name)) for name in names]
