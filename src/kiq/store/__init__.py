"""Store: kiq's one seam to Redis. Every Redis command of the engine, the admin API and
the Web UI goes through it; nothing outside this package touches a redis-py object.

It is built from a URL and knows nothing of Config; components reach it as
``config.store``. Key names come from ``kiq.keys.Keys`` only. Each file has one job:

  * ``connection``: URLs, the two pools, error sorting (``TRANSIENT_ERRORS``,
    ``is_transient``, ``is_wrong_type``), failover retry, ``RedisUnavailable``, and
    the Lua scripts (``lua/*.lua``, each with a KEYS/ARGV header, loaded once and run
    by EVALSHA with a NOSCRIPT fallback);
  * ``lane``: the held connection that makes a single push one write and one read;
  * ``queues``: push, fetch, wait (BLMOVE), ack, requeue; a queue's admin reads;
  * ``sets``: ``schedule``, ``retry``, ``dead``: adds, the poller's due-job move, the
    dead-set trim, admin edits;
  * ``processes``: heartbeat, signals, the process registry, orphan recovery;
  * ``cron``: sidekiq-cron's hashes and the tick's claim + push (one Lua step);
  * ``metrics``: ``stat:*`` counters, per-class metrics, totals, deploy marks;
  * ``progress``: ``kiq|progress|<jid>``;
  * ``results``: job results (``kiq|result|<jid>``), their wake-up and count, and the
    process's one pub/sub listener for every waiter (``result_wait``).
  * ``iteration``: Sidekiq's ``it-<jid>`` (iterable jobs, cancel flags) and
    ``kiq|fate|<jid>`` (cancelled and expired jobs).
  * ``limits``: limiter tries and releases (Lua), their admin reads, a limited job's
    reschedule, the unique locks' admin reads.
  * ``batches``: Sidekiq Pro's ``b-<bid>`` keys (push, outcome, open: Lua) and reads.
  * ``cluster``, ``cluster_sets``, ``cluster_queues``, ``cluster_procs``: Redis Cluster
    (``redis+cluster://``, docs/cluster.md): ``ClusterStore`` overrides what spans hash
    slots, split per slot; ``open_store`` picks the class from the URL;
    ``cluster_results``, ``cluster_limits``: results and limiters split per slot;
    ``cluster_batches``: batches and workflows in two steps (batch slot, then queue
    shards).

Example::

    store = Store("redis://localhost:6379/0", keys=Keys())
    store.push([("default", b'{"class":"HardJob","args":[1],...}')])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kiq.store.batches import Batches
from kiq.store.cluster_url import (
    CLUSTER_SCHEME,
    ClusterURL,
    check_queue_name,
    cluster_url,
    is_cluster_url,
)
from kiq.store.connection import (
    BLOCK_SLACK,
    CONNECT_TIMEOUT,
    SENTINEL_SCHEME,
    SOCKET_TIMEOUT,
    TRANSIENT_ERRORS,
    SentinelURL,
    connect,
    connect_async,
    is_transient,
    is_wrong_type,
    redact,
)
from kiq.store.cron import Cron
from kiq.store.iteration import Iterations
from kiq.store.limits import Limits
from kiq.store.metrics import Counters
from kiq.store.processes import Processes
from kiq.store.progress import Progress
from kiq.store.queues import Queues, by_queue
from kiq.store.results import Results
from kiq.store.sets import Sets


class Store(
    Queues, Sets, Processes, Cron, Counters, Progress, Results, Iterations, Limits, Batches
):
    """Redis access for kiq: each base class is one file of this package (see above)."""


if TYPE_CHECKING:
    from kiq.store.cluster_store import ClusterStore


def __getattr__(name: str) -> Any:
    """``ClusterStore``, imported on first use: a process on one Redis never loads the
    cluster modules (kiq.store.cluster_url says why)."""
    if name == "ClusterStore":
        from kiq.store.cluster_store import ClusterStore

        return ClusterStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_store(url: str, **options: Any) -> Store:
    """A ``ClusterStore`` for a ``redis+cluster://`` URL, else a ``Store``.

    ``wait_replicas`` is taken by the cluster store only (and refused for one Redis)."""
    if is_cluster_url(url):
        from kiq.store.cluster_store import ClusterStore

        return ClusterStore(url, **options)
    if options.pop("wait_replicas", 0):
        raise ValueError("wait_replicas is only supported in cluster mode (docs/cluster.md)")
    return Store(url, **options)


__all__ = [
    "BLOCK_SLACK",
    "CLUSTER_SCHEME",
    "CONNECT_TIMEOUT",
    "SENTINEL_SCHEME",
    "SOCKET_TIMEOUT",
    "TRANSIENT_ERRORS",
    "ClusterStore",
    "ClusterURL",
    "SentinelURL",
    "Store",
    "by_queue",
    "check_queue_name",
    "cluster_url",
    "connect",
    "connect_async",
    "is_cluster_url",
    "is_transient",
    "is_wrong_type",
    "open_store",
    "redact",
]
