"""Cancel by jid (issue 18): a queued, scheduled or retrying job is removed (its unique
lock released), a running thread job sees ``cancelled()``, a running ``async def`` job
gets CancelledError; each ends recorded as cancelled in ``kiq|fate|<jid>``, neither
failed nor retried. An unknown or finished jid says so. Real Redis, real workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis

import kiq
import kiq.api
from kiq.config import Config
from tests.support import iter_jobs
from tests.support.servers import Worker
from tests.support.wait import wait_until

ROOT = Path(__file__).parent.parent


class Lockable(kiq.Job, queue="iter", unique_for=600):
    def perform(self, n: int) -> None: ...


def no_failure(r: redis.Redis) -> bool:
    return r.zcard("retry") == 0 and r.zcard("dead") == 0


def test_cancel_a_queued_job_removes_it_frees_its_lock_and_records_it(
    config: Config, r: redis.Redis
) -> None:
    jid = Lockable.perform_async(1)
    assert jid is not None
    assert len(r.keys("unique:*")) == 1
    result = kiq.api.cancel(jid)
    assert result.outcome == "removed"
    assert result.where == "queue iter"
    assert r.llen("queue:iter") == 0
    assert r.keys("unique:*") == []  # the lock went with the job
    fate = kiq.api.fate(jid)
    assert fate["fate"] == "cancelled"
    assert fate["class"] == Lockable.wire_name
    assert json.loads(fate["job"])["args"] == [1]
    assert kiq.api.fate_counts() == {"cancelled": 1, "expired": 0}
    again = kiq.api.cancel(jid)
    assert again.outcome == "not_found"
    assert "not found" in str(again)
    assert Lockable.perform_async(1) is not None  # the lock is free for a new one


def test_cancel_a_scheduled_and_a_retrying_job(config: Config, r: redis.Redis) -> None:
    later = iter_jobs.NoteJob.perform_in(3600, "later")
    assert later is not None
    assert Lockable.cancel(later).where == "schedule"  # Job.cancel: the same call
    assert r.zcard("schedule") == 0
    retrying = {"class": "RubyJob", "args": [], "jid": "f" * 24, "queue": "iter", "retry_count": 1}
    config.store.add_retry(1e10, kiq.payload.dumps(retrying))
    assert kiq.api.cancel("f" * 24).where == "retry"
    assert r.zcard("retry") == 0
    assert kiq.api.fate("f" * 24)["where"] == "retry"


def test_cancel_an_unknown_jid_says_so_from_the_cli(config: Config, redis_url: str) -> None:
    queued = iter_jobs.NoteJob.perform_async("x")
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    command = [sys.executable, "-m", "kiq.cli", "cancel", "--redis-url", redis_url]
    missing = subprocess.run(
        [*command, "0" * 24], capture_output=True, text=True, env=env, timeout=60
    )
    assert missing.returncode == 1
    assert "not found" in missing.stdout
    found = subprocess.run(
        [*command, str(queued)], capture_output=True, text=True, env=env, timeout=60
    )
    assert found.returncode == 0, found.stderr
    assert "removed from queue iter" in found.stdout


def cancel_once_running(
    r: redis.Redis, start_worker: Callable[..., Worker], job: type[kiq.Job], arg: str
) -> tuple[Worker, str]:
    """Start a worker, push ``job(arg)``, and once it runs (started, and the worker's
    work hash says busy) cancel it: kiq.api.cancel must answer "cancelling"."""
    worker = start_worker("-r", "iter_jobs", "-q", "iter")
    jid = job.perform_async(arg)
    wait_until(lambda: r.lrange("test:started", 0, -1) == [jid], timeout=30)
    wait_until(lambda: busy(r), timeout=10)
    assert kiq.api.cancel(str(jid)).outcome == "cancelling"
    return worker, str(jid)


def test_a_running_thread_job_sees_cancelled_and_ends_recorded_as_cancelled(
    config: Config, r: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    worker, jid = cancel_once_running(r, start_worker, iter_jobs.PatientJob, "t")
    wait_until(lambda: r.llen("test:ended") == 1, timeout=10)
    assert json.loads(r.lindex("test:ended", 0) or "") == {"jid": jid, "cancelled": True}
    wait_until(lambda: kiq.api.fate(str(jid)).get("fate") == "cancelled", timeout=10)
    worker.stop()
    assert kiq.api.fate(str(jid))["where"] == "cancelled while running"
    assert no_failure(r)
    assert r.get("stat:failed") in (None, "0")


def test_a_running_async_job_gets_cancelled_error_and_is_not_retried(
    config: Config, r: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    worker, jid = cancel_once_running(r, start_worker, iter_jobs.AsyncPatientJob, "a")
    wait_until(lambda: kiq.api.fate(str(jid)).get("fate") == "cancelled", timeout=10)
    worker.stop()
    assert json.loads(r.lindex("test:ended", 0) or "") == {"jid": jid, "cancelled": True}
    assert no_failure(r)
    assert r.llen("queue:iter") == 0


def test_a_running_iterable_job_stops_at_its_next_item_on_a_kiq_cancel(
    config: Config, r: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    worker = start_worker("-r", "iter_jobs", "-q", "iter")
    jid = iter_jobs.CountJob.perform_async(100_000)
    wait_until(lambda: r.llen("test:items") >= 10, timeout=30)
    assert kiq.api.cancel(str(jid)).outcome == "cancelling"
    wait_until(lambda: kiq.api.fate(str(jid)).get("fate") == "cancelled", timeout=10)
    worker.stop()
    assert r.lrange("test:hooks", 0, -1) == ["cancel"]
    assert r.exists(f"it-{jid}") == 0
    assert no_failure(r)


def busy(r: redis.Redis) -> bool:
    """Some process's heartbeat shows a running job (a cancel finds it there)."""
    return any(r.hlen(f"{identity}:work") for identity in r.smembers("processes"))


def test_kiqs_cancel_flag_is_rubys(config: Config, r: redis.Redis) -> None:
    """``cancelled`` an epoch integer set once (HSETNX), the TTL 30 days set with NX: what
    Ruby's ``is_cancelled?`` and ``flush_state`` read; a second cancel changes nothing."""
    kiq.api.cancel("9" * 24)
    first = r.hget("it-" + "9" * 24, "cancelled") or ""
    assert first.isdigit()
    assert abs(int(first) - time.time()) < 5
    assert 30 * 86400 - 5 <= r.ttl("it-" + "9" * 24) <= 30 * 86400
    r.expire("it-" + "9" * 24, 100)
    kiq.api.cancel("9" * 24)
    assert r.hget("it-" + "9" * 24, "cancelled") == first
    assert r.ttl("it-" + "9" * 24) <= 100
