"""kiq.metrics counts per job class in memory and flushes Sidekiq 7's keys; kiq.api.Metrics
reads them back (shared/sidekiq-wire.md §1.4)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

import kiq
from kiq.api import Metrics as MetricsQuery
from kiq.config import Config
from kiq.metrics import BUCKETS, TTL, Metrics, bucket_index, bucket_key, histogram_key

NOW = datetime(2024, 3, 1, 8, 5, 30, tzinfo=UTC)


class Sync:
    def perform(self) -> None:
        pass


class Async(kiq.Job, name="MetricsAsyncJob"):
    async def perform(self, fail: bool) -> None:
        await asyncio.sleep(0)
        if fail:
            raise ValueError("no")


def run(metrics: Metrics, payload: dict[str, Any], fail: bool = False) -> None:
    def call_next() -> None:
        if fail:
            raise ValueError("boom")

    metrics(Sync(), payload, "default", call_next)


def test_keys_are_sidekiq_7s(config: Config) -> None:
    """Minute hash j|%Y%m%d|%-H:%-M and histogram <Class>-%d-%H:%-M, both UTC."""
    assert bucket_key(config, NOW) == "j|20240301|8:5"
    assert histogram_key(config, "HardJob", NOW) == "HardJob-01-08:5"


def test_keys_take_the_key_prefix(redis_url: str) -> None:
    """A namespaced Config (redis-namespace) prefixes the metrics keys too."""
    config = Config(redis_url=redis_url, key_prefix="app:")
    assert bucket_key(config, NOW) == "app:j|20240301|8:5"


@pytest.mark.parametrize(("ms", "index"), [(0, 0), (19.9, 0), (20, 1), (334, 7), (10**9, 25)])
def test_bucket_is_the_first_bound_above(ms: float, index: int) -> None:
    """A time goes into the first bucket whose bound is greater than it."""
    assert bucket_index(ms) == index
    assert len(BUCKETS) == 25


def test_flush_writes_counts_and_ttl(config: Config, r: redis.Redis) -> None:
    """p counts every run, f failures, ms only successful runs; the hash lives 8 hours."""
    metrics = Metrics()
    run(metrics, {"class": "HardJob"})
    run(metrics, {"class": "HardJob"})
    with pytest.raises(ValueError, match="boom"):
        run(metrics, {"class": "HardJob"}, fail=True)
    metrics.flush(config, now=NOW)
    fields = r.hgetall("j|20240301|8:5")
    assert (fields["HardJob|p"], fields["HardJob|f"]) == ("3", "1")
    assert int(fields["HardJob|ms"]) >= 0
    assert 0 < r.ttl("j|20240301|8:5") <= TTL


def test_flush_writes_the_histogram(config: Config, r: redis.Redis) -> None:
    """Successful runs are counted per bucket in a u16 BITFIELD with a TTL."""
    metrics = Metrics()
    metrics.record("HardJob", 10)
    metrics.record("HardJob", 25)
    metrics.record("HardJob", 25)
    metrics.flush(config, now=NOW)
    key = "HardJob-01-08:5"
    assert r.bitfield_ro(key, "u16", "#0", items=[("u16", "#1"), ("u16", "#2")]) == [1, 2, 0]
    assert 0 < r.ttl(key) <= TTL


def test_flush_resets_the_counts(config: Config, r: redis.Redis) -> None:
    """A second flush with nothing new writes nothing."""
    metrics = Metrics()
    metrics.record("HardJob", 10)
    assert metrics.flush(config, now=NOW) == 2  # HardJob|p and HardJob|ms
    assert metrics.flush(config, now=NOW) == 0
    assert r.hget("j|20240301|8:5", "HardJob|p") == "1"


def test_flush_keeps_counts_when_redis_fails(config: Config, redis_url: str) -> None:
    """A failed flush puts the counts back for the next beat."""
    metrics = Metrics()
    metrics.record("HardJob", 10)
    broken = Config(redis_url="redis://127.0.0.1:1/0")
    with pytest.raises(Exception):  # noqa: B017, PT011  # whatever the client raises
        metrics.flush(broken, now=NOW)
    assert metrics.flush(config, now=NOW) == 2


def test_wrapped_class_is_counted(config: Config, r: redis.Redis) -> None:
    """ActiveJob payloads count under the wrapped class, as Sidekiq does."""
    metrics = Metrics()
    run(metrics, {"class": "Sidekiq::ActiveJob::Wrapper", "wrapped": "MailJob"})
    metrics.flush(config, now=NOW)
    assert r.hget("j|20240301|8:5", "MailJob|p") == "1"


def test_async_jobs_are_timed_by_their_coroutine(config: Config, r: redis.Redis) -> None:
    """For an async perform the middleware wraps the coroutine, so failures count too."""
    metrics = Metrics()
    for fail in (False, True):
        job = Async()
        metrics(job, {"class": "AsyncJob"}, "default", lambda: None)
        with pytest.raises(ValueError, match="no") if fail else contextlib.nullcontext():
            asyncio.run(job.perform(fail))
    metrics.flush(config, now=NOW)
    assert r.hget("j|20240301|8:5", "AsyncJob|p") == "2"
    assert r.hget("j|20240301|8:5", "AsyncJob|f") == "1"


def test_query_top_jobs_sums_the_window(config: Config) -> None:
    """top_jobs adds up every minute of the window, slowest total first."""
    metrics = Metrics()
    metrics.record("Slow", 900)
    metrics.record("Fast", 5)
    metrics.flush(config, now=NOW - timedelta(minutes=3))
    metrics.record("Fast", 15)
    metrics.record("Fast", None)
    metrics.flush(config, now=NOW)
    result = MetricsQuery(config, now=NOW).top_jobs(minutes=60)
    assert [job.klass for job in result.jobs] == ["Slow", "Fast"]
    fast = result.jobs[1]
    assert (fast.processed, fast.failed, fast.total_ms, fast.avg_ms) == (3, 1, 20, 10.0)
    assert len(result.minutes) == 60
    assert (fast.series["p"][-4], fast.series["p"][-1]) == (1, 2)


def test_query_window_leaves_older_minutes_out(config: Config) -> None:
    """A 1-minute window reads only the current minute."""
    metrics = Metrics()
    metrics.record("Old", 5)
    metrics.flush(config, now=NOW - timedelta(minutes=5))
    assert MetricsQuery(config, now=NOW).top_jobs(minutes=1).jobs == []


def test_query_filters_by_class(config: Config) -> None:
    """class_filter keeps the classes whose name contains it (any case)."""
    metrics = Metrics()
    metrics.record("Billing::Charge", 5)
    metrics.record("Mailer", 5)
    metrics.flush(config, now=NOW)
    jobs = MetricsQuery(config, now=NOW).top_jobs(60, class_filter="billing").jobs
    assert [job.klass for job in jobs] == ["Billing::Charge"]


def test_query_for_job_reads_the_histogram(config: Config) -> None:
    """for_job sums the per-minute histograms and totals of one class."""
    metrics = Metrics()
    metrics.record("HardJob", 10)
    metrics.flush(config, now=NOW - timedelta(minutes=1))
    metrics.record("HardJob", 10)
    metrics.record("HardJob", 400)
    metrics.flush(config, now=NOW)
    data = MetricsQuery(config, now=NOW).for_job("HardJob", minutes=60)
    assert data.counts[0] == 2
    assert data.counts[bucket_index(400)] == 1
    assert data.metrics.processed == 3
    assert data.labels[-1] == "Slow"


def test_query_refuses_windows_past_the_ttl(config: Config) -> None:
    """Metrics live 8 hours: a longer window is an error that says so."""
    with pytest.raises(ValueError, match="8 hours"):
        MetricsQuery(config).top_jobs(minutes=481)


@pytest.mark.slow
def test_worker_writes_metrics(start_worker: Any, config: Config) -> None:
    """A live kiq worker installs the middleware and flushes at its heartbeat."""
    from kiq.client import Client
    from tests.support.wait import wait_until

    worker = start_worker()
    Client(config).push({"class": "Record", "args": [1]})
    jobs = wait_until(lambda: MetricsQuery(config).top_jobs(5).jobs, timeout=15)
    assert jobs[0].klass == "Record"
    worker.stop()
