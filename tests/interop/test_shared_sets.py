"""Scheduled and retry sets shared by kiq and Sidekiq 6.4 (issue 3, point 3).

Both sides write the ``schedule`` and ``retry`` ZSETs; either side's poller promotes
the other's jobs, Ruby's data API (api.rb) shows and acts on kiq's retries, and
``kiq.api.RetrySet`` does the same for retries Ruby wrote.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest

import kiq
from kiq.api import RetrySet
from tests.interop.conftest import PY_DONE, StrRedis, strict_json, wait_for, wait_records
from tests.support.jobs import Boom
from tests.support.wait import wait_until

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]


def zset(r: StrRedis, key: str) -> list[tuple[dict[str, Any], float]]:
    return [(json.loads(member), score) for member, score in r.zrange(key, 0, -1, withscores=True)]


def one_retry(r: StrRedis) -> dict[str, Any]:
    """Wait for the single entry of the retry set and return its payload."""
    wait_until(lambda: r.zcard("retry") >= 1, timeout=20.0)
    ((payload, _),) = zset(r, "retry")
    return payload


def rerun_failed(r: StrRedis) -> dict[str, Any] | None:
    """The retry entry's payload once a rerun has failed again (it has ``retried_at``)."""
    entries = zset(r, "retry")
    return entries[0][0] if entries and "retried_at" in entries[0][0] else None


@pytest.fixture
def kiq_retry(config, r, start_worker):
    """A job that failed in kiq and sits in ``retry``; returns (jid, the worker)."""
    worker = start_worker("-q", "default", "-c", "2")
    jid = Boom.perform_async(1, "x")
    one_retry(r)
    return jid, worker


def test_ruby_scheduled_job_is_promoted_by_kiq(config, r, ruby, start_worker):
    """A job Sidekiq's client scheduled is moved to its queue and run by kiq alone."""
    (jid,) = ruby.push(
        {"op": "push", "class": "InteropEcho", "queue": "interop", "args": [7], "in": 0.5}
    )
    assert r.zcard("schedule") == 1

    start_worker("-q", "interop", "-c", "2")

    (record,) = wait_records(r, PY_DONE, 1)
    assert record["jid"] == jid
    assert r.zcard("schedule") == 0


def test_kiq_failure_shows_in_ruby_retry_set(kiq_retry, ruby):
    """Sidekiq::RetrySet shows a kiq failure's class, queue, args, error, count, time, backtrace."""
    jid, _ = kiq_retry
    before = time.time()

    (entry,) = ruby.api()["retry"]

    assert entry["jid"] == jid
    assert entry["klass"] == "Boom"
    assert entry["queue"] == "default"
    assert entry["args"] == [1, "x"]
    assert entry["error_class"] == "ValueError"
    assert entry["error_message"] == "boom (1, 'x')"
    assert entry["retry_count"] == 0
    failed_at = datetime.fromisoformat(entry["failed_at"])
    assert before - 30 < failed_at.timestamp() <= before
    assert failed_at.tzinfo == UTC
    assert entry["score"] > before + 10  # first retry: 15 s + jitter away
    backtrace = entry["error_backtrace"]
    assert isinstance(backtrace, list), backtrace
    assert any("jobs.py" in line and "in `perform'" in line for line in backtrace), backtrace


def test_ruby_retry_all_reruns_kiq_retries_once(kiq_retry, r, ruby):
    """RetrySet#retry_all sends kiq's entry back to its queue; kiq reruns it; no duplicate."""
    jid, _ = kiq_retry

    ruby.api("retry_all")

    payload = wait_for(lambda: rerun_failed(r), timeout=20.0)
    assert payload["jid"] == jid
    assert payload["retry_count"] == 0  # Ruby decremented it to -1 before pushing
    assert r.zcard("retry") == 1
    assert r.llen("queue:default") == 0


def test_ruby_kill_moves_kiq_retry_to_dead(kiq_retry, r, ruby):
    """SortedEntry#kill moves kiq's retry entry to the Dead set, error fields intact."""
    jid, _ = kiq_retry

    snapshot = ruby.api("kill", jid)

    assert snapshot["retry"] == []
    (dead,) = snapshot["dead"]
    assert dead["jid"] == jid
    assert dead["error_class"] == "ValueError"
    assert r.zcard("retry") == 0
    assert r.zcard("dead") == 1


def test_ruby_delete_removes_kiq_retry(kiq_retry, r, ruby):
    """SortedEntry#delete removes kiq's retry entry and leaves no copy anywhere."""
    jid, _ = kiq_retry

    ruby.api("delete", jid)

    assert r.zcard("retry") == 0
    assert r.zcard("dead") == 0
    assert r.llen("queue:default") == 0


def test_ruby_reschedule_moves_kiq_retry_without_duplicate(kiq_retry, r, ruby):
    """SortedEntry#reschedule re-serialises kiq's entry byte for byte: one member, new score."""
    jid, _ = kiq_retry
    target = time.time() + 3600

    ruby.api("reschedule", jid, "3600")

    ((payload, score),) = zset(r, "retry")
    assert payload["jid"] == jid
    assert abs(score - target) < 30


def test_ruby_reschedule_keeps_exponent_floats_one_member(config, r, ruby):
    """Floats Ruby prints with an exponent (1.0e+20) still reschedule without a duplicate.

    Sidekiq ZINCRBYs ``JSON.generate(item)``: kiq must have written the same bytes.
    """
    floats = [1e20, 1e15, 1.5e-5, 6.02214076e23, -1e-10, 0.0001, 123.0]
    jid = kiq.Client(config).push(
        {"class": "InteropEcho", "queue": "interop", "args": floats, "at": time.time() + 600}
    )

    ruby.api("reschedule", jid, "3600")

    ((payload, _),) = zset(r, "schedule")
    assert strict_json(payload["args"]) == strict_json(floats)


@pytest.fixture
def ruby_retry(config, r, ruby, start_sidekiq):
    """A job that failed in Sidekiq 6.4 (RubyFail) and sits in ``retry``; returns its jid."""
    start_sidekiq("ruby")
    (jid,) = ruby.push(
        {
            "op": "push",
            "class": "RubyFail",
            "queue": "ruby",
            "args": [1, {"k": "v"}],
            "options": {"retry": 3, "backtrace": True},
        }
    )
    one_retry(r)
    return jid


def test_kiq_retry_set_reads_ruby_failure(ruby_retry, config):
    """kiq.api.RetrySet shows a Sidekiq failure: class, queue, args, error, count, time, trace."""
    before = time.time()

    (entry,) = RetrySet(config)

    assert entry.jid == ruby_retry
    assert entry.klass == "RubyFail"
    assert entry.queue == "ruby"
    assert entry.args == [1, {"k": "v"}]
    assert entry.error_class == "ArgumentError"
    assert entry.error_message == "boom from ruby"
    assert entry.retry_count == 0
    assert entry.failed_at is not None
    assert before - 30 < entry.failed_at.timestamp() <= before
    assert entry.at.timestamp() > before + 10
    backtrace = entry.error_backtrace  # MIME Base64 (newline-wrapped), as 6.4 writes it
    assert backtrace
    assert any("worker_app.rb" in line and "perform" in line for line in backtrace), backtrace


def test_kiq_retry_reruns_ruby_failure_once(ruby_retry, config, r):
    """SortedEntry.retry pushes Ruby's entry back; Sidekiq reruns it; one retry member remains."""
    (entry,) = RetrySet(config)

    entry.retry()

    payload = wait_for(lambda: rerun_failed(r), timeout=20.0)
    assert payload["jid"] == ruby_retry
    assert payload["retry_count"] == 0  # kiq decremented it to -1 before pushing
    assert r.zcard("retry") == 1


def test_kiq_kill_moves_ruby_failure_to_dead(ruby_retry, config, r, ruby):
    """SortedEntry.kill moves Ruby's retry entry to the Dead set, where Ruby sees it."""
    (entry,) = RetrySet(config)

    entry.kill()

    snapshot = ruby.api()
    assert snapshot["retry"] == []
    assert [dead["jid"] for dead in snapshot["dead"]] == [ruby_retry]
    assert snapshot["dead"][0]["error_class"] == "ArgumentError"


def test_kiq_delete_removes_ruby_failure(ruby_retry, config, r):
    """SortedEntry.delete removes Ruby's retry entry and leaves no copy anywhere."""
    (entry,) = RetrySet(config)

    assert entry.delete()

    assert r.zcard("retry") == 0
    assert r.zcard("dead") == 0
    assert r.llen("queue:ruby") == 0


def test_kiq_reschedule_moves_ruby_failure_without_duplicate(ruby_retry, config, r, ruby):
    """SortedEntry.reschedule gives Ruby's entry a new time, still one member, seen by Ruby."""
    (entry,) = RetrySet(config)
    target = time.time() + 3600

    entry.reschedule(target)

    (seen,) = ruby.api()["retry"]
    assert seen["jid"] == ruby_retry
    assert abs(seen["score"] - target) < 0.001
