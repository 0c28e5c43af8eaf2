"""Every Redis key kiq reads or writes, in one place (the table: docs/internals.md).

The names are Sidekiq's own (see shared/sidekiq-wire.md §1), so Sidekiq's
documentation doubles as this module's spec; sidekiq-cron 1.x's for recurring jobs
(§11) and Sidekiq 7's and 8's for per-class metrics and deploy marks (§1.4). ``Keys(prefix)``
prepends an optional namespace to every key, for sharing Redis with a Sidekiq 6.x app
that uses ``redis-namespace`` (``namespace: "myapp"`` there is ``prefix="myapp:"``
here). No other module spells a key (tests/test_layers.py checks it); the TTLs of the
keys that expire are here too, except the heartbeat's (``Config.process_ttl``).

Time units, documented once:
  * ZSET scores (``schedule``, ``retry``, ``dead``): epoch seconds as a float.
  * Payload timestamps (``created_at``, ``enqueued_at``, ``failed_at``...): epoch
    seconds as a float that always carries a decimal point (readable by Sidekiq
    6.4 through 8.x); integer epoch milliseconds are read too (Sidekiq 8 writes them).
  * Heartbeat ``beat``: float epoch seconds; ``rss`` KB; ``rtt_us`` microseconds.

Keys that only kiq uses start with ``kiq|`` so they never collide with Sidekiq's,
and are never in the ``queues`` set:
  * ``kiq|inprogress|<identity>|<queue>``: LIST, jobs a live process has taken from
    ``queue:<queue>`` and not yet acknowledged (Sidekiq Pro's super_fetch idea).
  * ``kiq|fetchers``: HASH identity -> JSON list of queue names, so a survivor can
    find the in-progress lists of a process whose heartbeat expired.
  * ``kiq|recover-lock``: STRING, one orphan sweep at a time cluster-wide.
  * ``kiq|paused``: SET of queue names kiq workers do not fetch from.
  * ``kiq|progress|<jid>``: HASH, progress reported by a running job.
  * ``kiq|totals`` / ``kiq|totals|<Class>``: cumulative per-class counters (Prometheus).

Unique jobs use Sidekiq Enterprise's ``unique:<digest>`` (``Keys.unique``).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Final


@dataclass(frozen=True, slots=True)
class Keys:
    """Key builders under an optional namespace prefix (``""`` = none, as Sidekiq 7+)."""

    prefix: str = ""

    # Sidekiq's own keys -------------------------------------------------------------
    @property
    def queues(self) -> str:
        return f"{self.prefix}queues"

    @property
    def schedule(self) -> str:
        return f"{self.prefix}schedule"

    @property
    def retry(self) -> str:
        return f"{self.prefix}retry"

    @property
    def dead(self) -> str:
        return f"{self.prefix}dead"

    @property
    def processes(self) -> str:
        return f"{self.prefix}processes"

    def queue(self, name: str) -> str:
        return f"{self.prefix}queue:{name}"

    def process(self, identity: str) -> str:
        return f"{self.prefix}{identity}"

    def work(self, identity: str) -> str:
        """Busy-jobs hash read by Sidekiq 6.5+/7/8."""
        return f"{self.prefix}{identity}:work"

    def workers(self, identity: str) -> str:
        """Busy-jobs hash read by Sidekiq 6.4 (written too, so a 6.4 UI shows our jobs)."""
        return f"{self.prefix}{identity}:workers"

    def signals(self, identity: str) -> str:
        return f"{self.prefix}{identity}-signals"

    def stat(self, kind: str) -> str:
        """``stat:processed`` or ``stat:failed``."""
        return f"{self.prefix}stat:{kind}"

    def stat_daily(self, kind: str, day: date) -> str:
        return f"{self.prefix}stat:{kind}:{day.isoformat()}"

    @property
    def leader(self) -> str:
        """Sidekiq Enterprise's leader identity; OSS readers only show it (Busy page star)."""
        return f"{self.prefix}dear-leader"

    # Sidekiq 7's metrics (written by kiq.metrics, read by kiq.api.Metrics) -----------
    # (Sidekiq 8 renamed the keys; kiq writes the layouts the live versions read, kiq.peers)
    def metric_bucket(self, at: datetime) -> str:
        """The minute hash for ``at`` (UTC), e.g. ``j|20240301|8:5``."""
        at = at.astimezone(UTC)
        return f"{self.prefix}j|{at:%Y%m%d}|{at.hour}:{at.minute}"

    def histogram(self, klass: str, at: datetime) -> str:
        """The histogram of ``klass`` for the minute ``at`` (UTC), e.g. ``HardJob-05-08:3``."""
        at = at.astimezone(UTC)
        return f"{self.prefix}{klass}-{at:%d}-{at:%H}:{at.minute}"

    # Sidekiq 8's metrics (the same fields and BITFIELD, other key names) -------------
    def metric_bucket8(self, at: datetime) -> str:
        """Sidekiq 8's minute hash for ``at`` (UTC), e.g. ``j|250214|8:43``, ``j|250214|8:05``."""
        at = at.astimezone(UTC)
        return f"{self.prefix}j|{at:%y%m%d}|{at.hour}:{at.minute:02d}"

    def metric_bucket8_mid(self, at: datetime) -> str:
        """Sidekiq 8's 10-minute hash (the minute key less its last digit), ``j|250214|8:4``."""
        return self.metric_bucket8(at)[:-1]

    def histogram8(self, klass: str, at: datetime) -> str:
        """Sidekiq 8's histogram of ``klass`` for the minute ``at``, e.g. ``h|HardJob-14-8:3``."""
        at = at.astimezone(UTC)
        return f"{self.prefix}h|{klass}-{at.day}-{at.hour}:{at.minute}"

    def deploy_lock(self, label: str) -> str:
        """Sidekiq::Deploy's one-mark-a-minute lock for ``label``."""
        return f"{self.prefix}deploylock-{label}"

    def deploy_marks(self, day: date) -> str:
        """Sidekiq::Deploy's marks of one UTC day: HASH ISO time -> label."""
        return f"{self.prefix}{day:%Y%m%d}-marks"

    def iteration(self, jid: str) -> str:
        """Sidekiq 7.3+'s iterable-job state (HASH ``ex``, ``c``, ``rt``, ``cancelled``)."""
        return f"{self.prefix}it-{jid}"

    # sidekiq-cron 1.x's keys (shared/sidekiq-wire.md §11) ---------------------------
    @property
    def cron_jobs(self) -> str:
        """SET of ``cron_job:<name>`` keys."""
        return f"{self.prefix}cron_jobs"

    def cron_job(self, name: str) -> str:
        """HASH: one recurring job's definition, status and last_enqueue_time."""
        return f"{self.prefix}cron_job:{name}"

    def cron_enqueued(self, name: str) -> str:
        """ZSET: one member per fired tick (the exactly-once claim)."""
        return f"{self.cron_job(name)}:enqueued"

    def cron_history(self, name: str) -> str:
        """LIST of ``{"jid", "enqueued"}``, newest first."""
        return f"{self.cron_job(name)}:jid_history"

    def cron_name(self, key: str) -> str:
        """The job name in a ``cron_jobs`` member (``cron_job:<name>``)."""
        return key.removeprefix(self.prefix).split(":", 1)[-1]

    # kiq's own keys -----------------------------------------------------------------
    def inprogress(self, identity: str, queue: str) -> str:
        return f"{self.prefix}kiq|inprogress|{identity}|{queue}"

    @property
    def fetchers(self) -> str:
        return f"{self.prefix}kiq|fetchers"

    @property
    def recover_lock(self) -> str:
        return f"{self.prefix}kiq|recover-lock"

    @property
    def paused(self) -> str:
        return f"{self.prefix}kiq|paused"

    def progress(self, jid: str) -> str:
        return f"{self.prefix}kiq|progress|{jid}"

    @property
    def totals_index(self) -> str:
        """ZSET of job classes that have cumulative totals (kiq.metrics)."""
        return f"{self.prefix}kiq|totals"

    def totals(self, klass: str) -> str:
        """HASH: the cumulative totals of ``klass`` (kiq.metrics, for Prometheus)."""
        return f"{self.prefix}kiq|totals|{klass}"

    # Unique jobs (Sidekiq Enterprise's names; docs/unique.md) --------------------------
    def unique(self, digest: str) -> str:
        """A unique job's lock: STRING holding the jid of the job that took it, with a TTL.

        ``unique:<40 hex digits>``, the shape of Sidekiq Enterprise's lock keys; the digest
        is ``kiq.unique.digest`` (SHA-1 of class, queue and arguments). Limiters, when they
        come, sit beside it under their own prefix and never share a key with a lock.
        """
        return f"{self.prefix}unique:{digest}"


# TTLs, in seconds, of the keys that expire (the heartbeat's is ``Config.process_ttl``).
STAT_TTL: Final = 157_680_000  # 5 years, as Sidekiq's daily stat keys
SIGNAL_TTL: Final = 60  # Sidekiq's API expires the signals list after a minute
PROGRESS_TTL: Final = 86_400  # a job's last progress stays readable a day
METRICS_TTL: Final = 8 * 3600  # every metrics key (Sidekiq 7: SHORT_TERM, HISTOGRAM_TTL)
METRICS_MID_TTL: Final = 3 * 86400  # Sidekiq 8's 10-minute hashes (MID_TERM)
TOTALS_TTL: Final = 30 * 86400  # a class's cumulative totals outlive its last run
DEPLOY_MARK_TTL: Final = 90 * 86400  # a day's deploy marks (Sidekiq: MARK_TTL)
DEPLOY_LOCK_TTL: Final = 60  # a label is marked at most once this long

# The histogram key's layout (Sidekiq 7's metrics): one u16 counter per bucket, in
# BITFIELD order. # Upper bounds (ms, exclusive) of the histogram buckets; the last one is "Slow".
BUCKETS: Final = (
    20, 30, 45, 65, 100, 150, 225, 335, 500, 750, 1100, 1700, 2500, 3800, 5750,
    8500, 13000, 20000, 30000, 45000, 65000, 100000, 150000, 225000, 335000,
)  # fmt: skip
LABELS: Final = (
    "20ms", "30ms", "45ms", "65ms", "100ms", "150ms", "225ms", "335ms", "500ms", "750ms",
    "1.1s", "1.7s", "2.5s", "3.8s", "5.75s", "8.5s", "13s", "20s", "30s", "45s",
    "65s", "100s", "150s", "225s", "335s", "Slow",
)  # fmt: skip


# -- Redis Cluster (docs/cluster.md) -------------------------------------------------------
# Every builder of ``Keys`` has one slot rule here; ``ClusterKeys`` applies it. A new key
# is made cluster-safe by this one line (tests/test_cluster_keys.py fails for a builder
# without one, and checks each key lands where its rule says):
#   * "global": on the fixed slot of the ``{kiq}`` hash tag, with every other global key,
#     so the heartbeat's MULTI, the cron and registry writes stay one-slot steps;
#   * "shard": the last argument is a queue shard (a queue, or one partition of it) and
#     becomes the hash tag, so a queue's list, its in-progress lists and its schedule,
#     retry and dead shards share one slot (each Lua script touches one slot);
#   * "own": a key only ever used alone (per jid, per lock digest): its own slot.
GLOBAL_TAG: Final = "{kiq}"
SLOT_RULES: Final[dict[str, str]] = {
    "queues": "global",
    "schedule": "global",  # the name of the set across its shards (never written)
    "retry": "global",  # idem
    "dead": "global",  # idem
    "processes": "global",
    "queue": "shard",
    "process": "global",
    "work": "global",
    "workers": "global",
    "signals": "global",
    "stat": "global",
    "stat_daily": "global",
    "leader": "global",
    "metric_bucket": "global",
    "histogram": "global",
    "metric_bucket8": "global",
    "metric_bucket8_mid": "global",
    "histogram8": "global",
    "deploy_lock": "global",
    "deploy_marks": "global",
    "iteration": "own",
    "cron_jobs": "global",
    "cron_job": "global",
    "cron_enqueued": "global",
    "cron_history": "global",
    "inprogress": "shard",
    "fetchers": "global",
    "recover_lock": "global",
    "paused": "global",
    "progress": "own",
    "totals_index": "global",
    "totals": "global",
    "unique": "own",
}
PARTITION_SEP: Final = "|"  # a partition's shard name: <queue>|<i>


def _tag_global(prefix: str, key: str) -> str:
    return f"{prefix}{GLOBAL_TAG}{key[len(prefix) :]}"


@dataclass(frozen=True, slots=True)
class ClusterKeys(Keys):
    """The cluster layout: Sidekiq's names with a hash tag each (``SLOT_RULES``).

    ``partitions`` (queue -> N) splits a hot queue into N shards ``<q>|0`` .. ``<q>|N-1``,
    each its own slot (so one queue is not bound to one node); a job's shard is chosen by
    its jid (``shard_of``). Queue names holding ``{``, ``}`` or ``|`` are refused in
    cluster mode (``kiq.store.cluster.check_queue_name``): they would move the hash tag.
    """

    partitions: tuple[tuple[str, int], ...] = ()

    def shards(self, queue: str) -> list[str]:
        """Every shard of ``queue``: itself, or its partitions."""
        count = dict(self.partitions).get(queue, 0)
        if count <= 1:
            return [queue]
        return [f"{queue}{PARTITION_SEP}{i}" for i in range(count)]

    def shard_of(self, queue: str, jid: str) -> str:
        """The shard a job of ``queue`` with ``jid`` is pushed to (CRC32 of the jid)."""
        count = dict(self.partitions).get(queue, 0)
        if count <= 1:
            return queue
        return f"{queue}{PARTITION_SEP}{zlib.crc32(jid.encode()) % count}"

    @staticmethod
    def queue_of(shard: str) -> str:
        """The queue a shard belongs to (``default|3`` -> ``default``)."""
        return shard.split(PARTITION_SEP, 1)[0]

    # Keys of the sorted sets per shard (single Redis: one global set each).
    def schedule_shard(self, shard: str) -> str:
        return f"{self.prefix}schedule:{{{shard}}}"

    def retry_shard(self, shard: str) -> str:
        return f"{self.prefix}retry:{{{shard}}}"

    def dead_shard(self, shard: str) -> str:
        return f"{self.prefix}dead:{{{shard}}}"

    def cron_claims(self, shard: str) -> str:
        """ZSET ``<name>|<tick>`` -> tick: the exactly-once claims of the cron ticks
        pushed to this shard, beside the queue they push to (one-slot claim + push)."""
        return f"{self.prefix}kiq|cron-claims|{{{shard}}}"

    def migrated(self, shard: str) -> str:
        """SET of the digests of the jobs ``kiq cluster-migrate`` copied to this shard
        (so a re-run copies none twice); expires a week after the last copy."""
        return f"{self.prefix}kiq|migrated|{{{shard}}}"

    @property
    def known_queues(self) -> str:
        """SET: every queue that ever held a job here (``queues`` minus admin clears):
        the shards the poller and the admin API visit."""
        return f"{self.prefix}{GLOBAL_TAG}kiq|cluster-queues"

    @property
    def global_slot_key(self) -> str:
        """A key on the global slot (to reach the node holding every global key)."""
        return f"{self.prefix}{GLOBAL_TAG}"


def _cluster_builder(name: str, rule: str) -> Any:
    base = getattr(Keys, name)
    if isinstance(base, property):
        getter = base.fget
        assert getter is not None, name
        assert rule == "global", f"{name}: a property takes no shard"
        return property(lambda self: _tag_global(self.prefix, getter(self)))
    if rule == "global":
        return lambda self, *args: _tag_global(self.prefix, base(self, *args))
    if rule == "shard":
        return lambda self, *args: base(self, *args[:-1], f"{{{args[-1]}}}")
    return base


for _name, _rule in SLOT_RULES.items():
    setattr(ClusterKeys, _name, _cluster_builder(_name, _rule))
