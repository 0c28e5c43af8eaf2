"""Redis Cluster: ``schedule``, ``retry`` and ``dead`` sharded per queue shard.

Why one file: on a cluster each queue shard ``<s>`` has its own ``schedule:{<s>}``,
``retry:{<s>}`` and ``dead:{<s>}`` beside ``queue:{<s>}``, so the poller's due-job move
(ZREM + LPUSH) and an admin kill (ZREM + ZADD dead) stay one-slot Lua steps. A job's
shard is its payload's queue (and jid, when the queue is partitioned). The admin API
keeps calling these methods with the single-Redis names (``keys.schedule``...): here
they mean "every shard of that set", which is read, counted, paged and edited across
shards (``_shard_keys``).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from kiq.store.cluster import ClusterBase, queue_of_payload
from kiq.store.sets import trim_dead_commands


class ClusterSets(ClusterBase):
    """The sorted sets of ``Store`` on a cluster (see the module docstring)."""

    # -- which shard ------------------------------------------------------------------
    def _family(self, key: str) -> Callable[[str], str] | None:
        k = self.keys
        return {
            k.schedule: k.schedule_shard,
            k.retry: k.retry_shard,
            k.dead: k.dead_shard,
        }.get(key)

    def _shard_keys(self, key: str) -> list[str]:
        """Every shard key of ``key`` (``keys.schedule``...), or ``[key]`` for a shard key."""
        family = self._family(key)
        return [key] if family is None else [family(s) for s in self.all_shards()]

    def _payload_shard(self, raw: bytes) -> tuple[str, str]:
        """(queue, shard) of an encoded job, from its payload."""
        queue, jid = queue_of_payload(raw)
        return queue, (self.keys.shard_of(queue, jid) if jid else self.keys.shards(queue)[0])

    def _member_key(self, key: str, raw: bytes) -> str:
        family = self._family(key)
        return key if family is None else family(self._payload_shard(raw)[1])

    def _zadds(self, family: Callable[[str], str], jobs: Sequence[tuple[float, bytes]]) -> None:
        by_key: dict[str, list[Any]] = {}
        queues: list[str] = []
        for at, raw in jobs:
            queue, shard = self._payload_shard(raw)
            queues.append(queue)
            by_key.setdefault(family(shard), []).extend((repr(float(at)), raw))
        registering = self._register(queues)
        with self.translate_errors():
            if registering:  # no WAIT for these: names, not jobs
                self._per_node(registering)
            items = [(key, ("ZADD", key, *flat)) for key, flat in by_key.items()]
            self._per_node(items, wait=self.wait_replicas)

    # -- the client's and the engine's adds ----------------------------------------------
    def schedule(self, jobs: Sequence[tuple[float, bytes]]) -> None:
        """ZADD each job to its queue shard's ``schedule:{<s>}`` (then WAIT, if set)."""
        self._zadds(self.keys.schedule_shard, jobs)

    def add_retry(self, at: float, raw: bytes) -> None:
        """ZADD the job's ``retry:{<s>}``; it waits for replicas too (``wait_replicas``):
        its shard is the job's queue after ``retry_queue``, maybe not where the ack goes."""
        self._zadds(self.keys.retry_shard, [(at, raw)])

    def bury(
        self, raws: Sequence[bytes], now: float, max_jobs: int, timeout: float, *, trim: bool = True
    ) -> None:
        """Each job to its shard's ``dead:{<s>}``, trimmed, one MULTI per shard.
        ``max_jobs`` applies per shard on a cluster."""
        by_shard: dict[str, list[bytes]] = {}
        queues: list[str] = []
        for raw in raws:
            queue, shard = self._payload_shard(raw)
            queues.append(queue)
            by_shard.setdefault(shard, []).append(raw)
        if registering := self._register(queues):
            self._per_node(registering)
        for shard, members in by_shard.items():
            key = self.keys.dead_shard(shard)
            pipe = self._redis.pipeline(transaction=True)
            pipe.zadd(key, dict.fromkeys(members, now))
            if trim:
                trim_dead_commands(pipe, key, now, max_jobs, timeout)
            pipe.execute()

    def trim_dead(self, now: float, max_jobs: int, timeout: float) -> None:
        for key in self._shard_keys(self.keys.dead):
            pipe = self._redis.pipeline(transaction=True)
            trim_dead_commands(pipe, key, now, max_jobs, timeout)
            pipe.execute()

    # -- the poller: one pass over every shard each tick ------------------------------
    def due_sets(self) -> list[str]:
        shards = self.all_shards()
        k = self.keys
        return [k.retry_shard(s) for s in shards] + [k.schedule_shard(s) for s in shards]

    def move_due(self, key: str, member: bytes, job: tuple[str, bytes] | None) -> bool:
        """ZREM ``member`` from the shard ``key`` and LPUSH ``job``, one-slot Lua step.

        The job's queue shard is the set shard's (both follow the payload's queue and
        jid), so the step is atomic as on one Redis. Only if a client middleware moved
        the job to another queue do the two differ: then ZREM (which only one poller
        wins) and the push are two commands, and a crash between them loses that job.
        """
        if self._family(key) is not None:  # the API's retry_all: the member's own shard
            return any(self.move_due(k, member, job) for k in self._member_shards(key, member))
        if job is None:
            return bool(self._r.zrem(key, member))
        queue, raw = job
        target = self.keys.queue(self.shard_for(queue, raw))
        if registering := self._register([queue]):
            self._per_node(registering)
        if self._redis.keyslot(target) == self._redis.keyslot(key):
            return bool(self._script("cluster_move_due")(keys=[key, target], args=[member, raw]))
        if not self._r.zrem(key, member):
            return False
        self._per_node([(target, ("LPUSH", target, raw))], wait=self.wait_replicas)
        return True

    # -- admin: every shard of a set --------------------------------------------------
    def _each(self, keys: list[str], method: str, *args: Any, **kwargs: Any) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            getattr(pipe, method)(key, *args, **kwargs)
        return list(pipe.execute()) if keys else []

    def set_size(self, key: str) -> int:
        return sum(int(n) for n in self._each(self._shard_keys(key), "zcard"))

    def set_range(
        self, key: str, start: int, end: int, *, desc: bool = False
    ) -> list[tuple[bytes, float]]:
        """By rank across shards: the first ``end + 1`` of each shard, merged by score."""
        keys = self._shard_keys(key)
        if len(keys) == 1:
            return list(self._r.zrange(keys[0], start, end, desc=desc, withscores=True))
        last = end if start >= 0 and end >= 0 else -1
        parts = self._each(keys, "zrange", 0, last, desc=desc, withscores=True)
        merged = list(heapq.merge(*parts, key=lambda pair: (pair[1], pair[0]), reverse=desc))
        size = len(merged)
        low = start if start >= 0 else max(size + start, 0)
        high = end if end >= 0 else size + end
        return merged[low : high + 1]

    def set_at_score(self, key: str, low: float, high: float) -> list[tuple[bytes, float]]:
        parts = self._each(
            self._shard_keys(key), "zrange", low, high, byscore=True, withscores=True
        )
        return sorted((pair for part in parts for pair in part), key=lambda p: (p[1], p[0]))

    def set_scan(self, key: str, match: str, count: int) -> Iterator[tuple[bytes, float]]:
        for shard_key in self._shard_keys(key):
            yield from self._r.zscan_iter(shard_key, match=match, count=count)

    def set_add(self, key: str, members: Mapping[bytes, float]) -> None:
        for raw, score in members.items():
            self._r.zadd(self._member_key(key, raw), {raw: score})

    def _member_shards(self, key: str, raw: bytes) -> list[str]:
        """The shard keys of ``key`` to look for ``raw`` in: its own shard first."""
        first = self._member_key(key, raw)
        return [first] + [k for k in self._shard_keys(key) if k != first]

    def set_remove(self, key: str, raw: bytes | str) -> bool:
        data = raw.encode() if isinstance(raw, str) else raw
        return any(bool(self._r.zrem(k, data)) for k in self._member_shards(key, data))

    def set_pop(self, key: str, count: int) -> list[tuple[bytes, float]]:
        popped: list[tuple[bytes, float]] = []
        for shard_key in self._shard_keys(key):
            if len(popped) >= count:
                break
            popped += self._r.zpopmin(shard_key, count - len(popped))
        return popped

    def _dead_of(self, shard_key: str) -> str:
        """The ``dead:{<s>}`` beside a ``schedule:{<s>}`` / ``retry:{<s>}``."""
        tag = shard_key[shard_key.index("{") + 1 : shard_key.rindex("}")]
        return self.keys.dead_shard(tag)

    def set_kill(self, key: str, member: bytes, now: float, max_jobs: int, timeout: float) -> bool:
        args: list[bytes | str | int] = [member, 0, repr(now), repr(now - timeout), max_jobs]
        for shard_key in self._member_shards(key, member):
            keys = [shard_key, self._dead_of(shard_key)]
            if self._script("kill")(keys=keys, args=args):
                return True
        return False

    def set_kill_lowest(self, key: str, count: int, now: float) -> list[bytes]:
        moved: list[bytes] = []
        for shard_key in self._shard_keys(key):
            if len(moved) >= count:
                break
            args: list[str | int] = ["", count - len(moved), repr(now), "", 0]
            moved += self._script("kill")(keys=[shard_key, self._dead_of(shard_key)], args=args)
        return moved

    def set_rescore(self, key: str, raw: bytes, score: float) -> bool:
        for shard_key in self._member_shards(key, raw):
            pipe = self._redis.pipeline(transaction=True)
            pipe.zadd(shard_key, {raw: score}, xx=True)
            pipe.zscore(shard_key, raw)
            if pipe.execute()[1] is not None:
                return True
        return False

    def set_clear(self, key: str) -> None:
        for shard_key in self._shard_keys(key):
            self._r.unlink(shard_key)

    # -- the dashboard's counts ---------------------------------------------------------
    def stats(self) -> list[Any]:
        """As on one Redis (kiq.store.metrics): processed, failed, the three sets' sizes
        summed over their shards, SCARD processes, the oldest job of ``default``."""
        k = self.keys
        processed, failed = self._r.mget([k.stat("processed"), k.stat("failed")])
        oldest = next(
            (
                job
                for shard in self.shards_of("default")
                if (job := self._r.lindex(k.queue(shard), -1))
            ),
            None,
        )
        return [
            processed,
            failed,
            self.set_size(k.schedule),
            self.set_size(k.retry),
            self.set_size(k.dead),
            self._r.scard(k.processes),
            oldest,
        ]
