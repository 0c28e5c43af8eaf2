"""Redis Cluster: job results (``kiq|result|<jid>``), their wake-up and their count.

Why its own file: on one Redis ``result_store.lua`` writes the record, counts it in
``kiq|results`` and PUBLISHes it in one step; on a cluster the record is on its own slot
and the count on the global one. Split, and why each part is safe:

  * the record's SET and its PUBLISH go in one packed write to the record's node, in
    that order: a waiter subscribes, then reads the record (``result_wait``), so it
    either reads the SET or hears the PUBLISH, as on one Redis (a cluster's PUBLISH
    reaches the subscribers on every node, over the cluster bus);
  * the count (HINCRBY on the global slot) is sent after: a crash between the two
    misses one count in ``kiq_results_stored_total``, never a record;
  * the waiters' listener holds one connection to the node of the global slot, found
    again at each reconnect, so after a failover it follows the promoted primary (the
    reconnect re-subscribes and re-reads, so a record stored meanwhile is not missed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from kiq.store.cluster import ClusterBase

if TYPE_CHECKING:
    from kiq.store.result_wait import Listener


class GlobalNodePool:
    """A connection pool for the listener: the pool of whichever node holds the global
    slot now (asked of the cluster client at every ``get_connection``)."""

    def __init__(self, cluster: Any, key: str) -> None:
        self._cluster = cluster
        self._key = key
        self._pools: dict[int, Any] = {}  # id(connection) -> the pool it came from

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        node = self._cluster.get_node_from_key(self._key)
        pool = self._cluster.get_redis_connection(node).connection_pool
        conn = pool.get_connection()
        self._pools[id(conn)] = pool
        return conn

    def release(self, conn: Any) -> None:
        pool = self._pools.pop(id(conn), None)
        if pool is not None:
            pool.release(conn)


class ClusterResults(ClusterBase):
    """``Results`` on a cluster (see the module docstring)."""

    _listener: Listener | None  # these two: Results' (ClusterStore's MRO)
    _listener_lock: Any

    def store_result(self, jid: str, record: bytes, ttl: int, status: str) -> int:
        """SET + PUBLISH on the record's node (then WAIT, if set), then the count."""
        key = self.keys.result(jid)
        channel = self.keys.result_channel(jid)
        items = [(key, ("SET", key, record, "EX", ttl)), (key, ("PUBLISH", channel, record))]
        reached = self._per_node(items, wait=self.wait_replicas)[1]
        try:
            self._r.hincrby(self.keys.result_counts, status, 1)
        except ResponseError as exc:  # a foreign key there: the record matters more
            if "WRONGTYPE" not in str(exc):
                raise
        return int(reached)

    def mark_result(self, jid: str, record: bytes, ttl: int) -> None:
        key = self.keys.result(jid)
        self._per_node([(key, ("SET", key, record, "EX", ttl))])

    def read_results(self, jids: Sequence[str]) -> list[bytes | None]:
        """The records of ``jids``: one GET each, pipelined per node."""
        if not jids:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for jid in jids:
            pipe.get(self.keys.result(jid))
        return list(pipe.execute())

    @property
    def result_listener(self) -> Listener:
        listener = self._listener
        if listener is None:
            with self._listener_lock:
                listener = self._listener
                if listener is None:
                    from kiq.store.result_wait import Listener

                    pool = GlobalNodePool(self._blocking, self.keys.global_slot_key)
                    listener = self._listener = Listener(pool, self.keys, self.read_results)
        return listener

    def close(self) -> None:
        """The listener first (ClusterBase.close ends the chain before Results.close)."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        super().close()
