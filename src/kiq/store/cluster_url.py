"""Redis Cluster URLs and settings: read by kiq.config for every process.

Why its own file: a process on one Redis must not load redis-py's cluster client and
kiq's cluster store (about 20 modules and 1 MB of RSS) only to learn that its URL is
not a cluster's; ``kiq.store`` imports those (``cluster_store``) for a
``redis+cluster://`` URL only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from kiq.keys import PARTITION_SEP
from kiq.store.connection import redact, split_hosts

CLUSTER_SCHEME: Final = "redis+cluster://"


def is_cluster_url(url: str) -> bool:
    return url.startswith(CLUSTER_SCHEME)


@dataclass(frozen=True, slots=True)
class ClusterURL:
    """``redis+cluster://[user:password@]host:port[,host:port...]/``: seed nodes only;
    the client learns the rest of the cluster from them (CLUSTER SLOTS)."""

    nodes: list[tuple[str, int]]
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> ClusterURL:
        username, password, nodes, path = split_hosts(url.removeprefix(CLUSTER_SCHEME), 6379)
        db = path.partition("?")[0].strip("/")
        if not url.startswith(CLUSTER_SCHEME) or not nodes or db not in ("", "0"):
            raise ValueError(
                f"{redact(url)} is not a Redis Cluster URL; use "
                f"redis+cluster://[user:password@]host:port[,host:port...]/ (a cluster has "
                f"database 0 only)"
            )
        return cls(nodes, username, password)


def check_queue_name(name: str) -> None:
    """A queue name must not hold ``{``, ``}`` (they would move the hash tag off the
    queue) or ``|`` (the partition separator); raises ValueError saying so."""
    bad = [c for c in "{}" + PARTITION_SEP if c in name]
    if bad:
        raise ValueError(
            f"queue {name!r} holds {''.join(bad)!r}, which cluster mode cannot carry (a "
            f"hash tag or the partition separator); rename the queue"
        )


def cluster_url(
    url: str | None,
    cluster: bool,
    partitions: dict[str, int],
    wait_replicas: int,
    queues: list[str],
) -> str | None:
    """The URL to use for the cluster settings (``cluster: true`` turns a ``redis://``
    URL, one host or ``host:port,host:port``, into ``redis+cluster://``); raises
    ValueError naming what is wrong and how to fix it."""
    if url is not None and cluster and not is_cluster_url(url):
        scheme, sep, rest = url.partition("://")
        if scheme != "redis" or not sep:
            raise ValueError(
                f"cluster: true needs redis_url as redis://host:port[,host:port...]/ (seed "
                f"nodes) or redis+cluster://..., not {redact(url)}"
            )
        url = CLUSTER_SCHEME + rest.split("/", 1)[0] + "/"
    if url is None and cluster:
        raise ValueError(
            "cluster: true needs redis_url: the seed nodes, redis://host:port[,host:port...]/ "
            "(kiq's embedded Redis is no cluster)"
        )
    if url is None or not is_cluster_url(url):
        what = "partitions" if partitions else "wait_replicas"
        raise ValueError(
            f"{what} is a cluster setting: set cluster: true with the seed nodes in "
            f"redis_url, or use redis+cluster://host:port,host:port/ (docs/cluster.md)"
        )
    for name, count in partitions.items():
        if not isinstance(name, str) or not isinstance(count, int) or not 1 <= count <= 1024:
            raise ValueError(
                f"partitions: {name!r}: {count!r} must be a whole number 1..1024 of shards"
            )
    for name in [*queues, *partitions]:
        check_queue_name(name)
    if isinstance(wait_replicas, bool) or not isinstance(wait_replicas, int) or wait_replicas < 0:
        raise ValueError(f"wait_replicas: {wait_replicas!r} must be a whole number >= 0")
    return url
