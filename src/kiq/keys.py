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
  * ``kiq|ahead|<identity>`` / ``kiq|fetch-call|<identity>``: the jobs a process took
    ahead and has not started, and its last fetch call (kiq/store/lua/fetch.lua).
  * ``kiq|paused``: SET of queue names kiq workers do not fetch from.
  * ``kiq|progress|<jid>``: HASH, progress reported by a running job.
  * ``kiq|totals`` / ``kiq|totals|<Class>``: cumulative per-class counters (Prometheus).
  * ``kiq|result|<jid>``: STRING, a job's stored result or failure (docs/results.md);
    the pub/sub channel ``kiq|result-ready|<jid>`` carries the same record to waiters,
    and ``kiq|results`` (HASH status -> count) counts the records stored.
  * ``kiq|fate|<jid>``: HASH, how a cancelled or expired job ended; ``kiq|stat|<fate>``
    counts them.

Unique jobs use Sidekiq Enterprise's ``unique:<digest>`` (``Keys.unique``); limiters
``kiq|limiter|<name>`` (and ``|holders``, ``|log``, ``|waiters``, ``|leases``,
``|wake|<token>``), ``kiq|limiters``,
``kiq|limiter-stats|<minute>``, ``kiq|limited``; queue limits ``kiq|qlimit|<queue>``
(and ``|rate``).
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

    def ahead(self, identity: str) -> str:
        """SET of raw jobs a process took ahead of its slots and has not started (fetch.lua)."""
        return f"{self.prefix}kiq|ahead|{identity}"

    def fetch_call(self, identity: str) -> str:
        """STRING: a process's last fetch call, so a retried call returns its jobs again."""
        return f"{self.prefix}kiq|fetch-call|{identity}"

    # Unique jobs (Sidekiq Enterprise's names; docs/unique.md) --------------------------
    def unique(self, digest: str) -> str:
        """A unique job's lock: STRING holding the jid of the job that took it, with a TTL.

        ``unique:<40 hex digits>``, the shape of Sidekiq Enterprise's lock keys; the digest
        is ``kiq.unique.digest`` (SHA-1 of class, queue and arguments). Limiters, when they
        come, sit beside it under their own prefix and never share a key with a lock.
        """
        return f"{self.prefix}unique:{digest}"

    # Results (kiq.results; docs/results.md) -------------------------------------------
    def result(self, jid: str) -> str:
        """STRING: the JSON record of a job run with ``result_ttl`` (its value or failure)."""
        return f"{self.prefix}kiq|result|{jid}"

    def result_channel(self, jid: str) -> str:
        """Pub/sub channel (not a key): the final record, published when it is stored."""
        return f"{self.prefix}kiq|result-ready|{jid}"

    @property
    def result_counts(self) -> str:
        """HASH final status -> results stored (the Prometheus counter)."""
        return f"{self.prefix}kiq|results"

    # Cancelled and expired jobs (issue 18; docs/iterable.md) ---------------------------
    def fate(self, jid: str) -> str:
        """HASH: how a job that never finished ended (``fate`` cancelled or expired, ``at``,
        ``class``, ``queue``, ``where``, ``job``), for the API and the job detail page."""
        return f"{self.prefix}kiq|fate|{jid}"

    def fate_count(self, fate: str) -> str:
        """STRING int: how many jobs ended ``cancelled`` or ``expired`` (never expires)."""
        return f"{self.prefix}kiq|stat|{fate}"

    def unique_pattern(self) -> str:
        """SCAN MATCH pattern of every unique lock (the admin API counts and lists them)."""
        return f"{self.prefix}unique:*"

    # Limiters and queue limits (kiq's own keys; docs/limits.md) -------------------------
    def limiter(self, name: str) -> str:
        """HASH: one limiter's definition, counters and window/bucket state (with a TTL)."""
        return f"{self.prefix}kiq|limiter|{name}"

    def limiter_holders(self, name: str) -> str:
        """ZSET: a concurrent limiter's holders, token -> lock expiry (epoch ms)."""
        return f"{self.prefix}kiq|limiter|{name}|holders"

    def limiter_log(self, name: str) -> str:
        """ZSET: a sliding-window limiter's calls in the window, member -> epoch ms."""
        return f"{self.prefix}kiq|limiter|{name}|log"

    def limiter_waiters(self, name: str) -> str:
        """ZSET: a concurrent limiter's waiters in line, token -> epoch ms it joined (the
        oldest is handed the next freed slot: limit_release.lua)."""
        return f"{self.prefix}kiq|limiter|{name}|waiters"

    def limiter_leases(self, name: str) -> str:
        """ZSET: the same waiters, token -> epoch ms its place ends unless renewed (a
        waiter that died is dropped from the line then, and handed nothing)."""
        return f"{self.prefix}kiq|limiter|{name}|leases"

    def limiter_wake(self, token: str, name: str) -> str:
        """LIST: one waiter's wake-up; the release that hands it a slot pushes the grant's
        epoch ms, the waiter BLPOPs it (the name last: it is the cluster hash tag)."""
        return f"{self.prefix}kiq|limiter|{name}|wake|{token}"

    def limiter_wake_prefix(self, name: str) -> str:
        """``limiter_wake`` without its token, for the Lua scripts that append it."""
        return self.limiter_wake("", name)

    @property
    def limiters(self) -> str:
        """ZSET: limiter name -> epoch ms of its last use (the Web UI's list)."""
        return f"{self.prefix}kiq|limiters"

    def limiter_minute(self, at: datetime) -> str:
        """HASH of one UTC minute: ``<name>|held``, ``|waited``, ``|overlimit`` counts."""
        at = at.astimezone(UTC)
        return f"{self.prefix}kiq|limiter-stats|{at:%Y%m%d}|{at.hour}:{at.minute}"

    @property
    def limited(self) -> str:
        """HASH: job class -> jobs rescheduled because a limiter was full (and ``total``)."""
        return f"{self.prefix}kiq|limited"

    def queue_limit(self, queue: str) -> str:
        """ZSET: processes holding a queue-limit permit, identity -> lease expiry (ms)."""
        return f"{self.prefix}kiq|qlimit|{queue}"

    def queue_rate(self, queue: str) -> str:
        """HASH: a queue's fetch-rate leaky bucket (``level``, ``at``)."""
        return f"{self.prefix}kiq|qlimit|{queue}|rate"

    def inprogress_parts(self, queue: str) -> tuple[str, str]:
        """``inprogress(identity, queue)`` split around the identity, for fetch.lua, which
        counts the in-progress jobs of every process that holds a queue's permits."""
        head, _, tail = self.inprogress("\0", queue).partition("\0")
        return head, tail

    # Batches (Sidekiq Pro's names; docs/workflows.md) ----------------------------------
    @property
    def batches(self) -> str:
        """ZSET bid -> created_at of every batch not yet expired (Pro's ``batches``)."""
        return f"{self.prefix}batches"

    def batch(self, bid: str, part: str = "") -> str:
        """``b-<bid>`` (HASH: counts, callbacks, parent, fired events) or one of its parts:
        ``-jids`` (SET, pending jids), ``-failinfo`` (HASH jid -> error JSON), ``-died``
        (SET), ``-kids`` (SET of child bids), ``-open`` (SET of open ``jobs()`` blocks),
        ``-results`` (HASH jid -> JSON result, workflow steps only). batch_update.lua
        builds the same names from ``prefix`` to walk up to a parent: keep them in step.
        """
        return f"{self.prefix}b-{bid}{'-' + part if part else ''}"

    # Workflows (kiq's own; docs/workflows.md) -------------------------------------------
    @property
    def workflows(self) -> str:
        """ZSET wid -> created_at of every workflow not yet expired."""
        return f"{self.prefix}kiq|workflows"

    def workflow(self, wid: str) -> str:
        """HASH: ``spec`` (the steps as JSON), ``created_at``, ``description``."""
        return f"{self.prefix}kiq|wf|{wid}"


# TTLs, in seconds, of the keys that expire (the heartbeat's is ``Config.process_ttl``).
STAT_TTL: Final = 157_680_000  # 5 years, as Sidekiq's daily stat keys
SIGNAL_TTL: Final = 60  # Sidekiq's API expires the signals list after a minute
PROGRESS_TTL: Final = 86_400  # a job's last progress stays readable a day
METRICS_TTL: Final = 8 * 3600  # every metrics key (Sidekiq 7: SHORT_TERM, HISTOGRAM_TTL)
METRICS_MID_TTL: Final = 3 * 86400  # Sidekiq 8's 10-minute hashes (MID_TERM)
TOTALS_TTL: Final = 30 * 86400  # a class's cumulative totals outlive its last run
DEPLOY_MARK_TTL: Final = 90 * 86400  # a day's deploy marks (Sidekiq: MARK_TTL)
DEPLOY_LOCK_TTL: Final = 60  # a label is marked at most once this long
ITERATION_TTL: Final = 30 * 86400  # it-<jid> (Sidekiq's Iterable::STATE_TTL), set with EXPIRE NX
FATE_TTL: Final = 30 * 86400  # a cancelled or expired job's record (kiq|fate|<jid>)
LIMITER_TTL: Final = 90 * 86400  # a limiter unused this long is forgotten (Enterprise's default)
LIMITER_STATS_TTL: Final = 8 * 3600  # a minute's limiter counts (as the metrics keys)
LIMITERS_MAX: Final = 10_000  # names kept in the kiq|limiters index (most recently used)
BATCH_TTL: Final = 30 * 86400  # a batch's keys (Sidekiq Pro: 30 days); Config.batch_ttl
BATCH_CLAIM_TTL: Final = 86_400  # a cluster batch push's claim (kiq.store.cluster_batches)
BATCH_SEAL_TTL: Final = 86_400  # a swept cluster batch family's seal (as long as a claim)
FETCH_CALL_TTL: Final = 86_400  # a process's last fetch call (a retry comes within seconds)

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
#   * "own": a key only ever used alone (per jid, per lock digest): its own slot;
#   * "batch": a batch's keys (``b-<bid>`` and its parts) on the slot of the tag
#     ``{<root>}``, the bid up to its first ``.`` (a child batch's bid is
#     ``<root>.<digest>``: kiq.batch_context), so a batch, its parts, its children and
#     its outbox share one slot and batch_update.lua walks up to the root in one step;
#   * "derived": a builder made from other builders (already tagged by theirs).
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
    # Added by the features merged after the cluster mode (docs/cluster.md, "Features").
    "ahead": "global",  # never written on a cluster: ClusterKeys.ahead_shard is, per shard
    "fetch_call": "global",  # idem: ClusterKeys.fetch_call_shard
    "result": "own",  # results are refused on a cluster (result_store.lua spans slots)
    "result_channel": "own",
    "result_counts": "global",
    "fate": "own",  # written alone, then its count (ClusterStore.record_fate)
    "fate_count": "global",
    "unique_pattern": "own",  # a SCAN pattern, not a key
    "limiter": "shard",  # one limiter's keys share the tag {<name>}; limiters are
    "limiter_holders": "shard",  # refused on a cluster (limit.lua also writes the
    "limiter_log": "shard",  # global index and minute stats)
    "limiter_waiters": "shard",
    "limiter_leases": "shard",
    "limiter_wake": "shard",
    "limiter_wake_prefix": "derived",  # built from limiter_wake (already tagged)
    "limiters": "global",
    "limiter_minute": "global",
    "limited": "global",
    "queue_limit": "shard",  # fetch.lua's permits step: on the queue's slot
    "queue_rate": "shard",
    "inprogress_parts": "derived",  # built from inprogress (already tagged)
    "batches": "global",  # the index only: written beside the batch (cluster_batches)
    "batch": "batch",
    "workflows": "global",
    "workflow": "own",  # written alone, then its index entry (cluster_batches)
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

    def ahead_shard(self, identity: str, shard: str) -> str:
        """SET: the ahead marks (fetch.lua) of the jobs ``identity`` took from ``shard``,
        on the shard's slot so the fetch writes them in the same step (one Redis:
        ``kiq|ahead|<identity>`` for every queue)."""
        return f"{self.prefix}kiq|ahead|{identity}|{{{shard}}}"

    def fetch_call_shard(self, identity: str, shard: str) -> str:
        """STRING: ``identity``'s last fetch call on ``shard`` (fetch.lua's call record)."""
        return f"{self.prefix}kiq|fetch-call|{identity}|{{{shard}}}"

    def limiter_index_of(self, name: str) -> str:
        """ZSET: ``name`` -> its last use, beside the limiter's keys (limit.lua's index on
        a cluster; copied to ``kiq|limiters``: kiq.store.cluster_limits)."""
        return f"{self.prefix}kiq|limiter|{{{name}}}|index"

    def limiter_minute_of(self, name: str, at: datetime) -> str:
        """HASH: this limiter's counts of one minute, beside its keys (copied to
        ``limiter_minute(at)``: kiq.store.cluster_limits)."""
        at = at.astimezone(UTC)
        return f"{self.prefix}kiq|limiter|{{{name}}}|stats|{at:%Y%m%d}|{at.hour}:{at.minute}"

    def cron_claims(self, shard: str) -> str:
        """ZSET ``<name>|<tick>`` -> tick: the exactly-once claims of the cron ticks
        pushed to this shard, beside the queue they push to (one-slot claim + push)."""
        return f"{self.prefix}kiq|cron-claims|{{{shard}}}"

    def migrated(self, shard: str) -> str:
        """SET of the digests of the jobs ``kiq cluster-migrate`` copied to this shard
        (so a re-run copies none twice); expires a week after the last copy."""
        return f"{self.prefix}kiq|migrated|{{{shard}}}"

    def batch_outbox(self, bid: str) -> str:
        """HASH claim -> ``<at>|<queue>|<payload>``: the pushes a batch step decided on
        its slot and not yet delivered to their queue shards (kiq.store.cluster_batches),
        one per batch family (the root's slot and name); batch_update.lua builds it too."""
        return self.batch(batch_root(bid), "outbox")

    def batch_outbox_seal(self, bid: str) -> str:
        """STRING: the highest index score a sweep removed ``bid``'s family at from
        ``batch_outboxes`` after finding its outbox empty; a step 1 stamped at or below
        it writes nothing (cluster_batch_add.lua, cluster_batch_sweep.lua)."""
        return self.batch(batch_root(bid), "outbox-seal")

    @property
    def batch_outboxes(self) -> str:
        """ZSET root bid -> the last stamp (epoch s) of a step 1 that may have written
        its family's outbox: the families the worker's sweep visits once that is older
        than ``batch_sweep_grace`` (kiq.store.cluster_batches), on the global slot."""
        return f"{self.prefix}{GLOBAL_TAG}kiq|batch-outboxes"

    def batch_claims(self, shard: str) -> str:
        """ZSET claim -> epoch s: the batch pushes delivered to this shard, so a delivery
        repeated after a crash pushes nothing twice (cluster_batch_deliver.lua)."""
        return f"{self.prefix}kiq|batch-claims|{{{shard}}}"

    @property
    def known_queues(self) -> str:
        """SET: every queue that ever held a job here (``queues`` minus admin clears):
        the shards the poller and the admin API visit."""
        return f"{self.prefix}{GLOBAL_TAG}kiq|cluster-queues"

    @property
    def global_slot_key(self) -> str:
        """A key on the global slot (to reach the node holding every global key)."""
        return f"{self.prefix}{GLOBAL_TAG}"


def batch_root(bid: str) -> str:
    """The root batch of ``bid``'s family: the bid up to its first ``.`` (the "batch"
    slot rule's hash tag)."""
    return bid.split(".", 1)[0]


def outbox_job_field(jid: str) -> str:
    """A job's field in a batch outbox (``ClusterKeys.batch_outbox``), as
    cluster_batch_add.lua writes it; a callback's is ``c|<bid>|<event>`` (batch_update.lua)."""
    return f"j|{jid}"


def _tag_batch(prefix: str, bid: str, part: str = "") -> str:
    root = batch_root(bid)
    return f"{prefix}b-{{{root}}}{bid[len(root) :]}{'-' + part if part else ''}"


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
    if rule == "batch":
        assert name == "batch", f"{name}: the batch rule is the batch builder's"
        return lambda self, bid, part="": _tag_batch(self.prefix, bid, part)
    return base  # own, derived


for _name, _rule in SLOT_RULES.items():
    setattr(ClusterKeys, _name, _cluster_builder(_name, _rule))
