"""kiq.api against real Redis: data written by kiq itself (client, RetryHandler,
Launcher heartbeat) and data in the exact shapes Ruby Sidekiq 6.4, 7.x and 8.x write
(shared/sidekiq-wire.md §1.2-1.3, §2, §8)."""

from __future__ import annotations

import base64
import json
import time
import zlib
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import redis

from kiq.api import (
    DeadSet,
    History,
    JobRecord,
    ProcessSet,
    Queue,
    RetrySet,
    ScheduledSet,
    Stats,
    WorkSet,
)
from kiq.client import Client
from kiq.config import Config
from kiq.errors import JobNotFound, KiqError, PayloadError
from kiq.retry import RetryHandler
from tests.support.rawredis import raw_redis
from tests.support.wait import wait_until

T0 = 1_700_000_000.25  # a fixed epoch for payload times (float seconds, exact in ms too)


# -- writing data the way Ruby Sidekiq does ------------------------------------------------


def ruby_json(data: Any) -> str:
    """Ruby's JSON.generate: compact separators, key order kept."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def stamp(version: str, seconds: float) -> float | int:
    """A payload time: float seconds in 6.4/7.x, integer milliseconds in 8.x."""
    return round(seconds * 1000) if version == "8" else seconds


def sidekiq_job(version: str, jid: str, at: float = T0, **extra: Any) -> dict[str, Any]:
    """An immediate job as Sidekiq's client writes it (wire doc §2.4 key order)."""
    job = {"retry": True, "queue": "default", "class": "HardJob", "args": [1, "x"], "jid": jid}
    job.update(extra)
    job.setdefault("created_at", stamp(version, at))
    job.setdefault("enqueued_at", stamp(version, at))
    return job


def mime_base64(data: bytes) -> str:
    """Ruby's Base64.encode64 (Sidekiq 6.4-7.2.0): a newline after every 60 characters."""
    text = base64.b64encode(data).decode()
    return "".join(text[i : i + 60] + "\n" for i in range(0, len(text), 60))


BACKTRACE = [f"/app/jobs/hard_job.rb:{n}:in `perform'" for n in range(1, 9)]


def sidekiq_retry(version: str, jid: str, **extra: Any) -> dict[str, Any]:
    """A retry-set member as Sidekiq's job_retry writes it after the first failure."""
    job = sidekiq_job(version, jid, backtrace=True)
    del job["enqueued_at"]
    job.update(
        error_message="undefined method `foo' for nil",
        error_class="NoMethodError",
        failed_at=stamp(version, T0 + 5),
        retry_count=0,
    )
    packed = zlib.compress(ruby_json(BACKTRACE).encode())
    job["error_backtrace"] = (
        mime_base64(packed) if version == "6.4" else base64.b64encode(packed).decode()
    )
    job.update(extra)
    return job


# ActiveJob through Rails' adapter (Sidekiq <= 7) and Sidekiq 8's own wrapper (§2.3).
ACTIVE_JOB: dict[str, Any] = {
    "retry": True,
    "queue": "mailers",
    "class": "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper",
    "wrapped": "SendInvoiceJob",
    "args": [
        {
            "job_class": "SendInvoiceJob",
            "job_id": "2b9a8c1e-6f0d-4c3e-9a57-0f1b2c3d4e5f",
            "provider_job_id": None,
            "queue_name": "mailers",
            "priority": None,
            "arguments": [
                42,
                {"_aj_globalid": "gid://app/User/7"},
                {"notify": True, "_aj_symbol_keys": ["notify"]},
            ],
            "executions": 0,
            "exception_executions": {},
            "locale": "en",
            "timezone": "UTC",
            "enqueued_at": "2023-11-14T22:13:20Z",
        }
    ],
    "jid": "aa0000000000000000000001",
    "created_at": T0,
    "enqueued_at": T0,
}
MAILER_JOB: dict[str, Any] = {
    "retry": True,
    "queue": "mailers",
    "class": "Sidekiq::ActiveJob::Wrapper",
    "wrapped": "ActionMailer::MailDeliveryJob",
    "args": [
        {
            "job_class": "ActionMailer::MailDeliveryJob",
            "job_id": "9c7e1a2b-0000-4000-8000-000000000001",
            "queue_name": "mailers",
            "arguments": [
                "UserMailer",
                "welcome",
                "deliver_now",
                {
                    "params": {"locale": "de", "_aj_symbol_keys": ["locale"]},
                    "args": [{"_aj_globalid": "gid://app/User/7"}],
                    "_aj_ruby2_keywords": ["params", "args"],
                },
            ],
        }
    ],
    "jid": "aa0000000000000000000002",
    "created_at": 1_700_000_000_250,
    "enqueued_at": 1_700_000_000_250,
}


def lpush(r: redis.Redis, queue: str, *jobs: dict[str, Any]) -> None:
    """Sidekiq's push: SADD queues + LPUSH queue:<q>."""
    r.sadd("queues", queue)
    r.lpush(f"queue:{queue}", *(ruby_json(job) for job in jobs))


def heartbeat(
    r: redis.Redis,
    identity: str,
    info: dict[str, Any],
    busy: int = 0,
    work: dict[str, Any] | None = None,
    work_key: str = "work",
    **fields: Any,
) -> None:
    """Sidekiq's heartbeat: SADD processes, HSET <identity> ..., busy hash, EXPIRE 60."""
    r.sadd("processes", identity)
    mapping: dict[Any, Any] = {"info": ruby_json(info), "busy": busy, "quiet": "false"}
    mapping.update({"beat": repr(T0 + 60), "rss": 123_456, "rtt_us": 250, **fields})
    r.hset(identity, mapping=mapping)
    r.expire(identity, 60)
    if work:
        r.hset(f"{identity}:{work_key}", mapping={k: ruby_json(v) for k, v in work.items()})
        r.expire(f"{identity}:{work_key}", 60)


INFO_64: dict[str, Any] = {
    "hostname": "web-1",
    "started_at": T0,
    "pid": 4321,
    "tag": "shop",
    "concurrency": 10,
    "queues": ["critical", "default"],
    "labels": ["reliable"],
    "identity": "web-1:4321:3f2a9c0d11be",
}
INFO_73: dict[str, Any] = {
    **INFO_64,
    "identity": "web-2:99:0123456789ab",
    "hostname": "web-2",
    "pid": 99,
    "concurrency": 5,
    "queues": ["default"],
    "weights": [{"default": 0}],
    "version": "7.3.10",
    "embedded": False,
}
INFO_812: dict[str, Any] = {
    key: value for key, value in INFO_73.items() if key not in ("concurrency", "weights")
} | {
    "identity": "web-3:7:aaaaaaaaaaaa",
    "hostname": "web-3",
    "pid": 7,
    "version": "8.1.7",
    "queues": ["stale"],
    "capsules": {
        "default": {"concurrency": 3, "mode": "weighted", "weights": {"critical": 3, "low": 1}},
        "single": {"concurrency": 1, "mode": "strict", "weights": {"serial": 0}},
    },
}


# -- writing data the way kiq does -----------------------------------------------------------


def push(config: Config, klass: str = "HardJob", queue: str = "default", **item: Any) -> str:
    item.setdefault("args", [1])
    jid = Client(config).push({"class": klass, "queue": queue, **item})
    assert jid is not None
    return jid


def fail(config: Config, jid_args: Any = 1, *, now: float = T0, **item: Any) -> None:
    """Push a job, take it off its queue and let kiq's RetryHandler record a failure."""
    push(config, args=[jid_args], backtrace=True, **item)
    queue = item.get("queue", "default")
    raw = raw_redis(config).rpop(config.keys.queue(queue))
    assert isinstance(raw, bytes)
    try:
        raise ValueError(f"boom {jid_args}")
    except ValueError as exc:
        RetryHandler(config).handle(raw, queue, exc, None, now=now)


# -- Stats and History ---------------------------------------------------------------------


def test_stats_reads_counters_and_set_sizes(config: Config, r: redis.Redis) -> None:
    """The fast pipeline: stat keys, ZCARD of the three sets and SCARD processes."""
    r.mset({"stat:processed": 10, "stat:failed": 3})
    r.zadd("schedule", {"a": 1, "b": 2})
    r.zadd("retry", {"c": 1})
    r.zadd("dead", {"d": 1, "e": 2, "f": 3})
    r.sadd("processes", "p1", "p2")

    stats = Stats(config)

    assert (stats.processed, stats.failed) == (10, 3)
    assert (stats.scheduled_size, stats.retry_size, stats.dead_size) == (2, 1, 3)
    assert stats.processes_size == 2


def test_stats_on_an_empty_database_are_zero(config: Config) -> None:
    """Missing keys read as 0, and an empty default queue has latency 0.0."""
    stats = Stats(config)

    assert (stats.processed, stats.failed, stats.enqueued, stats.workers_size) == (0, 0, 0, 0)
    assert stats.default_queue_latency == 0.0


def test_stats_default_queue_latency_is_age_of_oldest_job(config: Config, r: redis.Redis) -> None:
    """default_queue_latency: now minus the oldest default job's enqueued_at."""
    now = time.time()
    lpush(r, "default", sidekiq_job("6.4", "old", at=now - 30), sidekiq_job("6.4", "new", at=now))

    assert Stats(config).default_queue_latency == pytest.approx(30, abs=5)


def test_stats_queues_are_sorted_by_size_and_summed_as_enqueued(
    config: Config, r: redis.Redis
) -> None:
    """queues() maps each name in the queues set to its length, largest first."""
    lpush(r, "a", *(sidekiq_job("7", f"a{i}") for i in range(3)))
    lpush(r, "b", *(sidekiq_job("7", f"b{i}") for i in range(5)))
    r.sadd("queues", "empty")

    stats = Stats(config)

    assert list(stats.queues().items()) == [("b", 5), ("a", 3), ("empty", 0)]
    assert stats.enqueued == 8


def test_stats_workers_size_sums_busy_of_every_process(config: Config, r: redis.Redis) -> None:
    """workers_size is the sum of the busy fields in the heartbeat hashes."""
    heartbeat(r, INFO_64["identity"], INFO_64, busy=2)
    heartbeat(r, INFO_73["identity"], INFO_73, busy=3)

    assert Stats(config).workers_size == 5


def test_stats_reset_sets_both_counters_to_zero(config: Config, r: redis.Redis) -> None:
    """reset() MSETs stat:processed and stat:failed to 0."""
    r.mset({"stat:processed": 10, "stat:failed": 3})

    Stats(config).reset()

    assert r.mget("stat:processed", "stat:failed") == ["0", "0"]


def test_stats_reset_of_one_counter_leaves_the_other(config: Config, r: redis.Redis) -> None:
    """reset("failed") touches only stat:failed."""
    r.mset({"stat:processed": 10, "stat:failed": 3})

    stats = Stats(config)
    stats.reset("failed")

    assert r.mget("stat:processed", "stat:failed") == ["10", "0"]
    assert stats.failed == 0


def test_stats_reset_rejects_an_unknown_counter(config: Config) -> None:
    """reset() names the allowed counters when given another."""
    with pytest.raises(ValueError, match="'processed', 'failed'"):
        Stats(config).reset("busy")


def test_history_reads_daily_counters_newest_first(config: Config, r: redis.Redis) -> None:
    """History(days).processed()/failed(): one MGET, missing days read as 0."""
    r.mset(
        {
            "stat:processed:2024-03-01": 120,
            "stat:processed:2024-02-28": 7,
            "stat:failed:2024-02-29": 2,
        }
    )

    history = History(3, start_date=date(2024, 3, 1), config=config)

    assert list(history.processed().items()) == [
        ("2024-03-01", 120),
        ("2024-02-29", 0),
        ("2024-02-28", 7),
    ]
    assert history.failed() == {"2024-03-01": 0, "2024-02-29": 2, "2024-02-28": 0}


def test_history_starts_today_in_utc(config: Config) -> None:
    """Without start_date the first key is today's UTC date."""
    today = datetime.now(UTC).date().isoformat()

    assert next(iter(History(1, config=config).processed())) == today


@pytest.mark.parametrize("days", [0, 1826])
def test_history_rejects_days_out_of_range(config: Config, days: int) -> None:
    """days must be 1..1825, the life of the daily keys."""
    with pytest.raises(ValueError, match=r"1\.\.1825"):
        History(days, config=config)


# -- Queue -------------------------------------------------------------------------------------


def test_queue_all_lists_the_queues_set_by_name(config: Config, r: redis.Redis) -> None:
    """Queue.all() reads the queues set (SSCAN) and sorts the names."""
    r.sadd("queues", "low", "critical", "default")

    assert [q.name for q in Queue.all(config)] == ["critical", "default", "low"]


def test_queue_size_is_the_list_length(config: Config) -> None:
    """size() is LLEN queue:<name>."""
    push(config, queue="q")
    push(config, queue="q")

    assert Queue("q", config).size() == 2


@pytest.mark.parametrize("version", ["6.4", "7", "8"])
def test_queue_latency_reads_float_seconds_and_int_ms(
    config: Config, r: redis.Redis, version: str
) -> None:
    """latency(): now - the oldest job's enqueued_at, whichever unit it was written in."""
    lpush(r, "default", sidekiq_job(version, "old", at=T0), sidekiq_job(version, "new", at=T0 + 9))

    assert Queue("default", config).latency(now=T0 + 12.5) == pytest.approx(12.5)


def test_queue_latency_falls_back_to_created_at(config: Config, r: redis.Redis) -> None:
    """A job without enqueued_at is aged from created_at (Sidekiq 8)."""
    job = sidekiq_job("8", "j")
    del job["enqueued_at"]
    lpush(r, "default", job)

    assert Queue("default", config).latency(now=T0 + 2) == pytest.approx(2)


def test_queue_latency_of_an_empty_queue_is_zero(config: Config) -> None:
    """No jobs, no wait."""
    assert Queue("default", config).latency() == 0.0


def test_queue_latency_of_kiq_jobs(config: Config) -> None:
    """kiq's own float-second enqueued_at gives a small, non-negative latency."""
    push(config)

    assert 0 <= Queue("default", config).latency() < 5


def test_queue_iterates_newest_first_across_pages(config: Config) -> None:
    """Iteration yields every job, head (newest) first, 50 per LRANGE."""
    jids = [push(config, args=[i]) for i in range(120)]

    assert [job.jid for job in Queue("default", config)] == jids[::-1]


def test_queue_iteration_survives_deleting_each_job(config: Config) -> None:
    """Deleting while iterating visits every job once (pages shift by the deletions)."""
    for i in range(120):
        push(config, args=[i])
    queue = Queue("default", config)

    seen = [job.args[0] for job in queue if job.delete()]

    assert sorted(seen) == list(range(120))
    assert queue.size() == 0


def test_queue_page_returns_a_slice_newest_first(config: Config) -> None:
    """page(start, count): LRANGE from the head."""
    jids = [push(config, args=[i]) for i in range(10)]

    assert [j.jid for j in Queue("default", config).page(2, 3)] == jids[::-1][2:5]


def test_queue_page_reverse_returns_oldest_first(config: Config) -> None:
    """page(..., reverse=True) slices from the tail: oldest jobs first."""
    jids = [push(config, args=[i]) for i in range(10)]

    assert [j.jid for j in Queue("default", config).page(2, 3, reverse=True)] == jids[2:5]


def test_queue_page_pages_in_redis_over_100_000_jobs(config: Config) -> None:
    """A page of a 100,000-job queue is one LRANGE: the right slice, in milliseconds."""
    total = 100_000
    pipe = raw_redis(config).pipeline(transaction=False)
    pipe.sadd("queues", "big")
    for start in range(0, total, 10_000):
        pipe.lpush(
            "queue:big",
            *(
                ruby_json(sidekiq_job("8", f"{i:024x}", args=[i], queue="big"))
                for i in range(start, start + 10_000)
            ),
        )
    pipe.execute()
    queue = Queue("big", config)

    started = time.perf_counter()
    page = queue.page(50_000, 25)
    oldest = queue.page(0, 5, reverse=True)
    elapsed = time.perf_counter() - started

    assert [j.jid for j in page] == [f"{total - 1 - n:024x}" for n in range(50_000, 50_025)]
    assert [j.args[0] for j in oldest] == [0, 1, 2, 3, 4]
    assert elapsed < 0.5


def test_queue_find_job_by_jid(config: Config) -> None:
    """find_job returns the JobRecord with that jid, or None."""
    push(config)
    wanted = push(config, args=[2])
    queue = Queue("default", config)

    found = queue.find_job(wanted)

    assert found is not None
    assert found.args == [2]
    assert queue.find_job("0" * 24) is None


def test_queue_clear_drops_jobs_and_the_name(config: Config, r: redis.Redis) -> None:
    """clear(): UNLINK queue:<name> and SREM it from queues."""
    push(config, queue="q")
    push(config, queue="other")

    Queue("q", config).clear()

    assert not r.exists("queue:q")
    assert r.smembers("queues") == {"other"}


def test_queue_pause_and_unpause_use_kiqs_paused_set(config: Config, r: redis.Redis) -> None:
    """pause() adds the name to config.keys.paused, unpause() removes it."""
    queue = Queue("low", config)

    queue.pause()
    paused = queue.paused()
    members = r.smembers(config.keys.paused)
    queue.unpause()

    assert paused
    assert members == {"low"}
    assert not queue.paused()


def test_queue_uses_the_key_prefix(config: Config, r: redis.Redis) -> None:
    """With key_prefix (a namespaced Sidekiq 6.x app) every key carries the prefix."""
    namespaced = Config(redis_url=config.redis_url, key_prefix="myapp:")
    r.sadd("myapp:queues", "default")
    r.lpush("myapp:queue:default", ruby_json(sidekiq_job("6.4", "j")))
    try:
        assert [q.name for q in Queue.all(namespaced)] == ["default"]
        assert [j.jid for j in Queue("default", namespaced)] == ["j"]
        assert Stats(namespaced).enqueued == 1
    finally:
        namespaced.close()


# -- JobRecord ---------------------------------------------------------------------------------


def test_job_record_reads_a_kiq_job(config: Config) -> None:
    """A kiq-pushed job: class, jid, queue, args and UTC datetimes."""
    jid = push(config, queue="q", args=[1, "two"])

    (job,) = Queue("q", config)

    assert (job.klass, job.display_class, job.jid, job.queue) == ("HardJob", "HardJob", jid, "q")
    assert job.args == job.display_args == [1, "two"]
    assert job.enqueued_at is not None
    assert job.enqueued_at.tzinfo is UTC
    assert abs(job.enqueued_at - datetime.now(UTC)) < timedelta(seconds=5)
    assert job.created_at is not None
    assert job.created_at <= job.enqueued_at


@pytest.mark.parametrize("version", ["6.4", "7", "8"])
def test_job_record_times_are_type_aware(config: Config, version: str) -> None:
    """Float seconds (6.4/7.x) and integer ms (8.x) give the same datetimes."""
    job = JobRecord(ruby_json(sidekiq_job(version, "j", failed_at=stamp(version, T0 + 1))))

    expected = datetime.fromtimestamp(T0, UTC)
    assert job.enqueued_at == job.created_at == expected
    assert job.failed_at == expected + timedelta(seconds=1)
    assert job.retried_at is None
    assert job.latency(now=T0 + 3) == pytest.approx(3)


def test_job_record_created_at_falls_back_to_enqueued_at(config: Config) -> None:
    """Without created_at, created_at reads enqueued_at (Sidekiq)."""
    data = sidekiq_job("7", "j")
    del data["created_at"]

    assert JobRecord(ruby_json(data), config=config).created_at == datetime.fromtimestamp(T0, UTC)


def test_job_record_unwraps_active_job(config: Config) -> None:
    """ActiveJob wrappers show the wrapped class and its arguments minus _aj_ keys."""
    job = JobRecord(ruby_json(ACTIVE_JOB), config=config)

    assert job.klass == "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper"
    assert job.display_class == "SendInvoiceJob"
    assert job.display_args == [42, "gid://app/User/7", {"notify": True}]
    assert job.queue == "mailers"


def test_job_record_shows_action_mailer_as_mailer_and_method(config: Config) -> None:
    """Sidekiq 8's wrapper around MailDeliveryJob displays Mailer#method, params and args."""
    job = JobRecord(ruby_json(MAILER_JOB), config=config)

    assert job.display_class == "UserMailer#welcome"
    assert job.display_args == [{"locale": "de"}, ["gid://app/User/7"]]
    assert job.enqueued_at == datetime.fromtimestamp(T0, UTC)


def test_job_record_shows_the_old_delivery_job_arguments(config: Config) -> None:
    """ActionMailer::DeliveryJob (Rails 5) drops mailer, method and delivery method."""
    data = json.loads(ruby_json(ACTIVE_JOB))
    data["wrapped"] = data["args"][0]["job_class"] = "ActionMailer::DeliveryJob"
    data["args"][0]["arguments"] = ["UserMailer", "reset", "deliver_now", 7, "token"]

    job = JobRecord(ruby_json(data), config=config)

    assert job.display_class == "UserMailer#reset"
    assert job.display_args == [7, "token"]


def test_job_record_with_a_malformed_wrapper_shows_raw_args(config: Config) -> None:
    """An ActiveJob wrapper without the expected shape falls back to class and args."""
    job = JobRecord(ruby_json({**ACTIVE_JOB, "wrapped": None, "args": []}), config=config)

    assert job.display_class == ACTIVE_JOB["class"]
    assert job.display_args == []


def test_job_record_display_class_field_wins(config: Config) -> None:
    """An explicit display_class overrides class and wrapped."""
    job = JobRecord(ruby_json({**ACTIVE_JOB, "display_class": "Invoices"}), config=config)

    assert job.display_class == "Invoices"


def test_job_record_hides_encrypted_arguments(config: Config) -> None:
    """With encrypt (Sidekiq Enterprise) the last argument shows as [encrypted data]."""
    job = JobRecord(ruby_json(sidekiq_job("7", "j", args=[1, "c1pher"], encrypt=True)))

    assert job.display_args == [1, "[encrypted data]"]
    assert job.args == [1, "c1pher"]


def test_job_record_of_invalid_json_shows_the_raw_text(config: Config) -> None:
    """A member that is not JSON reads as an empty payload whose args hold the raw text."""
    job = JobRecord(b"{not json", "default", config)

    assert (job.valid, job.klass, job.jid) == (False, None, None)
    assert job.args == ["{not json"]


def test_job_record_getitem_reads_fields_and_none_when_missing(config: Config) -> None:
    """record[name] is the payload field; an absent one is None, like Sidekiq's []."""
    job = JobRecord(ruby_json(sidekiq_job("7", "j", tags=["vip"], bid="b1")), config=config)

    assert (job["retry"], job["nope"]) == (True, None)
    assert (job.tags, job.bid) == (["vip"], "b1")


@pytest.mark.parametrize("version", ["6.4", "7", "8"])
def test_job_record_decodes_mime_and_strict_backtraces(config: Config, version: str) -> None:
    """error_backtrace decodes 6.4's MIME Base64 (newline every 60) and strict Base64."""
    data = sidekiq_retry(version, "j")
    assert ("\n" in data["error_backtrace"]) == (version == "6.4")

    assert JobRecord(ruby_json(data), config=config).error_backtrace == BACKTRACE


def test_job_record_reads_an_old_plain_array_backtrace(config: Config) -> None:
    """A very old job stores the backtrace as a plain JSON array."""
    job = JobRecord(ruby_json(sidekiq_job("6.4", "j", error_backtrace=["a:1"])), config=config)

    assert job.error_backtrace == ["a:1"]


def test_job_record_reports_an_undecodable_backtrace(config: Config) -> None:
    """A backtrace that is not Base64(zlib(JSON)) raises PayloadError naming the job."""
    job = JobRecord(ruby_json(sidekiq_job("7", "j", error_backtrace="bm90IHpsaWI=")))

    with pytest.raises(PayloadError, match="job j: error_backtrace"):
        _ = job.error_backtrace


def test_job_record_delete_removes_exactly_that_job(config: Config) -> None:
    """delete() LREMs the stored bytes; the other jobs stay."""
    keep = push(config, args=[1])
    gone = push(config, args=[2])
    queue = Queue("default", config)
    record = queue.find_job(gone)
    assert record is not None

    assert record.delete()
    assert not record.delete()
    assert [j.jid for j in queue] == [keep]


# -- Sorted sets -----------------------------------------------------------------------------


def test_retry_set_reads_kiqs_retry_handler_entries(config: Config) -> None:
    """An entry written by kiq's RetryHandler has its error fields and a backtrace."""
    fail(config, 7)

    (entry,) = RetrySet(config)

    assert (entry.error_class, entry.error_message) == ("ValueError", "boom 7")
    assert entry.retry_count == 0
    assert entry.failed_at == datetime.fromtimestamp(T0, UTC)
    assert entry.error_backtrace is not None
    assert "in `fail'" in entry.error_backtrace[0]
    assert entry.at > entry.failed_at


@pytest.mark.parametrize("version", ["6.4", "7", "8"])
def test_retry_set_reads_sidekiq_retry_entries(
    config: Config, r: redis.Redis, version: str
) -> None:
    """A Sidekiq retry member of any version reads the same way."""
    r.zadd("retry", {ruby_json(sidekiq_retry(version, "r1")): T0 + 60})

    (entry,) = RetrySet(config)

    assert (entry.jid, entry.error_class, entry.retry_count) == ("r1", "NoMethodError", 0)
    assert entry.failed_at == datetime.fromtimestamp(T0 + 5, UTC)
    assert entry.at == datetime.fromtimestamp(T0 + 60, UTC)
    assert entry.error_backtrace == BACKTRACE


def test_sorted_set_iterates_highest_score_first_across_pages(config: Config) -> None:
    """Iteration yields every entry, latest first, 50 per ZRANGE."""
    for i in range(120):
        push(config, args=[i], at=T0 + 1_000_000 + i)

    assert [e.args[0] for e in ScheduledSet(config)] == list(range(119, -1, -1))


def test_sorted_set_iteration_survives_deleting_each_entry(config: Config) -> None:
    """Deleting while iterating visits every entry once."""
    for i in range(120):
        push(config, args=[i], at=T0 + 1_000_000 + i)
    scheduled = ScheduledSet(config)

    seen = [e.args[0] for e in scheduled if e.delete()]

    assert sorted(seen) == list(range(120))
    assert scheduled.size() == 0


def test_sorted_set_page_is_ascending_or_reversed(config: Config) -> None:
    """page(start, count) slices by score ascending; reverse=True descending."""
    for i in range(10):
        push(config, args=[i], at=T0 + 1_000_000 + i)
    scheduled = ScheduledSet(config)

    assert [e.args[0] for e in scheduled.page(2, 3)] == [2, 3, 4]
    assert [e.args[0] for e in scheduled.page(2, 3, reverse=True)] == [7, 6, 5]
    assert scheduled.page(0, 0) == []


def test_sorted_set_scan_matches_a_substring(config: Config) -> None:
    """scan(substr) yields the entries whose JSON contains it (ZSCAN MATCH)."""
    push(config, "ChargeJob", args=[1], at=T0 + 1e6)
    push(config, "RefundJob", args=[2], at=T0 + 1e6)

    assert [e.klass for e in ScheduledSet(config).scan("Charge")] == ["ChargeJob"]


def test_sorted_set_fetch_by_score_and_jid(config: Config) -> None:
    """fetch(score) returns every entry at that score; with jid, only that job."""
    a = push(config, args=[1], at=T0 + 1e6)
    b = push(config, args=[2], at=T0 + 1e6)
    push(config, args=[3], at=T0 + 2e6)
    scheduled = ScheduledSet(config)

    assert sorted(e.jid or "" for e in scheduled.fetch(T0 + 1e6)) == sorted([a, b])
    assert [e.jid for e in scheduled.fetch(T0 + 1e6, b)] == [b]
    assert len(scheduled.fetch((T0, T0 + 3e6))) == 3


def test_sorted_set_find_job(config: Config) -> None:
    """find_job(jid) returns the entry or None."""
    push(config, args=[1], at=T0 + 1e6)
    jid = push(config, args=[2], at=T0 + 1e6)
    scheduled = ScheduledSet(config)

    found = scheduled.find_job(jid)

    assert found is not None
    assert found.args == [2]
    assert scheduled.find_job("f" * 24) is None


def test_sorted_entry_id_is_score_and_jid(config: Config) -> None:
    """id is Sidekiq's "<score>|<jid>"."""
    jid = push(config, at=T0 + 1e6)

    (entry,) = ScheduledSet(config)

    assert entry.id == f"{T0 + 1e6}|{jid}"


def test_sorted_entry_delete(config: Config) -> None:
    """delete() ZREMs the member; a second delete finds nothing."""
    push(config, at=T0 + 1e6)
    (entry,) = ScheduledSet(config)

    assert entry.delete()
    assert not entry.delete()
    assert ScheduledSet(config).size() == 0


def test_retry_pushes_the_job_with_retry_count_lowered(config: Config) -> None:
    """retry(): out of the set, onto its queue, retry_count - 1 (manual retries are free)."""
    fail(config, 1, queue="q")
    (entry,) = RetrySet(config)

    entry.retry()

    (job,) = Queue("q", config)
    assert RetrySet(config).size() == 0
    assert (job.jid, job.retry_count, job.error_class) == (entry.jid, -1, "ValueError")
    assert job.enqueued_at is not None


def test_retry_of_one_of_two_entries_sharing_a_score(config: Config, r: redis.Redis) -> None:
    """Entries found by score + jid: retrying one leaves the other untouched."""
    r.zadd(
        "retry",
        {ruby_json(sidekiq_retry("6.4", "a1")): T0, ruby_json(sidekiq_retry("6.4", "b2")): T0},
    )
    entry = next(e for e in RetrySet(config) if e.jid == "b2")

    entry.retry()

    assert [e.jid for e in RetrySet(config)] == ["a1"]
    assert [j.jid for j in Queue("default", config)] == ["b2"]


def test_retry_of_an_entry_gone_meanwhile_raises_job_not_found(config: Config) -> None:
    """An entry someone else moved is not pushed a second time."""
    fail(config)
    (entry,) = RetrySet(config)
    RetrySet(config).clear()

    with pytest.raises(JobNotFound, match=str(entry.jid)):
        entry.retry()
    assert Queue("default", config).size() == 0


def test_retry_of_an_unreadable_entry_leaves_it_in_place(config: Config, r: redis.Redis) -> None:
    """A member that is not a job cannot be retried and is not removed."""
    r.zadd("dead", {"{not json": T0})
    (entry,) = DeadSet(config)

    with pytest.raises(PayloadError):
        entry.retry()
    assert r.zcard("dead") == 1


def refuse_pushes(config: Config) -> None:
    """A client middleware that fails every push, as a Redis outage would."""

    def refuse(job: str, payload: Any, queue: str, call_next: Any) -> Any:
        raise ConnectionError("redis went away")

    config.client_middleware.add(refuse)


def test_retry_puts_the_entry_back_when_the_push_fails(config: Config, r: redis.Redis) -> None:
    """A job is never lost: a failed push re-adds the member at its old score."""
    member = ruby_json(sidekiq_retry("7", "r1"))
    r.zadd("retry", {member: T0})
    (entry,) = RetrySet(config)
    refuse_pushes(config)

    with pytest.raises(ConnectionError):
        entry.retry()

    assert r.zrange("retry", 0, -1, withscores=True) == [(member, T0)]


def test_retry_all_puts_the_entry_back_when_a_push_fails(config: Config, r: redis.Redis) -> None:
    """retry_all stops at a failed push and leaves that member in the set."""
    r.zadd("retry", {ruby_json(sidekiq_retry("7", "r1")): T0})
    refuse_pushes(config)

    with pytest.raises(ConnectionError):
        RetrySet(config).retry_all()

    assert r.zcard("retry") == 1


def test_delete_by_jid_removes_only_that_job(config: Config, r: redis.Redis) -> None:
    """delete_by_jid(score, jid), the Web UI's key: the sibling at that score stays."""
    r.zadd("dead", {ruby_json(sidekiq_job("7", "a")): T0, ruby_json(sidekiq_job("7", "b")): T0})
    dead = DeadSet(config)

    assert dead.delete_by_jid(T0, "b")
    assert not dead.delete_by_jid(T0, "b")
    assert [e.jid for e in dead] == ["a"]


def test_add_to_queue_pushes_the_job_unchanged(config: Config) -> None:
    """add_to_queue(): a scheduled job goes to its queue now, same jid and args."""
    jid = push(config, queue="q", args=[5], at=T0 + 1e6)
    (entry,) = ScheduledSet(config)

    entry.add_to_queue()

    (job,) = Queue("q", config)
    assert (job.jid, job.args, job.retry_count) == (jid, [5], None)
    assert ScheduledSet(config).size() == 0


def test_kill_moves_the_entry_to_the_dead_set(config: Config) -> None:
    """kill(): out of retry, into dead, and the death handlers hear of it."""
    deaths: list[tuple[dict[str, Any], BaseException]] = []
    config.death_handlers.append(lambda job, exc: deaths.append((job, exc)))
    fail(config, 3)
    (entry,) = RetrySet(config)

    entry.kill()

    (dead,) = DeadSet(config)
    assert RetrySet(config).size() == 0
    assert dead.jid == entry.jid
    assert [(job["jid"], str(exc)) for job, exc in deaths] == [(entry.jid, "Job killed by API")]


def test_reschedule_leaves_exactly_one_member_with_the_new_score(
    config: Config, r: redis.Redis
) -> None:
    """reschedule(at) re-scores the same member; no duplicate appears."""
    r.zadd("retry", {ruby_json(sidekiq_retry("8", "r1")): T0})
    (entry,) = RetrySet(config)
    new_at = datetime.fromtimestamp(T0 + 3600, UTC)

    entry.reschedule(new_at)

    assert r.zrange("retry", 0, -1, withscores=True) == [
        (ruby_json(sidekiq_retry("8", "r1")), T0 + 3600)
    ]
    assert entry.at == new_at


def test_reschedule_of_an_entry_gone_meanwhile_does_not_recreate_it(
    config: Config, r: redis.Redis
) -> None:
    """ZADD XX: a job the poller already took is not put back."""
    push(config, at=T0 + 1e6)
    (entry,) = ScheduledSet(config)
    entry.delete()

    with pytest.raises(JobNotFound):
        entry.reschedule(T0 + 2e6)
    assert r.zcard("schedule") == 0


def test_reschedule_rejects_a_naive_datetime(config: Config) -> None:
    """A datetime without a zone is ambiguous; the error says what to pass."""
    push(config, at=T0 + 1e6)
    (entry,) = ScheduledSet(config)

    with pytest.raises(ValueError, match=r"datetime\.now"):
        entry.reschedule(datetime(2030, 1, 1))


def test_retry_all_empties_the_set_and_requeues_with_lower_retry_count(config: Config) -> None:
    """retry_all(): every entry to its queue, retry_count - 1 each."""
    for i in range(5):
        fail(config, i)

    moved = RetrySet(config).retry_all()

    jobs = list(Queue("default", config))
    assert moved == 5
    assert RetrySet(config).size() == 0
    assert sorted(j.args[0] for j in jobs) == [0, 1, 2, 3, 4]
    assert {j.retry_count for j in jobs} == {-1}


def test_retry_all_keeps_members_that_are_not_jobs(config: Config, r: redis.Redis) -> None:
    """An unreadable member is put back, the rest are retried."""
    r.zadd("dead", {"{not json": T0, ruby_json(sidekiq_retry("7", "ok")): T0 + 1})

    assert DeadSet(config).retry_all() == 1
    assert r.zrange("dead", 0, -1) == ["{not json"]
    assert [j.jid for j in Queue("default", config)] == ["ok"]


def test_kill_all_moves_every_entry_to_the_dead_set(config: Config) -> None:
    """kill_all(): the retry set empties into dead, without death handler calls."""
    deaths: list[object] = []
    config.death_handlers.append(lambda job, exc: deaths.append(job))
    for i in range(130):
        push(config, args=[i], at=T0 + 1e6 + i)

    assert ScheduledSet(config).kill_all() == 130

    assert ScheduledSet(config).size() == 0
    assert DeadSet(config).size() == 130
    assert deaths == []


@pytest.mark.parametrize("action", ["kill", "retry"])
def test_a_move_that_fails_in_redis_leaves_the_entry_where_it_was(
    config: Config, r: redis.Redis, action: str
) -> None:
    """Removal and add are one step: when the target key holds another type (WRONGTYPE
    mid-move) the entry is still in its set, not lost between the two."""
    member = ruby_json(sidekiq_retry("7", "r1"))
    r.zadd("retry", {member: T0})
    r.set("dead" if action == "kill" else "queue:default", "not a sorted set or list")
    (entry,) = RetrySet(config)

    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        getattr(entry, action)()

    assert r.zrange("retry", 0, -1, withscores=True) == [(member, T0)]


def test_kill_all_trims_the_dead_set_once(config: Config) -> None:
    """The dead set is held to dead_max_jobs after a kill_all."""
    config.dead_max_jobs = 4
    for i in range(10):
        fail(config, i)

    RetrySet(config).kill_all()

    assert DeadSet(config).size() == 4


def test_dead_set_kill_trims_by_count(config: Config) -> None:
    """kill() keeps only the newest dead_max_jobs entries."""
    config.dead_max_jobs = 3
    dead = DeadSet(config)

    for i in range(5):
        dead.kill(sidekiq_job("7", f"j{i}"), now=T0 + i)

    assert [e.jid for e in dead] == ["j4", "j3", "j2"]


def test_dead_set_kill_trims_by_age(config: Config, r: redis.Redis) -> None:
    """kill() drops entries that died more than dead_timeout seconds ago."""
    config.dead_timeout = 100.0
    r.zadd("dead", {ruby_json(sidekiq_job("6.4", "ancient")): T0 - 101, "young": T0 - 99})

    DeadSet(config).kill(ruby_json(sidekiq_job("6.4", "new")), now=T0)

    assert r.zrange("dead", 0, -1) == ["young", ruby_json(sidekiq_job("6.4", "new"))]


def test_dead_set_kill_notifies_death_handlers(config: Config) -> None:
    """kill() calls each death handler with the payload and the exception given."""
    seen: list[tuple[str, BaseException]] = []
    config.death_handlers.append(lambda job, exc: seen.append((job["jid"], exc)))
    error = RuntimeError("gave up")

    DeadSet(config).kill(ruby_json(sidekiq_job("7", "j")), exc=error)
    DeadSet(config).kill(sidekiq_job("7", "quiet"), notify=False)

    assert seen == [("j", error)]
    assert DeadSet(config).size() == 2


def test_dead_set_kill_survives_a_failing_death_handler(config: Config) -> None:
    """A handler that raises is logged; the job is still dead."""

    def broken(job: dict[str, Any], exc: BaseException) -> None:
        raise OSError("handler down")

    config.death_handlers.append(broken)

    DeadSet(config).kill(sidekiq_job("7", "j"))

    assert DeadSet(config).size() == 1


def test_dead_set_page_reverse_shows_newest_deaths_first(config: Config) -> None:
    """The morgue is paged with reverse=True."""
    dead = DeadSet(config)
    for i in range(4):
        dead.kill(sidekiq_job("7", f"j{i}"), now=time.time() + i)

    assert [e.jid for e in dead.page(0, 2, reverse=True)] == ["j3", "j2"]


def test_job_set_schedule_adds_a_payload(config: Config) -> None:
    """schedule(at, payload) ZADDs the encoded job at that time."""
    ScheduledSet(config).schedule(T0 + 10, sidekiq_job("7", "s"))

    (entry,) = ScheduledSet(config)
    assert (entry.jid, entry.score) == ("s", T0 + 10)


@pytest.mark.parametrize("method", ["clear", "delete_all"])
def test_clear_and_delete_all_empty_the_set(config: Config, method: str) -> None:
    """clear()/delete_all() UNLINK the whole set."""
    for i in range(3):
        fail(config, i)

    getattr(RetrySet(config), method)()

    assert RetrySet(config).size() == 0


# -- Processes ----------------------------------------------------------------------------------


def test_process_set_reads_a_sidekiq_6_4_process(config: Config, r: redis.Redis) -> None:
    """6.4: concurrency and queues in info; fields typed; quiet read as stopping."""
    heartbeat(r, INFO_64["identity"], INFO_64, busy=2, quiet="true")

    (process,) = ProcessSet(config)

    assert (process.identity, process.hostname, process.pid) == (INFO_64["identity"], "web-1", 4321)
    assert (process.tag, process.labels, process.version) == ("shop", ["reliable"], None)
    assert (process.concurrency, process.queues, process.busy) == (10, ["critical", "default"], 2)
    assert (process.rss, process.rtt_us, process.stopping, process.embedded) == (
        123_456,
        250,
        True,
        False,
    )
    assert process.started_at == datetime.fromtimestamp(T0, UTC)
    assert process.beat == datetime.fromtimestamp(T0 + 60, UTC)
    assert process["busy"] == "2"
    assert process["tag"] == "shop"


def test_process_set_reads_a_sidekiq_7_process(config: Config, r: redis.Redis) -> None:
    """7.x: weights and version in info."""
    heartbeat(r, INFO_73["identity"], INFO_73)

    (process,) = ProcessSet(config)

    assert (process.concurrency, process.queues, process.weights) == (
        5,
        ["default"],
        [{"default": 0}],
    )
    assert (process.version, process.stopping) == ("7.3.10", False)


def test_process_set_reads_a_sidekiq_8_1_2_process(config: Config, r: redis.Redis) -> None:
    """8.1.2+: concurrency is a hash field; queues and weights come from capsules."""
    heartbeat(r, INFO_812["identity"], INFO_812, concurrency=4)

    (process,) = ProcessSet(config)

    assert process.concurrency == 4
    assert process.queues == ["critical", "low", "serial"]
    assert process.weights == [{"critical": 3, "low": 1}, {"serial": 0}]


def test_process_set_reads_kiqs_own_heartbeat(config: Config) -> None:
    """A kiq Launcher's beat (info, concurrency field, both busy hashes) reads back."""
    from kiq.launcher import Launcher

    launcher = Launcher(config)
    launcher.state.work["t1"] = ("default", ruby_json(sidekiq_job("7", "busyjob")).encode(), 1)
    launcher.beat()

    (process,) = ProcessSet(config)
    works = list(WorkSet(config))

    assert (process.identity, process.concurrency, process.busy) == (launcher.identity, 2, 1)
    assert process.queues == ["default"]
    assert "kiq" in process.labels
    assert [(pid, tid, w.payload["jid"]) for pid, tid, w in works] == [
        (launcher.identity, "t1", "busyjob")
    ]


def test_process_set_prunes_a_process_whose_hash_expired(config: Config, r: redis.Redis) -> None:
    """A member of processes without its hash (expired heartbeat) is SREMed on build."""
    heartbeat(r, INFO_64["identity"], INFO_64)
    heartbeat(r, INFO_73["identity"], INFO_73)
    r.pexpire(INFO_73["identity"], 1)
    wait_until(lambda: not r.exists(INFO_73["identity"]), timeout=2.0)

    processes = ProcessSet(config)

    assert [p.identity for p in processes] == [INFO_64["identity"]]
    assert r.smembers("processes") == {INFO_64["identity"]}
    assert processes.size() == 1


def test_process_set_totals(config: Config, r: redis.Redis) -> None:
    """total_concurrency and total_rss add up every live process."""
    heartbeat(r, INFO_64["identity"], INFO_64, rss=1000)
    heartbeat(r, INFO_812["identity"], INFO_812, concurrency=4, rss=500)

    processes = ProcessSet(config)

    assert (processes.size(), processes.total_concurrency(), processes.total_rss()) == (2, 14, 1500)


def test_process_set_leader(config: Config, r: redis.Redis) -> None:
    """leader() reads Sidekiq Enterprise's dear-leader key, None when unset."""
    processes = ProcessSet(config)
    assert processes.leader() is None

    r.set("dear-leader", INFO_64["identity"])

    assert processes.leader() == INFO_64["identity"]


def test_process_set_get_by_identity(config: Config, r: redis.Redis) -> None:
    """get(identity) returns that process, None for an unknown one."""
    heartbeat(r, INFO_64["identity"], INFO_64)

    process = ProcessSet.get(INFO_64["identity"], config)

    assert process is not None
    assert process.pid == 4321
    assert ProcessSet.get("nobody:1:0", config) is None


def test_process_set_skips_unreadable_info(config: Config, r: redis.Redis) -> None:
    """A hash whose info is not a JSON object is skipped, not fatal."""
    r.sadd("processes", "bad:1:0")
    r.hset("bad:1:0", mapping={"info": "{oops", "busy": 0})

    assert list(ProcessSet(config)) == []


@pytest.mark.parametrize(
    ("method", "signal"), [("quiet", "TSTP"), ("stop", "TERM"), ("dump_threads", "TTIN")]
)
def test_process_signals_are_pushed_with_a_ttl(
    config: Config, r: redis.Redis, method: str, signal: str
) -> None:
    """quiet/stop/dump_threads LPUSH the signal to <identity>-signals, EXPIRE 60."""
    heartbeat(r, INFO_73["identity"], INFO_73)
    (process,) = ProcessSet(config)

    getattr(process, method)()

    key = f"{INFO_73['identity']}-signals"
    assert r.lrange(key, 0, -1) == [signal]
    assert 0 < r.ttl(key) <= 60


def test_embedded_process_refuses_signals(config: Config, r: redis.Redis) -> None:
    """An embedded process ignores remote signals, so the API refuses to send them."""
    heartbeat(r, INFO_73["identity"], {**INFO_73, "embedded": True})
    (process,) = ProcessSet(config)

    with pytest.raises(KiqError, match="embedded"):
        process.stop()
    assert not r.exists(f"{INFO_73['identity']}-signals")


# -- Work in progress -----------------------------------------------------------------------------


def test_work_set_reads_work_and_workers_hashes_sorted_by_run_at(
    config: Config, r: redis.Redis
) -> None:
    """6.4 writes <id>:workers, 7+ <id>:work; payload a JSON string or an object."""
    job_64 = sidekiq_job("6.4", "j64")
    job_8 = sidekiq_job("8", "j8", queue="critical")
    heartbeat(
        r,
        INFO_64["identity"],
        INFO_64,
        busy=1,
        work={
            "owt8pxuqk": {"queue": "default", "payload": ruby_json(job_64), "run_at": 1_700_000_300}
        },
        work_key="workers",
    )
    heartbeat(
        r,
        INFO_812["identity"],
        INFO_812,
        busy=1,
        work={"abc": {"queue": "critical", "payload": job_8, "run_at": 1_700_000_100}},
    )

    works = list(WorkSet(config))

    assert [(pid, tid) for pid, tid, _ in works] == [
        (INFO_812["identity"], "abc"),
        (INFO_64["identity"], "owt8pxuqk"),
    ]
    first = works[0][2]
    assert (first.queue, first.payload["jid"]) == ("critical", "j8")
    assert first.run_at == datetime.fromtimestamp(1_700_000_100, UTC)
    assert first.job.enqueued_at == datetime.fromtimestamp(T0, UTC)
    assert works[1][2].job.jid == "j64"


def test_work_set_prefers_work_over_workers(config: Config, r: redis.Redis) -> None:
    """kiq writes both hashes; each running job is listed once."""
    entry = {"queue": "default", "payload": ruby_json(sidekiq_job("7", "j")), "run_at": 1}
    heartbeat(r, INFO_73["identity"], INFO_73, busy=1, work={"t": entry})
    r.hset(f"{INFO_73['identity']}:workers", "t", ruby_json(entry))

    assert [w.payload["jid"] for _, _, w in WorkSet(config)] == ["j"]


def test_work_set_size_and_find_work(config: Config, r: redis.Redis) -> None:
    """size() sums busy; find_work(jid) returns that job's Work or None."""
    entry = {"queue": "default", "payload": ruby_json(sidekiq_job("7", "j")), "run_at": 1}
    heartbeat(r, INFO_73["identity"], INFO_73, busy=3, work={"t": entry})
    works = WorkSet(config)

    found = works.find_work("j")

    assert works.size() == 3
    assert found is not None
    assert found.thread_id == "t"
    assert works.find_work("nope") is None


def test_work_set_skips_unreadable_entries(config: Config, r: redis.Redis) -> None:
    """A busy entry that is not the expected JSON is skipped."""
    heartbeat(r, INFO_73["identity"], INFO_73, busy=1)
    r.hset(f"{INFO_73['identity']}:work", "t", "{oops")

    assert list(WorkSet(config)) == []
