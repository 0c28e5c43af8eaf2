"""kiq.prometheus: a scrape, parsed with prometheus-client's own parser, reports what
Redis holds after real jobs ran in a real (in-process) kiq process (issue 8 §1)."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator

import pytest
import redis
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families

import kiq
from kiq import api, metrics
from kiq import payload as wire
from kiq.config import Config
from kiq.launcher import Launcher
from kiq.prometheus import KiqCollector, make_asgi_app, render, wants_prometheus
from kiq.store import TRANSIENT_ERRORS
from tests.support.inprocess import running
from tests.support.servers import free_port
from tests.support.wait import wait_until

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Starlette 1.x warns that it prefers httpx2 (see tests/web)
    from starlette.testclient import TestClient

RELEASE = threading.Event()


class PromOk(kiq.Job, name="PromOk"):
    def perform(self, n: int) -> None:
        pass


class PromBoom(kiq.Job, name="PromBoom", retry=3):
    def perform(self, n: int) -> None:
        raise ValueError(n)


class PromBlock(kiq.Job, name="PromBlock"):
    def perform(self) -> None:
        RELEASE.wait(10)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(config: Config, accept: str | None = None) -> Samples:
    """Every sample of one scrape as {(name, sorted labels): value}."""
    body, _ = render(config, accept)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, tuple(sorted(labels.items()))]


@pytest.fixture
def worker(config: Config) -> Iterator[Launcher]:
    """A kiq process in this process on queues ``default`` and ``low``."""
    config.queues = [("default", 0), ("low", 0)]
    with running(config) as launcher:
        yield launcher
        RELEASE.set()
    RELEASE.clear()


def flushed(r: redis.Redis, klass: str, field: str, count: int) -> bool:
    return int(r.hget(f"kiq|totals|{klass}", field) or 0) >= count


def test_per_class_counters_match_the_jobs_that_ran(config, r, worker):
    """kiq_job_executions_total and kiq_job_failures_total count runs per class and queue;
    kiq_processed_total / kiq_failed_total equal stat:processed / stat:failed."""
    for n in range(3):
        PromOk.perform_async(n)
    PromOk.set(queue="low").perform_async(9)
    PromBoom.perform_async(1)
    wait_until(
        lambda: flushed(r, "PromOk", "p|default", 3) and flushed(r, "PromBoom", "f|default", 1)
    )
    wait_until(lambda: flushed(r, "PromOk", "p|low", 1))
    wait_until(lambda: r.get("stat:processed") == "5")

    samples = scrape(config)

    assert (
        value(samples, "kiq_job_executions_total", **{"class": "PromOk", "queue": "default"}) == 3
    )
    assert value(samples, "kiq_job_executions_total", **{"class": "PromOk", "queue": "low"}) == 1
    assert (
        value(samples, "kiq_job_executions_total", **{"class": "PromBoom", "queue": "default"}) == 1
    )
    assert (
        value(samples, "kiq_job_failures_total", **{"class": "PromBoom", "queue": "default"}) == 1
    )
    assert ("kiq_job_failures_total", (("class", "PromOk"), ("queue", "default"))) not in samples
    assert value(samples, "kiq_processed_total") == int(r.get("stat:processed")) == 5
    assert value(samples, "kiq_failed_total") == int(r.get("stat:failed")) == 1


def test_duration_histogram_counts_successful_runs(config, r, worker):
    """kiq_job_duration_seconds has Sidekiq's bucket bounds in seconds, counts the
    successful runs only, and its +Inf bucket equals its count."""
    for n in range(4):
        PromOk.perform_async(n)
    wait_until(lambda: flushed(r, "PromOk", "p|default", 4))

    samples = scrape(config)

    assert value(samples, "kiq_job_duration_seconds_count", **{"class": "PromOk"}) == 4
    assert (
        value(samples, "kiq_job_duration_seconds_bucket", **{"class": "PromOk", "le": "+Inf"}) == 4
    )
    # a no-op job takes far less than the first bound, 20 ms
    assert (
        value(samples, "kiq_job_duration_seconds_bucket", **{"class": "PromOk", "le": "0.02"}) == 4
    )
    assert 0 <= value(samples, "kiq_job_duration_seconds_sum", **{"class": "PromOk"}) < 1
    les = {dict(labels)["le"] for name, labels in samples if name.endswith("_bucket")}
    assert len(les) == len(metrics.BUCKETS) + 1


def test_busy_and_concurrency_per_process(config, r, worker):
    """kiq_process_busy and kiq_process_concurrency come from each heartbeat, labelled by
    identity; kiq_busy and kiq_processes are the cluster totals."""
    PromBlock.perform_async()
    wait_until(lambda: r.hget(worker.identity, "busy") == "1")

    samples = scrape(config)

    labels = {"identity": worker.identity, "hostname": worker.identity.rsplit(":", 2)[0]}
    labels["tag"] = api.ProcessSet.get(worker.identity, config).tag or ""
    assert value(samples, "kiq_process_busy", **labels) == 1
    assert value(samples, "kiq_process_concurrency", **labels) == config.concurrency
    assert value(samples, "kiq_process_quiet", **labels) == 0
    assert value(samples, "kiq_process_rss_bytes", **labels) > 0
    assert value(samples, "kiq_busy") == 1
    assert value(samples, "kiq_processes") == 1


def test_queue_size_and_latency(config, r):
    """kiq_queue_size and kiq_queue_latency_seconds per queue (the oldest job's wait),
    kiq_enqueued their sum, kiq_queue_paused the pause flag."""
    PromOk.perform_async(1)
    old = wire.now() - 120
    r.lpush(
        "queue:low", wire.dumps({"class": "PromOk", "args": [], "jid": "j1", "enqueued_at": old})
    )
    r.sadd("queues", "low")
    api.Queue("low", config).pause()

    samples = scrape(config)

    assert value(samples, "kiq_queue_size", queue="default") == 1
    assert value(samples, "kiq_queue_size", queue="low") == 1
    assert value(samples, "kiq_queue_latency_seconds", queue="low") == pytest.approx(120, abs=5)
    assert value(samples, "kiq_queue_latency_seconds", queue="default") < 5
    assert value(samples, "kiq_queue_paused", queue="low") == 1
    assert value(samples, "kiq_queue_paused", queue="default") == 0
    assert value(samples, "kiq_enqueued") == 2


def test_set_sizes(config, r):
    """kiq_scheduled_size, kiq_retry_size and kiq_dead_size are the ZCARDs of the sets."""
    PromOk.perform_in(3600, 1)
    PromOk.perform_in(3600, 2)
    api.RetrySet(config).schedule(wire.now() + 60, {"class": "PromOk", "args": [], "jid": "r"})
    api.DeadSet(config).kill({"class": "PromOk", "args": [], "jid": "d"})

    samples = scrape(config)

    assert value(samples, "kiq_scheduled_size") == 2
    assert value(samples, "kiq_retry_size") == 1
    assert value(samples, "kiq_dead_size") == 1
    assert value(samples, "kiq_redis_up") == 1


def test_redis_down_reports_kiq_redis_up_zero():
    """A scrape while Redis is unreachable answers, with kiq_redis_up 0 and nothing else."""
    down = Config(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    try:
        samples = scrape(down)
    finally:
        down.close()

    assert samples == {("kiq_redis_up", ()): 0}


def test_openmetrics_when_asked(config):
    """render() answers OpenMetrics to a client that asks for it (Prometheus does)."""
    body, content_type = render(config, "application/openmetrics-text;version=1.0.0")

    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


def test_asgi_app_serves_the_scrape(config):
    """make_asgi_app() is a plain ASGI app: any framework can mount it."""
    PromOk.perform_async(1)
    client = TestClient(make_asgi_app(config))

    response = client.get("/")

    assert response.status_code == 200
    assert 'kiq_queue_size{queue="default"} 1.0' in response.text


def test_collector_reads_the_default_config(config):
    """A KiqCollector built without a Config reads kiq.get_default() at scrape time."""
    PromOk.perform_async(1)

    names = {family.name for family in KiqCollector().collect()}

    assert {"kiq_queue_size", "kiq_processed", "kiq_job_duration_seconds"} <= names


@pytest.mark.parametrize(
    ("accept", "wanted"),
    [
        (
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
            "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            True,
        ),
        ("text/plain", True),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", False),
        ("*/*", False),
        (None, False),
    ],
)
def test_scrapers_are_told_from_browsers(accept: str | None, wanted: bool) -> None:
    """Prometheus's Accept header (and text/plain) asks for the scrape; a browser's or
    curl's default does not."""
    assert wants_prometheus(accept) is wanted


# -- the cumulative totals behind the counters ---------------------------------------------


def test_totals_expire_and_are_bounded(config, r, monkeypatch):
    """Each class's totals hash expires TOTALS_TTL after its last flush, and only the
    TOTALS_MAX_CLASSES most recently run classes are kept in the index."""
    monkeypatch.setattr(metrics, "TOTALS_MAX_CLASSES", 2)
    recorder = metrics.Metrics()
    for klass in ("A", "B", "C"):
        recorder.record(klass, 5.0, "default")
        recorder.flush(config)

    assert r.zrange("kiq|totals", 0, -1) == ["B", "C"]
    assert 0 < r.ttl("kiq|totals|C") <= metrics.TOTALS_TTL
    assert [totals.klass for totals in api.job_totals(config)] == ["B", "C"]


def test_totals_survive_a_failed_flush(config, r):
    """Counts that could not be written (Redis error) go out with the next flush."""
    recorder = metrics.Metrics()
    recorder.record("A", None, "low")
    broken = Config(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(TRANSIENT_ERRORS):
            recorder.flush(broken)
    finally:
        broken.close()

    recorder.flush(config)

    (totals,) = api.job_totals(config)
    assert (totals.processed, totals.failed) == ({"low": 1}, {"low": 1})


# -- kiq web's /metrics --------------------------------------------------------------------


PROMETHEUS_ACCEPT = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"


def test_kiq_web_serves_the_scrape_to_prometheus(config):
    """The Web UI's /metrics answers Prometheus's Accept header with the scrape."""
    from kiq.web import create_app

    PromOk.perform_async(1)
    client = TestClient(create_app(config))

    response = client.get("/metrics", headers={"Accept": PROMETHEUS_ACCEPT})

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    families = {f.name for f in openmetrics_parser.text_string_to_metric_families(response.text)}
    assert {"kiq_queue_size", "kiq_processed", "kiq_busy"} <= families


def test_kiq_web_still_serves_the_metrics_page_to_browsers(config):
    """A browser (Accept text/html) or curl (*/*) gets the Metrics page as before."""
    from kiq.web import create_app

    client = TestClient(create_app(config))

    for accept in ("text/html,application/xhtml+xml,*/*;q=0.8", "*/*"):
        response = client.get("/metrics", headers={"Accept": accept})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
