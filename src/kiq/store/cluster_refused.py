"""Redis Cluster: the features refused on a cluster, each with why (docs/cluster.md).

Why its own file: these features cannot run on a cluster yet, so their store calls
raise ``ConfigError`` naming the feature and why, instead of failing later with Redis's
CROSSSLOT error, or half-writing:

  * async limiters (``async with limiter.within_limit()``): the store's async client
    has no cluster form (sync limiters run split per slot: ``cluster_limits``);
  * batches and workflows: ``batch_push.lua`` pushes each job into its queue shard and
    counts it in ``b-<bid>`` in one step (a batch's jobs span every queue shard).

Results and sync limiters run on a cluster split per slot (``cluster_results``,
``cluster_limits``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

from kiq.errors import ConfigError
from kiq.store.connection import Connection

WHY: dict[str, str] = {
    "async limiters": "the async client has no cluster form (Limiter.within_limit "
    "in sync code works)",
    "batches": "a batch's push puts each job in its queue shard and counts it in the "
    "batch in one step (batch_push.lua), and a batch's jobs span every shard's hash slot",
}


def refuse(feature: str) -> NoReturn:
    """Raise the ConfigError that says ``feature`` does not run on a cluster, and why."""
    raise ConfigError(
        f"{feature} are not supported in cluster mode (redis+cluster://): {WHY[feature]}; "
        f"use a single Redis (or Sentinel) for them "
        f"(docs/cluster.md, Not supported)"
    )


class ClusterRefused(Connection):
    """The store calls of the refused features (see the module docstring)."""

    async def alimit_try(self, *args: Any, **kwargs: Any) -> Any:
        refuse("async limiters")

    async def alimit_release(self, *args: Any, **kwargs: Any) -> Any:
        refuse("async limiters")

    async def alimit_wait(self, name: str, token: str, timeout: float) -> int | None:
        refuse("async limiters")

    def batch_open(self, *args: Any, **kwargs: Any) -> Any:
        refuse("batches")

    def batch_push(self, *args: Any, **kwargs: Any) -> Any:
        refuse("batches")

    def batch_launch(self, *args: Any, **kwargs: Any) -> Any:
        refuse("batches")

    def workflow_save(self, wid: str, fields: Mapping[str, str], ttl: int, now: float) -> None:
        refuse("batches")
