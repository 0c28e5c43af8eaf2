"""Redis Cluster: the URL, the cluster clients, per-node writes with WAIT (docs/cluster.md).

Why one file: every cluster-mode part of the store (``cluster_queues``, ``cluster_sets``,
``cluster_processes``) sends commands through what is built here, so how kiq reaches a
cluster (redis-py's ``RedisCluster``: MOVED/ASK, topology refresh, retries while a
replica is promoted), how a write waits for replicas (``WAIT`` on the connection that
wrote, which is why writes go per node rather than through ``ClusterPipeline``) and what
a queue name may hold are decided once.

Tasks:
  1. parse ``redis+cluster://[user:password@]host:port[,host:port...]/`` (``ClusterURL``);
  2. open the pooled and the blocking ``RedisCluster`` clients (``ClusterBase._open``);
  3. ``_per_node``: a batch of one-key commands grouped by the node owning each key's
     slot, one pipeline per node, each followed by ``WAIT n`` when ``wait_replicas`` is
     set; a command a node refused as not its slot's (MOVED, ASK, TRYAGAIN, CLUSTERDOWN:
     nothing was executed) is sent again through the cluster client, which follows it;
  4. ``check_queue_name``: a queue name may not move the hash tag;
  5. ``_async_client``: one ``redis.asyncio.cluster.RedisCluster`` per event loop, for
     the async calls that have a cluster form of their own (async limiters:
     ``cluster_limits``); async pushes run the sync write path in a thread instead
     (``cluster_queues``: its per-node WAIT is the sync client's).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

import orjson
import redis.asyncio.cluster
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    ResponseError,
    TryAgainError,
)

from kiq.keys import ClusterKeys
from kiq.store.cluster_url import ClusterURL
from kiq.store.connection import (
    BLOCK_SLACK,
    CONNECT_TIMEOUT,
    SOCKET_TIMEOUT,
    Connection,
    lua,
)
from kiq.store.lane import Lane

log = logging.getLogger(__name__)

WAIT_TIMEOUT_MS: Final = 1000  # how long a write waits for its replicas at most
WARN_EVERY: Final = 30.0  # seconds between two warnings about replicas not reached
REGISTER_EVERY: Final = 10.0  # seconds a process trusts its SADD queues (see _register)
# Replies saying a node did not run the command (another node owns the slot now, or
# the slot is being moved or has no primary yet): safe to send again elsewhere.
NOT_RUN: Final = (MovedError, AskError, TryAgainError, ClusterDownError)


def jid_of(raw: bytes) -> str:
    """The jid of an encoded job ("" for a payload that is not a JSON object with one)."""
    try:
        job = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ""
    jid = job.get("jid") if isinstance(job, dict) else None
    return jid if isinstance(jid, str) else ""


def queue_of_payload(raw: bytes) -> tuple[str, str]:
    """(queue, jid) of an encoded job; ("default", "") for one that cannot be read (it
    then goes to the default queue's shard, where the dead set shows it)."""
    try:
        job = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "default", ""
    if not isinstance(job, dict):
        return "default", ""
    queue, jid = job.get("queue"), job.get("jid")
    return (
        queue if isinstance(queue, str) and queue else "default",
        jid if isinstance(jid, str) else "",
    )


class ClusterBase(Connection):
    """The cluster clients and the per-node write path (see the module docstring)."""

    keys: ClusterKeys

    def __init__(self, url: str, *, wait_replicas: int = 0, **options: Any) -> None:
        self.wait_replicas = wait_replicas
        self._warned_at = -WARN_EVERY
        self._registered: dict[str, float] = {}  # queue -> when SADDed (see _register)
        self._rotation: dict[str, int] = {}  # queue -> next shard to fetch first
        # call id -> the rotation it started from: a resent fetch call visits the shards
        # in the same order, so each replays what it gave (the last few calls only).
        self._call_rotation: dict[str, dict[str, int]] = {}
        self._registry_at: tuple[float, dict[str, set[int]]] | None = None
        super().__init__(url, **options)

    def _open(
        self, url: str, common: dict[str, Any], *, socket_timeout: float, pool_size: int
    ) -> None:
        parsed = ClusterURL.parse(url)
        nodes = [ClusterNode(host, port) for host, port in parsed.nodes]  # type: ignore[no-untyped-call, unused-ignore]
        common = {k: v for k, v in common.items() if k != "health_check_interval"}
        common.update(username=parsed.username, password=parsed.password)
        self._redis: Any = RedisCluster(
            startup_nodes=nodes,
            socket_timeout=socket_timeout,
            max_connections=pool_size,
            **common,
        )
        self._blocking: Any = RedisCluster(
            startup_nodes=nodes,
            socket_timeout=self.block_timeout + BLOCK_SLACK,
            **common,
        )
        # The lane holds one connection to one server: no use on a cluster (never
        # called: every method that uses it has a cluster form), closed by close().
        self._lane = Lane(None)

    def close(self) -> None:
        self._redis.close()
        self._blocking.close()

    def _async_client(self) -> Any:
        """The running loop's asyncio cluster client (``redis.asyncio.cluster``: MOVED/ASK,
        topology refresh and failover retries as the sync one), made on first use; its
        connections are bound to that loop (``aclose`` closes it, as on one Redis). Only
        the async limiter calls use it (``cluster_limits``): a limiter's keys share one
        slot, so each call is one command on one node, with no WAIT to carry."""
        import asyncio  # local: the sync engine never needs it

        loop = asyncio.get_running_loop()
        clients: Any = self.__dict__["_async_clients"]  # Queues.__init__ made it
        client = clients.get(loop)
        if client is None:
            parsed = ClusterURL.parse(self.url)
            client = redis.asyncio.cluster.RedisCluster(
                startup_nodes=[
                    redis.asyncio.cluster.ClusterNode(host, port) for host, port in parsed.nodes
                ],
                username=parsed.username,
                password=parsed.password,
                socket_timeout=SOCKET_TIMEOUT,
                socket_connect_timeout=CONNECT_TIMEOUT,
                protocol=2,
            )
            clients[loop] = client
        return client

    def disconnect_waiters(self) -> None:
        self._blocking.disconnect_connection_pools()

    def _call(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Packed commands, for the few base methods that use it: per node here."""
        return self._per_node([(str(cmd[1]), cmd) for cmd in commands])

    def _retry_once_on_failover(self, fn: Any, *args: Any) -> Any:
        return fn(*args)  # RedisCluster follows failovers itself (topology refresh)

    # -- the per-node write path --------------------------------------------------------
    def _per_node(self, items: list[tuple[str, tuple[Any, ...]]], *, wait: int = 0) -> list[Any]:
        """Run each (key, command) on the primary of the key's slot, one pipeline per
        node (then ``WAIT wait``); replies in order. See the module docstring, task 3."""
        replies: list[Any] = [None] * len(items)
        groups: dict[str, tuple[Any, list[int]]] = {}
        for i, (key, _) in enumerate(items):
            node = self._redis.get_node_from_key(key)
            groups.setdefault(node.name, (node, []))[1].append(i)
        again: list[int] = []
        for node, indexes in groups.values():
            commands = [items[i][1] for i in indexes]
            if wait:
                commands.append(("WAIT", wait, WAIT_TIMEOUT_MS))
            try:
                out = self._exchange(node, commands)
            except Exception:
                # The node is away (killed, failing over): learn the new topology before
                # the caller's retry, which then reaches the promoted replica.
                self._refresh()
                raise
            if wait:
                self._check_wait(node, out.pop())
            for i, reply in zip(indexes, out, strict=True):
                if isinstance(reply, NOT_RUN):
                    again.append(i)
                elif isinstance(reply, Exception):
                    raise reply
                else:
                    replies[i] = reply
        for i in again:  # not run where sent: the cluster client follows the redirection
            replies[i] = self._redis.execute_command(*items[i][1])
        return replies

    def _exchange(self, node: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
        """One packed write and its replies on one connection to ``node`` (no Pipeline
        object: a push's cost, as the lane on one Redis); error replies are returned."""
        pool = self._redis.get_redis_connection(node).connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command(conn.pack_commands(commands))
            out: list[Any] = []
            for _ in commands:
                try:
                    out.append(conn.read_response())
                except ResponseError as exc:  # this command's error reply; read on
                    out.append(exc)
            return out
        except BaseException:
            conn.disconnect()  # drop a half-read reply
            raise
        finally:
            pool.release(conn)

    def _eval_waiting(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run script ``name`` on its slot's primary, then WAIT (``wait_replicas``) on the
        same connection: WAIT counts the writes of the connection it is sent on."""
        script = self._script(name)
        item = (keys[0], ("EVALSHA", script.sha, len(keys), *keys, *args))
        try:
            return self._per_node([item], wait=self.wait_replicas)[0]
        except NoScriptError:  # a fresh or restarted node: load it there, once
            node = self._redis.get_node_from_key(keys[0])
            self._redis.get_redis_connection(node).script_load(lua(name))
            return self._per_node([item], wait=self.wait_replicas)[0]

    def _refresh(self) -> None:
        try:
            self._redis.nodes_manager.initialize()
        except Exception as exc:  # the caller's error says more; the next call retries
            log.debug("cluster topology refresh failed: %s", exc)

    def _check_wait(self, node: Any, acked: Any) -> None:
        if isinstance(acked, Exception) or int(acked) < self.wait_replicas:
            now = time.monotonic()
            if now - self._warned_at >= WARN_EVERY:
                self._warned_at = now
                log.warning(
                    "cluster node %s:%s confirmed a write on %s of %d replicas within %d ms "
                    "(wait_replicas): the write is on the primary only, and a crash of it "
                    "now could lose it. Normal just after a failover, until the old "
                    "primary rejoins as a replica; otherwise check the replicas' links",
                    node.host,
                    node.port,
                    acked,
                    self.wait_replicas,
                    WAIT_TIMEOUT_MS,
                )

    def _register(self, queues: list[str]) -> list[tuple[str, tuple[Any, ...]]]:
        """``SADD queues`` and the queue's shard count, for the queues not registered by
        this process lately.

        Split from the LPUSH (the sets are on the global slot, the queue on its own):
        safe, because the sets only name queues and shards for the admin API and the
        poller (workers fetch from their configured queues), they are written before the
        job, and SADD is idempotent. Sent at most every REGISTER_EVERY seconds per queue
        per process, so the global slot's node does not take a write for every push; an
        admin ``Queue.clear`` can hide a queue from ``queues`` for that long.
        """
        now = time.monotonic()
        fresh = [
            q
            for q in dict.fromkeys(queues)
            if now - self._registered.get(q, -REGISTER_EVERY) >= REGISTER_EVERY
        ]
        if not fresh:
            return []
        for queue in fresh:
            self._registered[queue] = now
        self._registry_at = None  # this process sees its own registration at once
        counts = [f"{len(self.keys.shards(q))}:{q}" for q in fresh]
        return [
            (self.keys.queues, ("SADD", self.keys.queues, *fresh)),
            (self.keys.known_queues, ("SADD", self.keys.known_queues, *counts)),
        ]

    def _registry(self) -> dict[str, set[int]]:
        """Queue -> every shard count registered for it (``kiq|cluster-queues``), and the
        ``queues`` set's names; read at most every REGISTER_EVERY / 5 seconds."""
        now = time.monotonic()
        if self._registry_at is not None and now - self._registry_at[0] < REGISTER_EVERY / 5:
            return self._registry_at[1]
        found: dict[str, set[int]] = {}
        for member in self._r.smembers(self.keys.known_queues):
            count, _, queue = member.decode().partition(":")
            if count.isdigit():
                found.setdefault(queue, set()).add(int(count))
        for member in self._r.smembers(self.keys.queues):
            found.setdefault(member.decode(), set())
        self._registry_at = (now, found)
        return found

    def shards_of(self, queue: str) -> list[str]:
        """Every shard ``queue`` may have jobs in: the configured ones, then those of any
        other partition count a process registered (another config, or an older one),
        so the admin API, the poller and recovery see every job whatever their own
        ``partitions`` say."""
        shards = self.keys.shards(queue)
        for count in sorted(self._registry().get(queue, ())):
            other = ClusterKeys(self.keys.prefix, partitions=((queue, count),)).shards(queue)
            shards += [shard for shard in other if shard not in shards]
        return shards

    def known_queues(self) -> list[str]:
        """Every queue that ever held a job in this cluster (and the ``queues`` set's)."""
        return sorted(self._registry())

    def all_shards(self) -> list[str]:
        return [shard for queue in self.known_queues() for shard in self.shards_of(queue)]

    def rotated(self, queue: str) -> list[str]:
        """The shards of ``queue``, starting one further each call (round-robin fetch)."""
        shards = self.keys.shards(queue)
        if len(shards) == 1:
            return shards
        start = self._rotation.get(queue, 0)
        self._rotation[queue] = (start + 1) % len(shards)
        return shards[start:] + shards[:start]

    def shard_for(self, queue: str, raw: bytes) -> str:
        """The shard an encoded job of ``queue`` goes to (by its jid, when partitioned)."""
        if len(self.keys.shards(queue)) == 1:
            return queue
        return self.keys.shard_of(queue, jid_of(raw))
