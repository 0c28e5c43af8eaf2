"""Redis Sentinel in operation (issue 8 §6): a kiq worker and a client on a
``redis+sentinel://`` URL go on working through a real failover.

tests/test_security.py already checks that a Sentinel URL finds the primary; here a
primary, a replica and a Sentinel are started, the Sentinel is told to fail over
(``SENTINEL FAILOVER``, what an operator or a crashed primary triggers), and jobs pushed
before and after run on the one worker. The jobs record into the shared test Redis,
which takes no part in the failover.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from kiq.client import Client
from kiq.config import Config
from tests.support.servers import RedisServer, Worker, start_sentinel
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow
SERVICE = "kiqprimary"


class Cluster:
    def __init__(self, primary: RedisServer, replica: RedisServer, sentinel: RedisServer):
        self.primary, self.replica, self.sentinel = primary, replica, sentinel

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{SERVICE}/0"

    def primary_port(self) -> int:
        _, port = self.sentinel.client().sentinel_get_master_addr_by_name(SERVICE)
        return int(port)

    def replica_known(self) -> bool:
        replicas = self.sentinel.client(decode_responses=True).sentinel_slaves(SERVICE)
        return any(r["is_slave"] and not r["is_sdown"] for r in replicas)


def synced(replica: RedisServer) -> bool:
    return replica.client().info("replication").get("master_link_status") == "up"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A primary, a replica of it, and a Sentinel watching them (quorum 1)."""
    with RedisServer(tmp_path, name="primary") as primary:
        replica_conf = [f"replicaof 127.0.0.1 {primary.port}"]
        with RedisServer(tmp_path, replica_conf, name="replica") as replica:
            wait_until(lambda: synced(replica), timeout=20)
            cluster = Cluster(primary, replica, start_sentinel(tmp_path, primary, service=SERVICE))
            try:
                wait_until(cluster.replica_known, timeout=30)
                yield cluster
            finally:
                cluster.sentinel.kill()


def done(r: redis.Redis) -> list[str]:
    return [json.loads(item)["args"][0] for item in r.lrange("test:done", 0, -1)]


def push(url: str, tag: str) -> None:
    config = Config(redis_url=url)
    try:
        Client(config).push({"class": "Record", "args": [tag]})
    finally:
        config.close()


def test_worker_and_client_follow_a_failover(tmp_path, cluster, config, r, redis_url):
    """Jobs pushed through the Sentinel URL before and after SENTINEL FAILOVER all run
    on the same worker, which finds the new primary by itself and beats there."""
    worker = Worker(tmp_path, cluster.url, record_url=redis_url)
    try:
        push(cluster.url, "before")
        wait_until(lambda: "before" in done(r), timeout=20)

        cluster.sentinel.client().execute_command("SENTINEL", "FAILOVER", SERVICE)
        wait_until(lambda: cluster.primary_port() == cluster.replica.port, timeout=30)
        wait_until(lambda: cluster.replica.client().info("replication")["role"] == "master")

        push(cluster.url, "after")
        wait_until(lambda: "after" in done(r), timeout=60)
        # its heartbeat now goes to the new primary, where the Web UI and api look
        wait_until(lambda: cluster.replica.client().scard("processes") == 1, timeout=20)
        assert worker.proc.poll() is None
    finally:
        worker.kill()

    assert sorted(done(r)) == ["after", "before"]
    assert cluster.replica.client().llen("queue:default") == 0
