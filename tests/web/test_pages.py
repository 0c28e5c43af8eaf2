"""Every page renders what kiq.api reads from Redis, and pages in Redis."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import redis

from kiq import metrics as kiq_metrics
from kiq.api import DeadSet, RetrySet, ScheduledSet
from kiq.client import Client
from kiq.config import Config
from kiq.cron import CronJob
from kiq.payload import encode_backtrace
from kiq.recurring import save
from tests.web.conftest import WebClient, add_process, add_work, failed, payload


def test_dashboard_shows_the_counters(web: WebClient, config: Config, r: redis.Redis) -> None:
    """The summary bar shows processed, failed, enqueued, retries, scheduled and dead."""
    r.set("stat:processed", 1234)
    r.set("stat:failed", 56)
    Client(config).push({"class": "HardJob", "args": []})
    RetrySet(config).schedule(time.time() + 60, failed())
    page = web.get("/").text
    assert 'data-stat="processed" title="1,234"' in page
    assert 'data-stat="failed" title="56"' in page
    assert 'data-stat="enqueued" title="1"' in page
    assert 'data-stat="retries" title="1"' in page


def test_dashboard_history_covers_the_chosen_days(web: WebClient, r: redis.Redis) -> None:
    """?days=30 draws 30 days of stat:processed:<date> (the last one is today)."""
    today = datetime.now(UTC).date().isoformat()
    r.set(f"stat:processed:{today}", 42)
    page = web.get("/?days=30").text
    assert 'aria-current="true">1 month</a>' in page
    assert "Processed <strong>42</strong>" in page


def test_dashboard_shows_redis_facts(web: WebClient) -> None:
    """Version, uptime, connections, memory and peak memory come from INFO."""
    page = web.get("/").text
    for label in ("Version", "Uptime", "Connections", "Memory", "Peak memory"):
        assert f"<dt>{label}</dt>" in page


def test_head_root_is_a_cheap_health_check(web: WebClient) -> None:
    """HEAD / answers 200 without rendering the dashboard (Sidekiq's health check)."""
    response = web.http.head("/")
    assert response.status_code == 200
    assert response.text == ""


def test_stats_json_has_sidekiqs_keys(web: WebClient, r: redis.Redis) -> None:
    """/stats is Sidekiq's JSON: sidekiq.{processed, failed, busy, ...}, redis, time."""
    r.set("stat:processed", 7)
    data = web.get("/stats").json()
    assert data["sidekiq"]["processed"] == 7
    assert set(data["sidekiq"]) >= {"failed", "busy", "enqueued", "retries", "scheduled", "dead"}
    assert data["redis"]["redis_version"]
    assert data["server_utc_time"].endswith("UTC")


def test_stats_queues_json_maps_queue_to_size(web: WebClient, config: Config) -> None:
    """/stats/queues is {queue: size}."""
    for _ in range(3):
        Client(config).push({"class": "HardJob", "args": [], "queue": "low"})
    assert web.get("/stats/queues").json() == {"low": 3}


def test_busy_lists_processes_with_their_facts(web: WebClient, config: Config) -> None:
    """Identity, tag, labels, RSS, threads and busy of each live process."""
    identity = add_process(config, tag="billing", labels=["kiq", "blue"])
    page = web.get("/busy").text
    assert identity in page
    assert '<span class="tag">billing</span>' in page
    assert '<span class="label">blue</span>' in page
    assert "20 MB" in page


def test_busy_marks_quiet_processes(web: WebClient, config: Config, r: redis.Redis) -> None:
    """A process whose heartbeat says quiet is badged and offers Stop but not Quiet."""
    identity = add_process(config)
    r.hset(identity, "quiet", "true")
    page = web.get("/busy").text
    assert '<span class="badge warn">quiet</span>' in page
    assert 'value="quiet">Quiet</button>' not in page


def test_busy_hides_buttons_of_embedded_processes(web: WebClient, config: Config) -> None:
    """An embedded process ignores remote signals, so it gets no Quiet/Stop buttons."""
    add_process(config, embedded=True)
    page = web.get("/busy").text
    assert '<span class="badge">embedded</span>' in page
    assert 'name="identity"' not in page


def test_busy_lists_running_jobs_with_progress(
    web: WebClient, config: Config, r: redis.Redis
) -> None:
    """A running job shows its class, args and a progress bar from kiq|progress|<jid>."""
    identity = add_process(config)
    job = payload(jid="a" * 24, args=["report-7"])
    add_work(config, identity, job)
    r.hset(f"kiq|progress|{'a' * 24}", mapping={"percent": "40.0", "message": "rows 400/1000"})
    page = web.get("/busy").text
    assert "report-7" in page
    assert '<progress max="100" value="40.0"' in page
    assert "rows 400/1000" in page


def test_queues_lists_size_latency_and_paused(
    web: WebClient, config: Config, r: redis.Redis
) -> None:
    """Each queue with its size; a paused one carries the badge."""
    for queue in ("a", "b", "b"):
        Client(config).push({"class": "HardJob", "args": [], "queue": queue})
    r.sadd("kiq|paused", "b")
    page = web.get("/queues").text
    assert 'data-queue="a"' in page
    assert '<td class="num">2</td>' in page
    assert page.count('<span class="badge warn">paused</span>') == 1


def test_queue_page_pages_in_redis(web: WebClient, config: Config) -> None:
    """Page 2 of 25 shows the 26th to 50th newest jobs."""
    Client(config).push_bulk({"class": "HardJob", "args": [[i] for i in range(60)]})
    page = web.get("/queues/default?page=2").text
    assert "[34]" in page  # newest is 59: page 2 holds 34..10
    assert "[10]" in page
    assert "[35]" not in page
    assert "[9]" not in page


def test_queue_page_oldest_first(web: WebClient, config: Config) -> None:
    """?direction=asc lists the oldest job first."""
    Client(config).push_bulk({"class": "HardJob", "args": [[i] for i in range(30)]})
    page = web.get("/queues/default?direction=asc").text
    assert page.index("[0]") < page.index("[1]")
    assert "[29]" not in page


def test_retries_lists_soonest_first(web: WebClient, config: Config) -> None:
    """Retries are sorted by next retry time, ascending by default."""
    retries = RetrySet(config)
    retries.schedule(time.time() + 200, failed(args=["late"]))
    retries.schedule(time.time() + 100, failed(args=["soon"]))
    page = web.get("/retries").text
    assert page.index("soon") < page.index("late")


def test_retries_sort_descending(web: WebClient, config: Config) -> None:
    """?direction=desc reverses the order."""
    retries = RetrySet(config)
    retries.schedule(time.time() + 200, failed(args=["late"]))
    retries.schedule(time.time() + 100, failed(args=["soon"]))
    page = web.get("/retries?direction=desc").text
    assert page.index("late") < page.index("soon")


def test_dead_lists_newest_first(web: WebClient, config: Config) -> None:
    """The morgue shows the latest deaths first."""
    dead = DeadSet(config)
    dead.kill(failed(args=["dead-1"]), notify=False, now=time.time() - 100)
    dead.kill(failed(args=["dead-2"]), notify=False)
    page = web.get("/morgue").text
    assert page.index("dead-2") < page.index("dead-1")


def test_sorted_set_pages(web: WebClient, config: Config) -> None:
    """With 30 scheduled jobs, page 2 shows the last 5."""
    scheduled = ScheduledSet(config)
    for i in range(30):
        scheduled.schedule(time.time() + 100 + i, payload(args=[f"n{i:02d}"]))
    page = web.get("/scheduled?page=2").text
    assert "n25" in page
    assert "n24" not in page


def test_filter_shows_matching_entries(web: WebClient, config: Config) -> None:
    """?substr= keeps only entries whose JSON contains the text (ZSCAN MATCH)."""
    retries = RetrySet(config)
    retries.schedule(time.time() + 60, failed(args=["needle-1"]))
    retries.schedule(time.time() + 60, failed(args=["hay"]))
    page = web.get("/retries?substr=needle").text
    assert "needle-1" in page
    assert '"hay"' not in page


def test_job_detail_shows_fields_error_and_backtrace(web: WebClient, config: Config) -> None:
    """The detail page has every field, the error and the decoded backtrace."""
    job = failed(
        custom_field="xyz", error_backtrace=encode_backtrace(["app.py:1 in main", "lib.py:2"])
    )
    RetrySet(config).schedule(1_900_000_000.5, job)
    page = web.get(f"/retries/1900000000.5-{job['jid']}").text
    assert "custom_field" in page
    assert "<strong>ValueError</strong>: boom" in page
    assert "app.py:1 in main\nlib.py:2" in page


def test_job_detail_of_a_gone_job_is_404(web: WebClient) -> None:
    """A key whose job has moved answers 404 with an explanation."""
    response = web.get("/retries/1900000000.5-" + "f" * 24)
    assert response.status_code == 404
    assert "no longer here" in response.text


def test_job_arguments_are_escaped(web: WebClient, config: Config) -> None:
    """HTML in job data is shown as text, never run."""
    RetrySet(config).schedule(time.time() + 60, failed(args=["<script>alert(1)</script>"]))
    page = web.get("/retries").text
    assert "<script>alert(1)" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_metrics_lists_each_class(web: WebClient, config: Config) -> None:
    """Executions, failures and average time per class, as the workers flushed them."""
    recorder = kiq_metrics.Metrics()
    recorder.record("FastJob", 10)
    recorder.record("FastJob", 30)
    recorder.record("FastJob", None)
    recorder.flush(config)
    page = web.get("/metrics").text
    assert ">FastJob</a>" in page
    assert '<td class="num">3</td>' in page
    assert '<td class="num bad">1</td>' in page
    assert "20.0 ms" in page


def test_metrics_job_page_draws_the_histogram(web: WebClient, config: Config) -> None:
    """One class's page has a bar per histogram bucket, with its count."""
    recorder = kiq_metrics.Metrics()
    recorder.record("FastJob", 10)
    recorder.flush(config)
    page = web.get("/metrics/FastJob").text
    assert page.count('class="bar"') == 26
    assert "<title>20ms: 1</title>" in page


def test_recurring_lists_jobs(web: WebClient, config: Config) -> None:
    """Name, cron line and class of each recurring job."""
    save(config, CronJob(name="nightly", klass="CleanupJob", cron="0 2 * * *"))
    page = web.get("/recurring").text
    assert "nightly" in page
    assert "0 2 * * *" in page
    assert "CleanupJob" in page


def test_unknown_page_is_a_404_page(web: WebClient) -> None:
    """An unknown path renders the error page with the layout."""
    response = web.get("/nope")
    assert response.status_code == 404
    assert 'class="panel error-page"' in response.text


def test_static_assets_are_served(web: WebClient) -> None:
    """The CSS and JS ship in the package."""
    assert web.get("/static/kiq.css").status_code == 200
    assert "liveGraph" in web.get("/static/kiq.js").text
