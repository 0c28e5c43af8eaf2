"""Prometheus exporter: the cluster's Sidekiq-style numbers, read from Redis per scrape.

Why from Redis and not from each worker: one scrape of one target (``kiq web``, or the
app that embeds the exporter) sees the whole cluster, Ruby Sidekiq processes sharing
the Redis included, and workers need no HTTP port and no multiprocess mode. Every
figure comes from ``kiq.api`` in a handful of pipelined round trips at scrape time
(``KiqCollector``); the per-class counters are the cumulative totals that each kiq
process adds at its heartbeat (``kiq.metrics``), so they are at most one
``heartbeat_interval`` behind.

Series (names follow Sidekiq's ``Stats``; ``kiq_`` prefix):

* ``kiq_processed_total``, ``kiq_failed_total``: ``stat:processed`` / ``stat:failed``.
* ``kiq_jobs_cancelled_total``, ``kiq_jobs_expired_total``: jobs cancelled, and jobs
  dropped unrun past their expiry (``kiq|stat|<fate>``, issue 18).
* ``kiq_job_executions_total{class,queue}``, ``kiq_job_failures_total{class,queue}``:
  runs (failures included, as Sidekiq's metrics count them) and failures, kiq jobs only.
* ``kiq_job_duration_seconds{class}``: histogram of successful runs, Sidekiq's buckets.
* ``kiq_queue_size{queue}``, ``kiq_queue_latency_seconds{queue}``, ``kiq_queue_paused{queue}``.
* ``kiq_enqueued``, ``kiq_scheduled_size``, ``kiq_retry_size``, ``kiq_dead_size``,
  ``kiq_processes``, ``kiq_busy``.
* ``kiq_process_busy``, ``kiq_process_concurrency``, ``kiq_process_rss_bytes``,
  ``kiq_process_quiet``, each ``{identity,hostname,tag}``.
* ``kiq_results_stored_total{status}``: final job results stored (kiq.results:
  succeeded, failed, dead), from ``kiq|results``.
* ``kiq_limiter_limit{name,kind}``, ``kiq_limiter_in_use{name,kind}``,
  ``kiq_limiter_held_total``, ``kiq_limiter_waited_total``,
  ``kiq_limiter_overlimit_total`` (each ``{name,kind}``; the 200 most recently used
  limiters), ``kiq_jobs_limited_total{class}`` (jobs rescheduled by a full limiter),
  ``kiq_unique_locks`` (issue 16).
* ``kiq_batches{state}``, ``kiq_workflows{state}``, ``kiq_batch_jobs_pending``: the newest
  1,000 batches and workflows by state (issue 17).
* ``kiq_redis_up``: 0 when Redis did not answer (then nothing else is reported).

Example::

    from kiq.prometheus import make_asgi_app, render

    starlette_app.mount("/metrics", make_asgi_app())          # any ASGI app

    @flask_app.get("/metrics")                                # anything else
    def metrics():
        body, content_type = render(accept=request.headers.get("Accept"))
        return body, 200, {"Content-Type": content_type}

    prometheus_client.REGISTRY.register(KiqCollector())       # next to your own series

``kiq web`` answers ``/metrics`` with this text when the client asks for it (Accept
``text/plain`` or ``application/openmetrics-text``, as Prometheus does) and with the
Metrics page otherwise. Needs the ``prometheus`` extra (``pip install 'kiq[prometheus]'``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Final

try:
    from prometheus_client import CollectorRegistry
    from prometheus_client import make_asgi_app as _make_asgi_app
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.exposition import choose_encoder
except ImportError as exc:  # pragma: no cover - exercised by hand without the extra
    raise ImportError(
        f"kiq.prometheus needs prometheus-client ({exc}): pip install 'kiq[prometheus]'"
    ) from exc

from kiq import api
from kiq.config import Config, get_default
from kiq.keys import BUCKETS
from kiq.store import TRANSIENT_ERRORS

PROCESS_LABELS: Final = ("identity", "hostname", "tag")
# Prometheus sends these; a browser asks for text/html, and curl for */*.
SCRAPER_TYPES: Final = ("application/openmetrics-text", "text/plain")


def wants_prometheus(accept: str | None) -> bool:
    """True when an Accept header asks for Prometheus text rather than a web page."""
    accept = (accept or "").lower()
    return "text/html" not in accept and any(kind in accept for kind in SCRAPER_TYPES)


class KiqCollector:
    """A prometheus_client collector that reads kiq's (and Sidekiq's) state from Redis.

    ``config`` defaults to ``kiq.get_default()`` at each scrape. Register it on any
    ``CollectorRegistry``; each ``collect`` is one scrape's worth of Redis reads.
    """

    def __init__(self, config: Config | None = None) -> None:
        self._config = config

    @property
    def config(self) -> Config:
        return self._config if self._config is not None else get_default()

    def describe(self) -> list[Metric]:
        return []  # no Redis reads at registration time (prometheus_client's auto_describe)

    def collect(self) -> Iterator[Metric]:
        config = self.config
        try:
            families = [*self._stats(config), *self._queues(config), *self._processes(config)]
            families += self._jobs(config)
            families.append(self._results(config))
            families += self._limits(config)
            families += self._batches(config)
        except TRANSIENT_ERRORS:
            yield GaugeMetricFamily("kiq_redis_up", "1 if Redis answered this scrape", 0)
            return
        yield GaugeMetricFamily("kiq_redis_up", "1 if Redis answered this scrape", 1)
        yield from families

    @staticmethod
    def _stats(config: Config) -> list[Metric]:
        stats = api.Stats(config)
        return [
            CounterMetricFamily(
                "kiq_processed", "Jobs processed (stat:processed)", stats.processed
            ),
            CounterMetricFamily("kiq_failed", "Jobs failed (stat:failed)", stats.failed),
            GaugeMetricFamily(
                "kiq_scheduled_size", "Jobs in the schedule set", stats.scheduled_size
            ),
            GaugeMetricFamily("kiq_retry_size", "Jobs in the retry set", stats.retry_size),
            GaugeMetricFamily("kiq_dead_size", "Jobs in the dead set", stats.dead_size),
            *(
                CounterMetricFamily(f"kiq_jobs_{fate}", f"Jobs {fate} (kiq|stat|{fate})", n)
                for fate, n in api.fate_counts(config).items()
            ),
        ]

    @staticmethod
    def _queues(config: Config) -> list[Metric]:
        size = GaugeMetricFamily("kiq_queue_size", "Jobs waiting in the queue", labels=["queue"])
        latency = GaugeMetricFamily(
            "kiq_queue_latency_seconds",
            "Seconds the oldest job in the queue has waited",
            labels=["queue"],
        )
        paused = GaugeMetricFamily("kiq_queue_paused", "1 if the queue is paused", labels=["queue"])
        total = 0
        for summary in api.queue_summaries(config):
            size.add_metric([summary.name], summary.size)
            latency.add_metric([summary.name], max(summary.latency, 0.0))
            paused.add_metric([summary.name], int(summary.paused))
            total += summary.size
        enqueued = GaugeMetricFamily("kiq_enqueued", "Jobs waiting in all queues", total)
        return [size, latency, paused, enqueued]

    @staticmethod
    def _processes(config: Config) -> list[Metric]:
        def family(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=list(PROCESS_LABELS))

        busy = family("kiq_process_busy", "Jobs running in the process (last heartbeat)")
        threads = family("kiq_process_concurrency", "Job slots of the process")
        rss = family("kiq_process_rss_bytes", "Resident memory of the process")
        quiet = family("kiq_process_quiet", "1 if the process is quiet or stopping")
        count = running = 0
        for process in api.ProcessSet(config):
            labels = [process.identity, process.hostname or "", process.tag or ""]
            busy.add_metric(labels, process.busy)
            threads.add_metric(labels, process.concurrency)
            rss.add_metric(labels, process.rss * 1024)
            quiet.add_metric(labels, int(process.stopping))
            count += 1
            running += process.busy
        return [
            busy,
            threads,
            rss,
            quiet,
            GaugeMetricFamily("kiq_processes", "Live processes (kiq and Sidekiq)", count),
            GaugeMetricFamily("kiq_busy", "Jobs running in all processes", running),
        ]

    @staticmethod
    def _limits(config: Config) -> list[Metric]:
        return _limiter_families(config)

    @staticmethod
    def _jobs(config: Config) -> list[Metric]:
        labels = ["class", "queue"]
        runs = CounterMetricFamily(
            "kiq_job_executions", "Job runs, failures included", labels=labels
        )
        failures = CounterMetricFamily("kiq_job_failures", "Job runs that failed", labels=labels)
        duration = HistogramMetricFamily(
            "kiq_job_duration_seconds", "Duration of successful job runs", labels=["class"]
        )
        bounds = [f"{bound / 1000:g}" for bound in BUCKETS] + ["+Inf"]
        for totals in api.job_totals(config):
            for queue, value in sorted(totals.processed.items()):
                runs.add_metric([totals.klass, queue], value)
            for queue, value in sorted(totals.failed.items()):
                failures.add_metric([totals.klass, queue], value)
            cumulative, buckets = 0, []
            for bound, count in zip(bounds, totals.buckets, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            duration.add_metric([totals.klass], buckets, totals.total_ms / 1000)
        return [runs, failures, duration]

    @staticmethod
    def _batches(config: Config) -> list[Metric]:
        counts = api.batch_counts(config)
        batches = GaugeMetricFamily(
            "kiq_batches", "Batches by state (the newest 1,000)", labels=["state"]
        )
        for state in ("running", "complete", "succeeded", "dead", "invalidated"):
            batches.add_metric([state], counts["batches"].get(state, 0))
        workflows = GaugeMetricFamily(
            "kiq_workflows", "Workflows by state (the newest 1,000)", labels=["state"]
        )
        for state in ("running", "succeeded", "dead"):
            workflows.add_metric([state], counts["workflows"].get(state, 0))
        pending = GaugeMetricFamily(
            "kiq_batch_jobs_pending",
            "Jobs not yet succeeded in those batches",
            counts["pending"]["jobs"],
        )
        return [batches, workflows, pending]

    @staticmethod
    def _results(config: Config) -> Metric:
        return _results_family(api.result_counts(config))


def _results_family(counts: dict[str, int]) -> Metric:
    family = CounterMetricFamily(
        "kiq_results_stored", "Final job results stored (kiq.results)", labels=["status"]
    )
    for status, count in sorted(counts.items()):
        family.add_metric([status], count)
    return family


def _limiter_families(config: Config) -> list[Metric]:
    """The limiters' series (issue 16): definition, use now, counts; unique locks."""
    labels = ["name", "kind"]
    limit = GaugeMetricFamily("kiq_limiter_limit", "The limiter's limit", labels=labels)
    in_use = GaugeMetricFamily(
        "kiq_limiter_in_use", "Holders, or calls in this window/bucket", labels=labels
    )
    held = CounterMetricFamily("kiq_limiter_held", "Calls the limiter let in", labels=labels)
    waited = CounterMetricFamily("kiq_limiter_waited", "Calls let in after waiting", labels=labels)
    over = CounterMetricFamily("kiq_limiter_overlimit", "Calls refused (OverLimit)", labels=labels)
    for info in api.limiters(config, minutes=0):
        values = [info.name, info.kind]
        limit.add_metric(values, info.limit)
        in_use.add_metric(values, info.in_use)
        held.add_metric(values, info.held)
        waited.add_metric(values, info.waited)
        over.add_metric(values, info.overlimit)
    limited = CounterMetricFamily(
        "kiq_jobs_limited", "Jobs rescheduled because a limiter was full", labels=["class"]
    )
    for klass, count in sorted(api.limited_jobs(config).items()):
        if klass != "total":
            limited.add_metric([klass], count)
    locks = GaugeMetricFamily(
        "kiq_unique_locks", "Unique-job locks held", api.unique_locks(config, count=0).total
    )
    return [limit, in_use, held, waited, over, limited, locks]


def registry(config: Config | None = None) -> CollectorRegistry:
    """A registry holding only a ``KiqCollector`` (no process or GC series of the scraper)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(KiqCollector(config))
    return reg


def render(config: Config | None = None, accept: str | None = None) -> tuple[bytes, str]:
    """One scrape: (body, content type), in the format ``accept`` asks for.

    For frameworks that are not ASGI (Flask, Django views): return the body with the
    content type. OpenMetrics when the Accept header asks for it, else the text format.
    """
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry(config)), content_type


def make_asgi_app(config: Config | None = None) -> Callable[..., Any]:
    """An ASGI app serving the scrape (prometheus_client's: negotiation, gzip)."""
    app: Callable[..., Any] = _make_asgi_app(registry(config))
    return app
