"""Expiring jobs (issue 18, Sidekiq Pro's ``expires_in``): a job that has not started by
its expiry is dropped unrun, with a log line and a count (``kiq|stat|expired``), and
its fate recorded; Ruby payloads carrying the field get the same; bad values are
refused at the door. Real Redis, a real worker."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
import redis

import kiq
import kiq.api
from kiq import payload as wire
from kiq.config import Config
from tests.support import iter_jobs
from tests.support.servers import Worker
from tests.support.wait import wait_until


def test_the_client_turns_expires_in_into_an_absolute_expires_at(
    config: Config, r: redis.Redis
) -> None:
    before = time.time()
    iter_jobs.NoteJob.set(expires_in=3600).perform_async("now")
    job = json.loads(r.lindex("queue:iter", 0) or "")
    assert job["expires_in"] == 3600
    assert before + 3600 <= job["expires_at"] <= time.time() + 3600
    iter_jobs.NoteJob.set(expires_in=60).perform_in(600, "later")  # counted from when it is due
    scheduled, at = r.zrange("schedule", 0, 0, withscores=True)[0]
    assert json.loads(scheduled)["expires_at"] == pytest.approx(at + 60, abs=0.01)


def test_expired_jobs_never_run_and_are_counted_and_recorded(
    config: Config, r: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    now = time.time()
    client = kiq.Client(config)
    base = {"class": "iter_jobs.NoteJob", "queue": "iter"}
    client.push({**base, "args": ["late"], "jid": "a" * 24, "expires_at": now - 1})
    # a Ruby push without Pro's client middleware: expires_in, due since two minutes
    ruby = {**base, "args": ["ruby"], "jid": "b" * 24, "expires_in": 60, "created_at": now - 120}
    r.lpush("queue:iter", json.dumps({**ruby, "enqueued_at": now - 120}))
    client.push({**base, "args": ["fresh"], "jid": "c" * 24, "expires_at": now + 3600})
    worker = start_worker("-r", "iter_jobs", "-q", "iter")
    wait_until(lambda: r.lrange("test:ran", 0, -1) == ["fresh"], timeout=30)
    wait_until(lambda: kiq.api.fate_counts()["expired"] == 2, timeout=10)
    worker.stop()
    assert r.lrange("test:ran", 0, -1) == ["fresh"]  # the expired two never ran
    for jid in ("a" * 24, "b" * 24):
        fate = kiq.api.fate(jid)
        assert fate["fate"] == "expired"
        assert fate["where"] == "expired before it started"
    assert worker.output().count("expired: job expired at") == 2
    assert r.zcard("retry") == 0
    assert r.zcard("dead") == 0
    assert r.get("stat:failed") in (None, "0")


def test_an_expired_unique_job_frees_its_lock(
    config: Config, r: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    class Once(kiq.Job, name="iter_jobs.NoteJob", queue="iter", unique_for=600):
        def perform(self, tag: str) -> None: ...

    Once.set(expires_at=time.time() - 1).perform_async("once")
    assert len(r.keys("unique:*")) == 1
    worker = start_worker("-r", "iter_jobs", "-q", "iter")
    wait_until(lambda: kiq.api.fate_counts()["expired"] == 1, timeout=30)
    worker.stop()
    assert r.keys("unique:*") == []
    assert r.llen("test:ran") == 0


@pytest.mark.parametrize(
    ("field", "value"), [("expires_in", "1h"), ("expires_in", -5), ("expires_at", "tomorrow")]
)
def test_bad_expiry_values_are_refused_at_the_door(field: str, value: object) -> None:
    assert wire.field_problem(field, value) is not None
    job = {"class": "X", "args": [], "jid": "d" * 24, "queue": "q", field: value}
    with pytest.raises(kiq.PayloadError, match=field):
        wire.loads(json.dumps(job))
    with pytest.raises(kiq.ConfigError, match=field):  # Job.set checks at once
        iter_jobs.NoteJob.set(**{field: value})


def test_expiry_reads_both_fields_and_both_time_units() -> None:
    assert wire.expiry({"expires_at": 1_700_000_000.5}) == 1_700_000_000.5
    assert wire.expiry({"expires_at": 1_700_000_000_500}) == 1_700_000_000.5  # Sidekiq 8 ms
    assert wire.expiry({"expires_in": 30, "enqueued_at": 100.0, "created_at": 50.0}) == 130.0
    assert wire.expiry({"expires_in": 30, "created_at": 50.0}) == 80.0
    assert wire.expiry({"created_at": 50.0}) is None


def test_prometheus_counts_expired_and_cancelled_jobs(config: Config) -> None:
    pytest.importorskip("prometheus_client")
    from kiq import cancel, prometheus

    cancel.record(config, {"jid": "e" * 24, "class": "X"}, "expired", "expired before it started")
    body, _ = prometheus.render(config)
    assert b"kiq_jobs_expired_total 1.0" in body
    assert b"kiq_jobs_cancelled_total 0.0" in body
