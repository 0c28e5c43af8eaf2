"""``kiq cluster-migrate``: move a single Redis's jobs into a Redis Cluster's layout.

Why its own module: moving jobs between two Redis deployments is a one-off operation
with its own safety rules, not part of the engine. Each job is copied, then deleted:
the copy is journaled in the target shard in the same step (``Store.migrate_in``), so a
migration killed at any point and run again neither loses nor doubles a job; the
source copy is removed only after the target holds it (and, with ``wait_replicas``,
its replicas do).

What it moves: every queue in the source's ``queues`` set (oldest job first, so the
order is kept), and the ``schedule``, ``retry`` and ``dead`` sets with their scores.
What it does not (docs/cluster.md, "Migration"): jobs in the in-progress lists of live
source workers (they are requeued to the source when those workers stop: run the
migration again then), unique locks, cron definitions (workers save them again at
start), stats and metrics. It refuses to run while processes beat on the source unless
``force`` is given: a live worker there could take a job between its copy and its
delete, and run it while the cluster runs it too (a duplicate, never a loss).

Example::

    kiq cluster-migrate --from redis://old:6379/0 --to redis+cluster://n1:7000,n2:7000/
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TextIO

import orjson

from kiq.config import Config
from kiq.errors import ConfigError
from kiq.store import ClusterStore

BATCH = 100  # sorted-set members read per ZRANGE


@dataclass
class Report:
    """What one run moved, per queue or set; ``already`` were copied by an earlier run."""

    moved: dict[str, int] = field(default_factory=dict)
    already: int = 0
    taken_meanwhile: int = 0  # gone from the source between copy and delete (a live worker)
    in_progress: dict[str, int] = field(default_factory=dict)  # identity -> jobs not moved

    def count(self, name: str, copied: bool) -> None:
        self.moved[name] = self.moved.get(name, 0) + 1
        self.already += not copied


def live_processes(source: Config) -> list[str]:
    """Members of the source's ``processes`` whose heartbeat hash still exists."""
    store = source.store
    identities = store.process_identities()
    beats = store.process_fields(identities, ["beat"])
    return [i for i, (beat,) in zip(identities, beats, strict=True) if beat is not None]


def migrate(source: Config, target: Config, *, force: bool = False) -> Report:
    """Move every queue and sorted set of ``source`` into the cluster ``target``."""
    src, dst = source.store, target.store
    if not isinstance(dst, ClusterStore):
        raise ConfigError(
            f"--to {dst.safe_url}: the target must be a Redis Cluster URL "
            f"(redis+cluster://host:port,host:port/)"
        )
    live = live_processes(source)
    if live and not force:
        raise ConfigError(
            f"{len(live)} process(es) are live on {src.safe_url} ({', '.join(live[:3])}): "
            f"stop them first (kiq stop --all; point clients and workers at the cluster), "
            f"or pass --force to migrate meanwhile (a job a live worker takes between its "
            f"copy and its delete then runs twice)"
        )
    report = Report()
    for queue in src.queue_names():
        while (raw := src.queue_oldest(queue)) is not None:
            report.count(f"queue {queue}", dst.migrate_in(raw, "queue", None, queue))
            if not src.queue_remove(queue, raw):
                report.taken_meanwhile += 1
    for family, key in (
        ("schedule", src.keys.schedule),
        ("retry", src.keys.retry),
        ("dead", src.keys.dead),
    ):
        while entries := src.set_range(key, 0, BATCH - 1):
            for raw, score in entries:
                report.count(family, dst.migrate_in(raw, family, float(score)))
                src.set_remove(key, raw)
    for raw_ident, raw_queues in src.fetchers().items():
        queues = [str(q) for q in orjson.loads(raw_queues)]
        left = sum(src.in_progress_sizes(raw_ident, queues))
        if left:
            report.in_progress[raw_ident] = left
    return report


def render(report: Report, out: TextIO | None = None) -> None:
    """The report as ``kiq cluster-migrate`` prints it."""
    out = out or sys.stdout
    total = sum(report.moved.values())
    print(f"moved {total} job(s) ({report.already} copied by an earlier run):", file=out)
    for name, count in sorted(report.moved.items()):
        print(f"  {name}: {count}", file=out)
    if report.taken_meanwhile:
        print(
            f"{report.taken_meanwhile} job(s) were taken by a source worker during the copy: "
            f"they run on both sides once",
            file=out,
        )
    for identity, count in sorted(report.in_progress.items()):
        print(
            f"not moved: {count} in-progress job(s) of {identity}; they go back to the "
            f"source queues when it stops (or its heartbeat expires): run this again then",
            file=out,
        )
