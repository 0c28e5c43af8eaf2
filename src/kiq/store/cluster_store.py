"""``ClusterStore``: the ``Store`` of a ``redis+cluster://`` URL (docs/cluster.md).

Its own file so that ``kiq.store`` loads it, and redis-py's cluster client with it, only
for a cluster URL (kiq.store.cluster_url says why).
"""

from __future__ import annotations

from kiq.store import Store
from kiq.store.cluster_batches import ClusterBatches
from kiq.store.cluster_limits import ClusterLimits
from kiq.store.cluster_procs import ClusterProcesses
from kiq.store.cluster_results import ClusterResults


class ClusterStore(ClusterResults, ClusterLimits, ClusterBatches, ClusterProcesses, Store):
    """``Store`` on a Redis Cluster (``redis+cluster://``, docs/cluster.md): the
    ``cluster*`` files of this package override what spans slots on a cluster; the
    rest (heartbeat, registry, cron definitions, counters) runs unchanged on the
    global slot."""
