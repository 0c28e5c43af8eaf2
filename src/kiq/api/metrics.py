"""Reading job metrics: the per-class ``Metrics`` query, cumulative ``job_totals``, deploy marks.

Why apart from the rest: these read the keys ``kiq.metrics`` writes (Sidekiq 7's
per-minute buckets and histograms, plus kiq's cumulative totals for Prometheus) and
Sidekiq 7's deploy marks, which the Web UI's metrics graphs draw (keys: ``kiq.keys``;
commands: ``kiq.store``'s metrics file).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Final

from kiq.api.base import config_or_default, int_or_zero
from kiq.config import Config
from kiq.keys import BUCKETS, LABELS
from kiq.keys import DEPLOY_LOCK_TTL as DEPLOY_LOCK_TTL  # re-exported by kiq.api
from kiq.keys import DEPLOY_MARK_TTL as DEPLOY_MARK_TTL


@dataclass(slots=True)
class JobMetrics:
    """One job class over a window: totals, and per-minute values (oldest minute first).

    ``processed`` counts every execution (failures too), ``total_ms`` only successful
    ones, so ``avg_ms`` is the mean time of a successful run (Sidekiq's definition).
    """

    klass: str
    processed: int
    failed: int
    total_ms: int
    series: dict[str, list[int]]  # "p", "f", "ms" -> one value per minute

    @classmethod
    def empty(cls, klass: str, minutes: int) -> JobMetrics:
        return cls(klass, 0, 0, 0, {m: [0] * minutes for m in ("p", "f", "ms")})

    @property
    def succeeded(self) -> int:
        return self.processed - self.failed

    @property
    def avg_ms(self) -> float:
        return self.total_ms / self.succeeded if self.succeeded > 0 else 0.0

    def add(self, metric: str, minute: int, value: int) -> None:
        if metric not in self.series:
            return
        self.series[metric][minute] += value
        if metric == "p":
            self.processed += value
        elif metric == "f":
            self.failed += value
        else:
            self.total_ms += value


@dataclass(frozen=True, slots=True)
class MetricsResult:
    """``Metrics.top_jobs``: the minutes read (oldest first) and each class, slowest total first."""

    minutes: list[datetime]
    jobs: list[JobMetrics]


@dataclass(frozen=True, slots=True)
class JobHistogram:
    """``Metrics.for_job``: one class's totals and execution-time histogram.

    ``counts[i]`` is how many successful runs took less than ``kiq.metrics.BUCKETS[i]``
    ms (the last: longer), labelled ``labels[i]``; ``per_minute`` has the same counts
    for each minute of ``minutes``.
    """

    klass: str
    minutes: list[datetime]
    metrics: JobMetrics
    labels: tuple[str, ...]
    counts: list[int]
    per_minute: list[list[int]]


class Metrics:
    """Read the per-class metrics the workers write (``kiq.metrics``, Sidekiq 7's keys).

    Windows are whole minutes ending with the current one, at most 480 (the keys live
    8 hours). Each call is one pipeline: an HGETALL per minute (plus a BITFIELD_RO per
    minute for ``for_job``).

    Example::

        result = Metrics().top_jobs(minutes=60)
        for job in result.jobs:
            job.klass, job.processed, job.failed, job.total_ms, job.avg_ms
        Metrics().for_job("HardJob", minutes=120).counts
    """

    MAX_MINUTES: Final = 480

    def __init__(self, config: Config | None = None, now: datetime | None = None) -> None:
        self.config = config_or_default(config)
        self.now = now or datetime.now(UTC)

    def _minutes(self, minutes: int) -> list[datetime]:
        if not 1 <= minutes <= self.MAX_MINUTES:
            raise ValueError(
                f"Metrics: minutes={minutes} is out of range; use 1..{self.MAX_MINUTES} "
                f"(metrics are kept 8 hours)"
            )
        return [self.now - timedelta(minutes=i) for i in range(minutes - 1, -1, -1)]

    def top_jobs(self, minutes: int = 60, class_filter: str | None = None) -> MetricsResult:
        """Every class seen in the window (optionally those containing ``class_filter``)."""
        times = self._minutes(minutes)
        jobs: dict[str, JobMetrics] = {}
        needle = (class_filter or "").lower()
        for index, fields in enumerate(self.config.store.metric_minutes(times)):
            for name, value in fields.items():
                klass, _, metric = name.decode(errors="replace").rpartition("|")
                if needle and needle not in klass.lower():
                    continue
                if klass not in jobs:
                    jobs[klass] = JobMetrics.empty(klass, minutes)
                jobs[klass].add(metric, index, int_or_zero(value))
        ranked = sorted(jobs.values(), key=lambda j: (-j.total_ms, -j.processed, j.klass))
        return MetricsResult(times, ranked)

    def for_job(self, klass: str, minutes: int = 60) -> JobHistogram:
        """One class: its totals per minute and the histogram of its run times."""
        times = self._minutes(minutes)
        replies = self.config.store.metric_job(klass, times, len(BUCKETS) + 1)
        metrics = JobMetrics.empty(klass, minutes)
        per_minute: list[list[int]] = []
        for index, (values, gram) in enumerate(replies):
            for metric, value in zip(("p", "f", "ms"), values, strict=True):
                metrics.add(metric, index, int_or_zero(value))
            per_minute.append([int_or_zero(n) for n in gram])
        counts = [sum(column) for column in zip(*per_minute, strict=True)]
        return JobHistogram(klass, times, metrics, LABELS, counts, per_minute)


@dataclass(frozen=True, slots=True)
class JobTotals:
    """One job class's cumulative counters (``kiq.metrics`` totals), for Prometheus.

    ``processed`` and ``failed`` are by queue (``processed`` counts failures too, as
    Sidekiq's ``p``); ``total_ms`` and ``buckets`` cover successful runs only, with
    ``buckets[i]`` the runs shorter than ``kiq.metrics.BUCKETS[i]`` ms (the last: longer).
    """

    klass: str
    processed: dict[str, int]
    failed: dict[str, int]
    total_ms: int
    buckets: list[int]


def job_totals(config: Config | None = None) -> list[JobTotals]:
    """Every job class with cumulative totals, by name (one ZRANGE, one pipelined HGETALL each).

    Only kiq processes write these (Ruby Sidekiq keeps its per-minute buckets only).
    """
    found: list[JobTotals] = []
    for klass, raw in config_or_default(config).store.totals():
        if not raw:
            continue  # expired since the ZRANGE; pruned at the next flush
        processed: dict[str, int] = {}
        failed: dict[str, int] = {}
        buckets = [0] * (len(BUCKETS) + 1)
        total_ms = 0
        for name, value in raw.items():
            kind, _, rest = name.decode(errors="replace").partition("|")
            if kind == "p":
                processed[rest] = int_or_zero(value)
            elif kind == "f":
                failed[rest] = int_or_zero(value)
            elif kind == "ms":
                total_ms = int_or_zero(value)
            elif kind == "h" and rest.isdigit() and int(rest) < len(buckets):
                buckets[int(rest)] = int_or_zero(value)
        found.append(JobTotals(klass, processed, failed, total_ms, buckets))
    return found


# -- Deploy marks (Sidekiq 7's Sidekiq::Deploy) ------------------------------------------


@dataclass(frozen=True, slots=True)
class DeployMark:
    """A deploy shown on the metrics graph: the minute it happened (UTC) and its label."""

    at: datetime
    label: str


def deploy_mark(label: str, at: datetime | None = None, config: Config | None = None) -> bool:
    """Record a deploy at ``at`` (default now), shown on the Web UI's metrics graphs.

    Sidekiq's ``Sidekiq::Deploy.mark!`` exactly (shared/sidekiq-wire.md §1.4), so
    Sidekiq's own Web UI shows kiq's marks too: the time is floored to the minute, so
    every process of a rollout marking the same deploy makes one mark; ``deploylock-<label>``
    (SET NX EX 60) keeps a label to one mark a minute. Returns False when the lock was
    already held (someone marked this label within the last minute).

    Example::

        kiq.api.deploy_mark("v1.2")          # from a deploy script, or `kiq mark v1.2`
    """
    if not label:
        raise ValueError("deploy_mark needs a label, such as a version or a git sha")
    config = config_or_default(config)
    whence = (at or datetime.now(UTC)).astimezone(UTC).replace(second=0, microsecond=0)
    stamp = whence.strftime("%Y-%m-%dT%H:%M:%SZ")  # Ruby's Time#iso8601 for UTC
    return config.store.deploy_mark(label, stamp, whence.date())


def deploy_marks(
    since: datetime, until: datetime | None = None, config: Config | None = None
) -> list[DeployMark]:
    """The deploy marks between ``since`` and ``until`` (default now), oldest first.

    One HGETALL of ``YYYYMMDD-marks`` per UTC day in the window, pipelined.
    """
    config = config_or_default(config)
    until = (until or datetime.now(UTC)).astimezone(UTC)
    # Marks live DEPLOY_MARK_TTL: days before that hold nothing to read.
    since = max(since.astimezone(UTC), until - timedelta(seconds=DEPLOY_MARK_TTL + 86400))
    days: list[date] = []
    day = since.date()
    while day <= until.date():
        days.append(day)
        day += timedelta(days=1)
    marks: list[DeployMark] = []
    for raw in config.store.deploy_marks(days):
        for stamp, label in raw.items():
            try:
                at = datetime.fromisoformat(stamp.decode().replace("Z", "+00:00"))
            except ValueError:
                continue
            if since - timedelta(minutes=1) < at <= until:
                marks.append(DeployMark(at.astimezone(UTC), label.decode(errors="replace")))
    return sorted(marks, key=lambda mark: mark.at)
