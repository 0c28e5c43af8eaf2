"""The admin and read model: Sidekiq's ``sidekiq/api.rb`` in Python.

What Redis holds, seen as objects: ``Stats`` and ``History`` for the dashboard,
``Queue`` and ``JobRecord`` for queues, ``ScheduledSet``/``RetrySet``/``DeadSet`` and
``SortedEntry`` for the sorted sets, ``ProcessSet``/``Process`` for heartbeats and
``WorkSet``/``Work`` for running jobs; for the Web UI also ``queue_summaries``,
``redis_info``, ``progress``, ``cron_set`` and the per-class ``Metrics``; for
operations ``job_totals`` (the Prometheus counters) and ``deploy_mark``. The Web UI
renders these and nothing else, so the dashboard and the Python API cannot drift
apart (STYLE C.2).

It reads what Ruby Sidekiq 6.4, 7.x and 8.x write as well as kiq's own data
(shared/sidekiq-wire.md §1, §2, §8): payload times as float seconds or integer
milliseconds, busy jobs under ``<identity>:work`` or ``<identity>:workers``,
``concurrency`` in ``info`` or as a hash field, MIME or strict Base64 backtraces and
ActiveJob ``wrapped`` payloads. Each call does the Redis work Sidekiq's does, and pages
in Redis, so one page of a 100,000-job queue costs one LRANGE.

Every class takes an optional ``config`` (default: ``kiq.config.get_default()``);
every Redis command is a ``config.store`` method and key names come from ``config.keys``.

The package is split by subject (STYLE C.1: ``api`` becomes a package past 800
lines); import from ``kiq.api`` itself, which re-exports every name:

* ``stats``: ``Stats``, ``History``, ``queue_summaries``, ``redis_info``;
* ``queue``: ``Queue``, ``JobRecord``;
* ``sets``: ``SortedEntry``, ``JobSet``, ``ScheduledSet``, ``RetrySet``, ``DeadSet``,
  ``cron_set``;
* ``process``: ``ProcessSet``, ``Process``, ``WorkSet``, ``Work``, ``progress``;
* ``metrics``: ``Metrics``, ``job_totals``, ``deploy_mark``, ``deploy_marks``;
* ``results``: ``result``, ``results``, ``result_counts`` (kiq.results' records);
* ``cancel``: ``cancel`` (by jid), ``fate``, ``fate_counts`` (issue 18);
* ``limits``: ``limiters``, ``limited_jobs``, ``queue_limits``, ``unique_locks``,
  ``unique_lock`` (issue 16: limiters, queue limits, unique locks);
* ``batches``: ``BatchSet``, ``WorkflowSet``, ``batch_counts`` (issue 17);
* ``base``: the Config and the lenient readers they all share.

Example::

    from kiq.api import Queue, RetrySet, Stats

    stats = Stats()
    print(stats.processed, stats.failed, stats.enqueued)
    for entry in RetrySet():
        if entry.error_class == "TimeoutError":
            entry.retry()
    Queue("low").clear()
"""

from __future__ import annotations

from kiq.api.base import PAGE_SIZE
from kiq.api.batches import BatchSet, WorkflowSet, batch_counts, batch_state
from kiq.api.cancel import FATES, cancel, fate, fate_counts
from kiq.api.limits import (
    LimiterInfo,
    MinuteCounts,
    QueueLimitInfo,
    UniqueLock,
    UniqueLocks,
    limited_jobs,
    limiters,
    queue_limits,
    unique_lock,
    unique_locks,
)
from kiq.api.metrics import (
    DEPLOY_LOCK_TTL,
    DEPLOY_MARK_TTL,
    DeployMark,
    JobHistogram,
    JobMetrics,
    JobTotals,
    Metrics,
    MetricsResult,
    deploy_mark,
    deploy_marks,
    job_totals,
)
from kiq.api.process import (
    PROCESS_FIELDS,
    IterationState,
    Process,
    ProcessSet,
    Work,
    WorkSet,
    iterations,
    progress,
)
from kiq.api.queue import ACTIVE_JOB_PREFIXES, MAILER_JOBS, JobRecord, Queue
from kiq.api.results import result, result_counts, results
from kiq.api.sets import (
    KILL_BATCH,
    SCAN_COUNT,
    DeadSet,
    JobSet,
    RetrySet,
    ScheduledSet,
    SortedEntry,
    cron_set,
)
from kiq.api.stats import (
    HISTORY_MAX_DAYS,
    History,
    QueueSummary,
    RedisInfo,
    Stats,
    queue_summaries,
    redis_info,
)
from kiq.cancel import CancelResult

__all__ = [
    "ACTIVE_JOB_PREFIXES",
    "DEPLOY_LOCK_TTL",
    "DEPLOY_MARK_TTL",
    "FATES",
    "HISTORY_MAX_DAYS",
    "KILL_BATCH",
    "MAILER_JOBS",
    "PAGE_SIZE",
    "PROCESS_FIELDS",
    "SCAN_COUNT",
    "BatchSet",
    "CancelResult",
    "DeadSet",
    "DeployMark",
    "History",
    "IterationState",
    "JobHistogram",
    "JobMetrics",
    "JobRecord",
    "JobSet",
    "JobTotals",
    "LimiterInfo",
    "Metrics",
    "MetricsResult",
    "MinuteCounts",
    "Process",
    "ProcessSet",
    "Queue",
    "QueueLimitInfo",
    "QueueSummary",
    "RedisInfo",
    "RetrySet",
    "ScheduledSet",
    "SortedEntry",
    "Stats",
    "UniqueLock",
    "UniqueLocks",
    "Work",
    "WorkSet",
    "WorkflowSet",
    "batch_counts",
    "batch_state",
    "cancel",
    "cron_set",
    "deploy_mark",
    "deploy_marks",
    "fate",
    "fate_counts",
    "iterations",
    "job_totals",
    "limited_jobs",
    "limiters",
    "progress",
    "queue_limits",
    "queue_summaries",
    "redis_info",
    "result",
    "result_counts",
    "results",
    "unique_lock",
    "unique_locks",
]
