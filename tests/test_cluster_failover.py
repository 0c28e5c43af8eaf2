"""Failover on a real local Redis Cluster: SIGKILL one primary mid-drain (issue 19's
proof, at CI size). Its replica is promoted, the workers carry on, and with
``wait_replicas: 1`` no job whose push returned is lost; scheduled and retried jobs due
across the failover run too."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import kiq
from kiq.config import Config
from kiq.keys import ClusterKeys
from tests.support.cluster import LocalCluster
from tests.support.jobs import records
from tests.support.servers import Worker
from tests.support.wait import wait_until

QUEUES = ["default", "critical", "low", "hot"]
SETTINGS = ":partitions:\n  hot: 4\n:wait_replicas: 1\n:concurrency: 4\n"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path / "cluster") as started:
        yield started


class Pusher:
    """Pushes jobs from a thread until stopped, retrying a push that raised (Redis away
    mid-failover); keeps the jid of every push that returned."""

    def __init__(self, config: Config) -> None:
        self.client = kiq.Client(config)
        self.pushed: list[str] = []
        self.errors = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set():
            item = {"class": "Record", "queue": QUEUES[i % 4], "args": [f"live{i}"]}
            try:
                self.pushed.append(str(self.client.push(item)))
                i += 1
            except Exception:
                self.errors += 1
                self.stop.wait(0.05)  # a backoff, not a test sleep
            self.stop.wait(0.005)


@pytest.mark.parametrize("victim_of", ["queue", "global"])
def test_sigkill_a_primary_mid_drain_loses_no_job_with_wait_replicas(
    cluster: LocalCluster, tmp_path: Path, redis_url: str, victim_of: str
) -> None:
    """``queue``: the primary of ``queue:{default}``; ``global``: the one holding the
    heartbeats, the registry and the stats (``{kiq}``)."""
    record = redis.Redis.from_url(redis_url)
    record.delete("test:done")
    config = Config(redis_url=cluster.url, partitions={"hot": 4}, wait_replicas=1)
    client = kiq.Client(config)
    expected = [
        str(client.push({"class": "Nap", "queue": QUEUES[i % 4], "args": [0.04]}))
        for i in range(400)
    ]
    expected += [
        str(client.push({"class": "Record", "queue": q, "args": ["at"], "at": time.time() + 2}))
        for q in QUEUES
    ]
    expected += [
        str(client.push({"class": "FailOnce", "queue": q, "args": ["retried"]})) for q in QUEUES
    ]
    args = [a for q in QUEUES for a in ("-q", q)]
    workers = [
        Worker(
            tmp_path, cluster.url, *args, record_url=redis_url, config_text=SETTINGS, name=f"w{i}"
        )
        for i in range(2)
    ]
    pusher = Pusher(config)
    keys = ClusterKeys(partitions=(("hot", 4),))
    victim_key = keys.queue("default") if victim_of == "queue" else keys.global_slot_key
    victim = cluster.primary_of(victim_key)
    try:
        # Both workers started (beating) before the kill: a start-up that meets the
        # failover is another matter (the report of issue 19 says what happens then).
        wait_until(lambda: len(config.store.process_identities()) == 2, timeout=30)
        wait_until(lambda: len(records(record)) >= 80, timeout=30)  # mid-drain
        pusher.thread.start()
        wait_until(lambda: len(pusher.pushed) >= 20, timeout=10)
        cluster.kill(victim)
        killed_at = len(records(record))
        assert killed_at < len(expected) * 0.75  # mid-drain: most jobs not run yet
        cluster.wait_promoted(victim, victim_key)
        victim.start()  # it rejoins as a replica of the promoted one
        wait_until(lambda: len(pusher.pushed) >= 150, timeout=30)
        pusher.stop.set()
        pusher.thread.join(10)
        want = set(expected) | set(pusher.pushed)

        def all_ran() -> bool:
            # A first retry is due 15-30 s after the failure (Sidekiq's backoff): pull it in.
            store = config.store
            for key in store._shard_keys(store.keys.retry):
                for raw, _ in store.set_range(key, 0, -1):
                    store.set_rescore(key, raw, time.time() - 1)
            return {r["jid"] for r in records(record)} >= want

        wait_until(all_ran, timeout=60)
        assert len(records(record)) > killed_at + 100  # the workers went on after the kill
        for worker in workers:
            assert worker.proc.poll() is None, worker.output()  # carried on
    finally:
        pusher.stop.set()
        for worker in workers:
            worker.stop()
        config.close()


def test_info_answers_with_a_primary_down(cluster: LocalCluster) -> None:
    """A worker starting during a failover reads INFO (the server version): one dead
    primary is shown as down, not raised."""
    config = Config(redis_url=cluster.url)
    try:
        config.store.ping()
        victim = cluster.primaries()[0]
        cluster.kill(victim)
        info = config.store.info()
        assert info["redis_version"]
        down = [n for n in info["cluster_nodes"] if "down" in n]
        assert [n["address"] for n in down] == [f"127.0.0.1:{victim.port}"]
    finally:
        config.close()
