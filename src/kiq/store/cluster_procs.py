"""Redis Cluster: orphan recovery, the cron tick's claim, and the server's INFO.

Why one file: these are the steps that on one Redis span a process's keys and its
queues in one MULTI or script. On a cluster the process registry, the heartbeat and the
cron definitions stay on the global slot (one MULTI, as before), while each queue shard's
part is its own one-slot step: a dead process's in-progress list of a shard is moved
back by ``cluster_recover.lua``, and a cron tick is claimed in the slot of the shard it
pushes to (``cluster_cron_fire.lua``), so a tick is still pushed exactly once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError

from kiq.keys import FATE_TTL
from kiq.store.cluster import queue_of_payload
from kiq.store.cluster_queues import ClusterQueues
from kiq.store.connection import TRANSIENT_ERRORS
from kiq.store.iteration import Iterations
from kiq.store.processes import Plan, Processes

if TYPE_CHECKING:
    from kiq.store import Store

Moves = list[tuple[str, list[bytes], list[bytes]]]


class ClusterProcesses(ClusterQueues):
    """Recovery, cron and INFO of ``Store`` on a cluster (see the module docstring)."""

    def _recover_ident(
        self, ident: str, queues: list[str], plan: Plan, trim: tuple[float, int, float]
    ) -> Moves | None:
        """Move each shard's in-progress list of ``ident`` as ``plan`` decides.

        One script per shard: it moves nothing if the list changed since it was read (a
        process only slow to beat fetched or acked: not dead), as the WATCH does on one
        Redis. Shard by shard is safe: each job moves once, in one step, and a sweep cut
        short leaves the rest for the next (the fetchers entry stays until all moved).
        Returns None if some list changed.
        """
        now, max_jobs, timeout = trim
        moves: Moves = []
        for queue in queues:
            for shard in self.shards_of(queue):  # its config's shards, whatever ours say
                key = self.keys.inprogress(ident, shard)
                raws = list(self._r.lrange(key, 0, -1))
                if not raws:  # nothing to move: only its marks and call record to drop
                    call = self.keys.fetch_call_shard(ident, shard)
                    self._r.unlink(self.keys.ahead_shard(ident, shard), call)
                    continue
                ahead_key = self.keys.ahead_shard(ident, shard)
                # As on one Redis (Processes._taken): a marked job never started, so it
                # goes back without blame; a foreign key there: no marks.
                ahead = (
                    frozenset(self._r.smembers(ahead_key))
                    if self._r.type(ahead_key) in (b"set", "set")
                    else frozenset()
                )
                requeued, buried = plan(queue, raws, ahead)
                args: list[Any] = [len(raws), *raws, len(requeued), *requeued, *buried]
                args += [repr(now), repr(now - timeout), max_jobs]
                keys = [key, self.keys.queue(shard), self.keys.dead_shard(shard)]
                keys += [ahead_key, self.keys.fetch_call_shard(ident, shard)]
                if not self._script("cluster_recover")(keys=keys, args=args):
                    return None
                moves.append((queue, requeued, buried))
        return moves

    def beat(
        self,
        identity: str,
        fields: dict[str, Any],
        work: dict[str, bytes],
        ttl: int,
        fetcher_queues: bytes | None = None,
        watch: Sequence[str] = (),
    ) -> tuple[bool, bytes | None, frozenset[str], list[str]]:
        """The heartbeat's MULTI on the global slot as on one Redis, then the running
        jobs' cancel flags (``it-<jid>``, each its own slot) as one pipelined read: a
        read, so outside the MULTI it only lags the MULTI by a round trip."""
        # ClusterStore's MRO runs these on Store's Processes and Iterations.
        store = cast("Store", self)
        exists, signal, paused, _ = Processes.beat(
            store, identity, fields, work, ttl, fetcher_queues
        )
        return exists, signal, paused, Iterations.cancel_flags(store, list(watch))

    def record_fate(self, jid: str, fields: Mapping[str, str | bytes]) -> None:
        """The fate hash (its own slot, one MULTI with its TTL), then its count (global
        slot): two steps on a cluster; a crash between them misses one count."""
        key = self.keys.fate(jid)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(key, mapping=dict(fields))
        pipe.expire(key, FATE_TTL)
        pipe.execute()
        self._r.incr(self.keys.fate_count(str(fields["fate"])))

    def find_fetched(self, needle: bytes) -> list[tuple[str, str, bytes]]:
        """As on one Redis (``Iterations.find_fetched``), over every shard of each
        registered queue (one pipelined LRANGE per list, grouped per node)."""
        lists: list[tuple[str, str, str]] = []
        for raw_ident, raw_queues in self._r.hgetall(self.keys.fetchers).items():
            try:
                names = orjson.loads(raw_queues)
            except orjson.JSONDecodeError:
                continue
            ident = raw_ident.decode()
            for queue in (q for q in names if isinstance(q, str)):
                lists += [(ident, queue, shard) for shard in self.shards_of(queue)]
        pipe = self._redis.pipeline(transaction=False)
        for ident, _, shard in lists:
            pipe.lrange(self.keys.inprogress(ident, shard), 0, -1)
        replies = pipe.execute() if lists else []
        return [
            (ident, queue, bytes(raw))
            for (ident, queue, _), raws in zip(lists, replies, strict=True)
            for raw in raws
            if needle in raw
        ]

    def recover_orphans(
        self, identity: str, plan: Plan, now: float, dead_max_jobs: int, dead_timeout: float
    ) -> list[tuple[str, list[bytes], list[bytes]]] | None:
        """As on one Redis (kiq.store.processes), shard by shard (``_recover_ident``).

        A fetcher is dead when its heartbeat hash is gone, checked just before its lists
        are moved; a process that beats again between that check and a move and has not
        fetched or acked since may run a recovered job twice (never lose it)."""
        keys = self.keys
        found: Moves = []
        aborted = False
        for raw_ident, raw_queues in self._r.hgetall(keys.fetchers).items():
            ident = raw_ident.decode()
            if ident == identity or self._r.exists(keys.process(ident)):
                continue
            queues = [str(queue) for queue in orjson.loads(raw_queues)]
            moves = self._recover_ident(ident, queues, plan, (now, dead_max_jobs, dead_timeout))
            if moves is None:
                aborted = True
                continue
            found += moves
            self._r.hdel(keys.fetchers, ident)  # every shard moved: unregister
        self._r.delete(keys.recover_lock)
        return None if aborted and not found else found

    def recover_process(
        self, ident: str, plan: Plan, now: float, dead_max_jobs: int, dead_timeout: float
    ) -> list[tuple[str, list[bytes], list[bytes]]] | None:
        registered = self._r.hget(self.keys.fetchers, ident)
        if registered is None:
            return []
        queues = [str(queue) for queue in orjson.loads(registered)]
        return self._recover_ident(ident, queues, plan, (now, dead_max_jobs, dead_timeout))

    def cron_fire(
        self,
        name: str,
        job: tuple[str, bytes],
        *,
        claim: tuple[str, float] | None,
        prune_before: float,
        last_enqueue_time: str,
        history: bytes,
        keep_history: int,
    ) -> bool:
        """Claim the tick and push the job in one step on the queue shard's slot, then
        record ``last_enqueue_time`` and the jid history on the global slot.

        The claim set is ``kiq|cron-claims|{<s>}`` (not sidekiq-cron's, which is on the
        global slot with the definition), member ``<name>|<tick>``; for a partitioned
        queue the shard follows the claim, not the jid, so every process racing for a
        tick tries the same slot. The history write after it is split: safe, it is only
        what the Web UI shows, and a crash between loses one history line, not a tick.
        """
        queue, raw = job
        member, score = claim or ("", 0.0)
        if member and self._r.zscore(self.keys.cron_enqueued(name), member) is not None:
            return False  # the tick current when the job was saved (cron_save's seed)
        shard = (
            self.keys.shard_of(queue, f"{name}|{member}") if member else self.shard_for(queue, raw)
        )
        if registering := self._register([queue]):
            self._per_node(registering)
        keys = [self.keys.cron_claims(shard), self.keys.queue(shard)]
        claimed = f"{name}|{member}" if member else ""
        args: list[str | bytes] = [claimed, repr(score), raw, repr(prune_before)]
        if not self._script("cluster_cron_fire")(keys=keys, args=args):
            return False
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(self.keys.cron_job(name), "last_enqueue_time", last_enqueue_time)
        pipe.lpush(self.keys.cron_history(name), history)
        pipe.ltrim(self.keys.cron_history(name), 0, keep_history - 1)
        pipe.execute()
        return True

    def migrate_in(
        self, raw: bytes, family: str, score: float | None, queue: str | None = None
    ) -> bool:
        """Copy one job from a single Redis into its shard's list (``family`` "queue") or
        sorted set ("schedule", "retry", "dead") once (``cluster_migrate.lua``): True if
        copied now, False if an earlier run of the migration did. ``queue``: the list it
        came from (a sorted set's member goes by its payload's queue)."""
        queue = queue or queue_of_payload(raw)[0]
        shard = self.shard_for(queue, raw)
        target = (
            self.keys.queue(shard)
            if family == "queue"
            else {
                "schedule": self.keys.schedule_shard,
                "retry": self.keys.retry_shard,
                "dead": self.keys.dead_shard,
            }[family](shard)
        )
        if registering := self._register([queue]):
            self._per_node(registering)
        digest = hashlib.sha1(raw, usedforsecurity=False).hexdigest()
        keys = [self.keys.migrated(shard), target]
        args = [digest, raw, "" if score is None else repr(score)]
        return bool(self._eval_waiting("cluster_migrate", keys, args))

    def info(self) -> dict[str, Any]:
        """INFO of the node holding the global slot (or, while it fails over, of any
        primary that answers), plus ``cluster_nodes``: each primary's address, its
        replica count, CPU and memory, or ``down`` with the error for one that does not
        answer. A dead node must not fail the caller: a worker starting during a
        failover reads INFO for the server version (kiq.launcher)."""
        nodes: list[dict[str, Any]] = []
        infos: dict[str, dict[str, Any]] = {}
        for primary in self._redis.get_primaries():
            address = f"{primary.host}:{primary.port}"
            try:
                data = self._redis.get_redis_connection(primary).info()
            except TRANSIENT_ERRORS as exc:
                nodes.append({"address": address, "down": str(exc)})
                continue
            infos[primary.name] = data
            nodes.append(
                {
                    "address": address,
                    "replicas": int(data.get("connected_slaves", 0)),
                    "used_cpu_sys": data.get("used_cpu_sys"),
                    "used_cpu_user": data.get("used_cpu_user"),
                    "used_memory": data.get("used_memory"),
                }
            )
        if not infos:
            self._refresh()
            raise RedisConnectionError("no primary of the cluster answers INFO")
        node = self._redis.get_node_from_key(self.keys.global_slot_key)
        info = dict(infos.get(node.name) or next(iter(infos.values())))
        info["cluster_nodes"] = nodes
        return info

    def flushdb(self) -> None:
        with self.translate_errors():
            for primary in self._redis.get_primaries():
                self._redis.get_redis_connection(primary).flushdb()
        self._registered.clear()
        self._registry_at = None
