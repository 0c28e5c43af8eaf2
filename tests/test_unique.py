"""Unique jobs (issue 16 point 1, kiq.unique): the lock taken with the push in one Lua
step, refused pushes returning None in every push verb, and the lock released as
promised (success, start, retry kept, death, delete, TTL) by real worker processes.

Real Redis throughout; the concurrency and crash claims use real OS processes.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

import kiq
from kiq import api, unique
from kiq.client import Client
from kiq.recover import Recoverer
from tests.support.jobs import records
from tests.support.unique_jobs import (
    UniqueAtStart,
    UniqueDoomed,
    UniqueFlaky,
    UniqueImport,
    UniqueNap,
    UniqueRecord,
)
from tests.support.wait import wait_until

SUPPORT = Path(__file__).parent / "support"
UNIQUE = ("-r", "unique_jobs")  # the worker loads tests/support/unique_jobs.py too


def lock_of(job: type[kiq.Job] | str, *args: Any, queue: str = "default") -> str:
    name = job if isinstance(job, str) else job.wire_name
    payload = {"class": name, "queue": queue, "args": list(args)}
    return f"unique:{unique.digest(payload)}"


def queued(r: redis.Redis, queue: str = "default") -> list[dict[str, Any]]:
    return [orjson.loads(raw) for raw in r.lrange(f"queue:{queue}", 0, -1)]


# -- the push side --------------------------------------------------------------------


def test_a_second_push_while_the_lock_is_held_returns_none_and_writes_nothing(config, r):
    jid = UniqueRecord.perform_async(7)
    assert jid is not None
    assert UniqueRecord.perform_async(7) is None
    assert [p["jid"] for p in queued(r)] == [jid]
    lock = lock_of(UniqueRecord, 7)
    assert r.get(lock) == jid
    assert 59_000 < r.pttl(lock) <= 60_000  # unique_for=60, counted from the push
    assert queued(r)[0]["unique_for"] == 60  # the field rides in the payload (Enterprise's)


def test_the_lock_is_per_class_queue_and_arguments(config, r):
    first = UniqueRecord.perform_async(1)
    other_args = UniqueRecord.perform_async(2)
    other_queue = UniqueRecord.set(queue="other").perform_async(1)
    assert None not in (first, other_args, other_queue)
    assert UniqueRecord.set(queue="other").perform_async(1) is None
    assert r.get(lock_of(UniqueRecord, 1, queue="other")) == other_queue


def test_unique_args_narrows_what_makes_the_lock(config, r):
    """The brief's import job is unique per file: another requester is a duplicate."""
    jid = UniqueImport.perform_async("exports/2024-05.csv", 1)
    assert UniqueImport.perform_async("exports/2024-05.csv", 2) is None
    assert UniqueImport.perform_async("exports/2024-06.csv", 2) is not None
    payload = {"class": "UniqueImport", "queue": "default", "args": ["exports/2024-05.csv"]}
    assert r.get(f"unique:{unique.digest(payload)}") == jid


def test_a_plain_job_takes_no_lock_and_a_per_push_option_makes_one(config, r):
    assert kiq.Client().push({"class": "Record", "args": [1]}) is not None
    assert kiq.Client().push({"class": "Record", "args": [1]}) is not None
    assert r.keys("unique:*") == []
    setter = UniqueRecord.set(unique_for=None)  # a per-push opt-out
    assert setter.perform_async(3) is not None
    assert setter.perform_async(3) is not None
    assert r.keys("unique:*") == []
    item = {"class": "Record", "args": [5], "unique_for": 30}  # a class name, set per push
    jid = kiq.Client().push(item)
    assert kiq.Client().push(item) is None
    assert r.get(lock_of("Record", 5)) == jid


def test_a_scheduled_job_holds_the_lock_from_the_push_for_its_delay_plus_unique_for(config, r):
    jid = UniqueRecord.perform_in(100, 4)
    assert jid is not None
    assert UniqueRecord.perform_async(4) is None
    assert UniqueRecord.perform_at(time.time() + 50, 4) is None
    assert r.zcard("schedule") == 1
    assert r.llen("queue:default") == 0
    (member,) = r.zrange("schedule", 0, -1)
    assert orjson.loads(member)["jid"] == jid
    assert "at" not in orjson.loads(member)
    assert 159_000 < r.pttl(lock_of(UniqueRecord, 4)) <= 160_000  # 100 s delay + 60 s


def test_perform_bulk_returns_none_for_each_refused_job(config, r):
    held = UniqueRecord.perform_async(3)
    jids = UniqueRecord.perform_bulk([[1], [2], [1], [3], [4]])
    assert [j is None for j in jids] == [False, False, True, True, False]
    assert sorted(p["args"][0] for p in queued(r)) == [1, 2, 3, 4]
    assert held in {p["jid"] for p in queued(r)}
    assert r.get(lock_of(UniqueRecord, 1)) == jids[0]


def test_the_asyncio_client_refuses_the_same_way(config, r):
    async def pushes() -> list[Any]:
        first = await UniqueRecord.aperform_async(9)
        second = await UniqueRecord.aperform_async(9)
        later = await UniqueRecord.aperform_in(30, 10)
        later_again = await UniqueRecord.aperform_at(time.time() + 30, 10)
        bulk = await UniqueRecord.aperform_bulk([[9], [11]])
        await config.store.aclose()
        return [first, second, later, later_again, bulk]

    first, second, later, later_again, bulk = asyncio.run(pushes())
    assert first is not None
    assert second is None
    assert later is not None
    assert later_again is None
    assert bulk[0] is None
    assert bulk[1] is not None
    assert r.get(lock_of(UniqueRecord, 9)) == first
    assert r.get(lock_of(UniqueRecord, 10)) == later


def test_bad_unique_options_are_refused_where_they_are_written(config):
    with pytest.raises(kiq.ConfigError, match="unique_until"):

        class Bad(kiq.Job, unique_for=10, unique_until="finish"):
            def perform(self) -> None: ...

    with pytest.raises(kiq.ConfigError, match="unique_for"):
        UniqueRecord.set(unique_for=-1)


def test_release_is_compare_and_delete_on_the_jid(config, r):
    jid = UniqueRecord.perform_async(1)
    lock = lock_of(UniqueRecord, 1)
    assert config.store.unique_release([(lock, "someone-else")]) == 0
    assert r.get(lock) == jid
    assert config.store.unique_release([(lock, jid)]) == 1
    assert r.get(lock) is None
    assert UniqueRecord.perform_async(1) is not None


def test_a_lock_push_onto_a_key_of_another_type_writes_nothing(config, r):
    r.set("queue:default", "not a list")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        UniqueRecord.perform_async(1)
    assert r.get(lock_of(UniqueRecord, 1)) is None  # no lock left behind for a lost push


def test_a_unique_push_after_the_script_cache_was_flushed_loads_it_again(config, r):
    assert UniqueRecord.perform_async(1) is not None
    r.script_flush()  # a restarted or failed-over server has no scripts
    assert UniqueRecord.perform_async(1) is None
    assert UniqueRecord.perform_async(2) is not None
    assert len(queued(r)) == 2


# -- deleting through the API frees the lock -------------------------------------------


def test_deleting_a_queued_job_through_the_api_frees_its_lock(config, r):
    jid = UniqueRecord.perform_async(1)
    other = UniqueRecord.perform_async(2)
    record = api.Queue("default").find_job(jid)
    assert record is not None
    assert record.delete()
    assert r.get(lock_of(UniqueRecord, 1)) is None
    assert r.get(lock_of(UniqueRecord, 2)) == other
    api.Queue("default").clear()
    assert r.keys("unique:*") == []
    assert UniqueRecord.perform_async(2) is not None


def test_deleting_or_killing_a_scheduled_job_through_the_api_frees_its_lock(config, r):
    UniqueRecord.perform_in(60, 1)
    UniqueRecord.perform_in(60, 2)
    UniqueRecord.perform_in(60, 3)
    UniqueRecord.perform_in(60, 4)
    scheduled = api.ScheduledSet()
    by_arg = {entry.args[0]: entry for entry in scheduled}
    assert by_arg[1].delete()
    assert scheduled.delete_by_jid(by_arg[2].score, by_arg[2].jid)
    by_arg[3].kill()  # to the dead set: the job has died
    assert r.keys("unique:*") == [lock_of(UniqueRecord, 4)]
    scheduled.clear()
    assert r.keys("unique:*") == []


def test_kill_all_of_the_retry_set_frees_the_locks(config, r):
    Client(config).push({"class": UniqueRecord, "args": [1], "at": time.time() + 60})
    for entry in api.ScheduledSet():  # a retry set entry: as the retry handler leaves it
        r.zadd("retry", {entry.value: entry.score})
        r.zrem("schedule", entry.value)
    assert api.RetrySet().kill_all() == 1
    assert r.keys("unique:*") == []


def test_a_unique_job_buried_as_poison_by_the_recovery_frees_its_lock(config, r):
    """A job whose process died more than max_recoveries times is dead: lock freed."""
    config.max_recoveries = 0
    dead_process = "host:111:dead00000000"
    jid = UniqueRecord.perform_async(1)
    config.store.register_fetcher(dead_process, orjson.dumps(["default"]))
    assert len(config.store.fetch(dead_process, ["default"], 1)) == 1
    assert r.get(lock_of(UniqueRecord, 1)) == jid

    assert Recoverer(config, "host:333:5e1f00000000").sweep() == 1

    assert orjson.loads(r.zrange("dead", 0, -1)[0])["jid"] == jid
    assert r.get(lock_of(UniqueRecord, 1)) is None


# -- real processes -------------------------------------------------------------------

PUSHERS = 8
PUSHES = 500  # per process in CI; bench/unique_stress.py pushes 10,000 in all


def run_pushers(redis_url: str, r: redis.Redis, unique_for: float) -> list[str]:
    """PUSHERS processes push the same unique job PUSHES times each, all at once."""
    r.delete("test:accepted", "test:finished")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(SUPPORT / "unique_pusher.py"),
                redis_url,
                str(PUSHES),
                str(unique_for),
            ]
        )
        for _ in range(PUSHERS)
    ]
    r.rpush("test:go", *["go"] * PUSHERS)
    for proc in procs:
        assert proc.wait(120) == 0
    assert r.llen("test:finished") == PUSHERS
    return [json.loads(item)[0] for item in r.lrange("test:accepted", 0, -1)]


@pytest.mark.slow
def test_eight_processes_pushing_the_same_unique_job_enqueue_exactly_one_per_window(
    config, r, redis_url
):
    """8 OS processes x 500 concurrent pushes: one accepted, one in the queue; after the
    lock is freed (the job deleted through the API), the next window again holds one."""
    (jid,) = run_pushers(redis_url, r, 60)
    assert [p["jid"] for p in queued(r)] == [jid]
    assert r.get(lock_of(UniqueRecord, 1)) == jid

    (record,) = list(api.Queue("default"))
    assert record.delete()  # frees the lock: a new window
    (second,) = run_pushers(redis_url, r, 60)
    assert second != jid
    assert [p["jid"] for p in queued(r)] == [second]


def lock_holder(r: redis.Redis, lock: str) -> str | None:
    holder: str | None = r.get(lock)
    return holder


@pytest.mark.slow
def test_the_lock_is_released_when_the_job_succeeds(config, r, start_worker):
    start_worker(*UNIQUE, "-c", "1")
    jid = UniqueRecord.perform_async(1)
    (done,) = wait_until(lambda: records(r))
    assert (done["jid"], done["holder"]) == (jid, jid)  # held while it ran
    wait_until(lambda: lock_holder(r, lock_of(UniqueRecord, 1)) is None)
    assert UniqueRecord.perform_async(1) is not None


@pytest.mark.slow
def test_unique_until_start_releases_the_lock_before_perform(config, r, start_worker):
    start_worker(*UNIQUE, "-c", "1")
    jid = UniqueAtStart.perform_async(1)
    (done,) = wait_until(lambda: records(r))
    assert (done["jid"], done["holder"]) == (jid, None)  # already free while it ran


@pytest.mark.slow
def test_the_lock_is_kept_across_a_retry_and_released_when_the_retry_succeeds(
    config, r, start_worker
):
    start_worker(*UNIQUE, "-c", "1")
    jid = UniqueFlaky.perform_async(1)
    lock = lock_of(UniqueFlaky, 1)
    wait_until(lambda: r.zcard("retry") == 1)
    assert r.get(lock) == jid  # waiting for its retry: still held
    assert UniqueFlaky.perform_async(1) is None
    assert api.RetrySet().retry_all() == 1  # run the retry now (its backoff is 15 s+)
    (done,) = wait_until(lambda: records(r))
    assert (done["jid"], done["holder"]) == (jid, jid)
    wait_until(lambda: lock_holder(r, lock) is None)
    assert [s["jid"] for s in records(r, "test:started")] == [jid, jid]


@pytest.mark.slow
def test_the_lock_is_released_when_the_job_dies(config, r, start_worker):
    start_worker(*UNIQUE, "-c", "1")
    jid = UniqueDoomed.perform_async(1)
    (member,) = wait_until(lambda: r.zrange("dead", 0, -1))
    assert orjson.loads(member)["jid"] == jid
    wait_until(lambda: lock_holder(r, lock_of(UniqueDoomed, 1)) is None)
    assert UniqueDoomed.perform_async(1) is not None


@pytest.mark.slow
def test_deleting_a_scheduled_job_through_the_api_with_a_worker_running_frees_it(
    config, r, start_worker
):
    """The job a worker would run later is deleted from the Web UI's set: the lock goes
    with it and the next push runs (and is released by the worker on success)."""
    start_worker(*UNIQUE, "-c", "1")
    UniqueRecord.perform_in(60, 1)
    lock = lock_of(UniqueRecord, 1)
    assert r.get(lock) is not None
    (entry,) = list(api.ScheduledSet())
    assert api.ScheduledSet().delete_by_jid(entry.score, entry.jid)
    assert r.get(lock) is None
    jid = UniqueRecord.perform_async(1)
    (done,) = wait_until(lambda: records(r))
    assert done["jid"] == jid
    wait_until(lambda: lock_holder(r, lock) is None)


@pytest.mark.slow
def test_a_scheduled_unique_job_is_not_refused_by_its_own_lock_when_it_comes_due(
    config, r, start_worker
):
    start_worker(*UNIQUE, "-c", "1")
    jid = UniqueRecord.perform_in(0.5, 1)
    (done,) = wait_until(lambda: records(r))
    assert (done["jid"], done["holder"]) == (jid, jid)
    wait_until(lambda: lock_holder(r, lock_of(UniqueRecord, 1)) is None)


@pytest.mark.slow
def test_the_lock_ends_by_its_ttl_and_the_late_job_frees_only_its_own(config, r, start_worker):
    """A job outliving unique_for loses its lock to the TTL; a copy pushed then takes a
    new lock, which the first job's success does not free (compare-and-delete)."""
    start_worker(*UNIQUE, "-c", "2")
    first = UniqueNap.set(unique_for=1).perform_async(3.0)
    lock = lock_of(UniqueNap)  # unique per tag (none here), not per duration
    wait_until(lambda: records(r, "test:started"))
    # Held from the push for 1 s: already gone if the job took longer to start (a
    # loaded box); the push-time hold itself is test_a_second_push_while_the_lock_is_held_...
    assert r.get(lock) in (first, None)
    wait_until(lambda: lock_holder(r, lock) is None, timeout=5)  # the TTL, not the job
    assert records(r) == []  # the first job is still running
    second = UniqueNap.set(unique_for=60).perform_async(8.0)  # ends well after the first
    assert second is not None
    wait_until(lambda: records(r))
    wait_until(lambda: not in_progress(r, first))  # first acked: its release came before
    assert r.get(lock) == second  # first's success did not free second's lock
    assert [d["jid"] for d in records(r)] == [first]
    wait_until(lambda: len(records(r)) == 2, timeout=20)
    wait_until(lambda: lock_holder(r, lock) is None)


def in_progress(r: redis.Redis, jid: str) -> bool:
    """Is the job ``jid`` in some worker's in-progress list (taken, not yet acked)?"""
    return any(jid in raw for key in r.keys("kiq|inprogress|*") for raw in r.lrange(key, 0, -1))


FAST_EXPIRY = ":process_ttl: 1\n:prefetch: 0\n"
RECOVERY_WAIT = 45.0  # as tests/test_recover.py: a sweep lock left by a crash expires


@pytest.mark.slow
def test_a_sigkilled_workers_lock_ends_by_its_ttl_then_the_job_is_recovered(
    config, r, start_worker
):
    victim = start_worker(*UNIQUE, "-c", "1", config_text=FAST_EXPIRY)
    jid = UniqueNap.set(unique_for=2).perform_async(60.0)
    lock = lock_of(UniqueNap)
    wait_until(lambda: records(r, "test:started"))
    victim.kill()
    # The dead worker's job still holds it (unless its start took the whole 2 s)...
    assert r.get(lock) in (jid, None)
    wait_until(lambda: lock_holder(r, lock) is None, timeout=5)  # ...until its TTL
    assert records(r) == []

    rescuer = start_worker(*UNIQUE, "-c", "1", config_text=FAST_EXPIRY)
    (done,) = wait_until(lambda: records(r), timeout=RECOVERY_WAIT)
    assert (done["jid"], done["pid"]) == (jid, rescuer.pid)


@pytest.mark.slow
def test_a_recovered_job_runs_under_its_own_lock_and_frees_it(config, r, start_worker):
    """SIGKILL mid-run with the lock still valid: the orphan sweep requeues the job, which
    is not refused by the lock it holds itself, runs, and frees it on success."""
    victim = start_worker(*UNIQUE, "-c", "1", config_text=FAST_EXPIRY)
    jid = UniqueNap.perform_async(60.0, "victim")  # unique_for=60: outlives the test
    lock = lock_of(UniqueNap, "victim")
    wait_until(lambda: records(r, "test:started"))
    victim.kill()
    assert UniqueNap.perform_async(60.0, "victim") is None  # still held by the lost job

    rescuer = start_worker(*UNIQUE, "-c", "1", config_text=FAST_EXPIRY)
    (done,) = wait_until(lambda: records(r), timeout=RECOVERY_WAIT)
    assert (done["jid"], done["pid"], done["holder"]) == (jid, rescuer.pid, jid)
    wait_until(lambda: lock_holder(r, lock) is None)
    assert r.pttl(lock) == -2


@pytest.mark.slow
def test_a_ruby_payload_with_unique_for_is_released_by_a_kiq_worker(config, r, start_worker):
    """A payload as a Ruby client writes it (unique_for, a lock holding its jid): the kiq
    worker computes the same lock from the payload alone and frees it on success."""
    start_worker(*UNIQUE, "-c", "1")
    jid = "0123456789abcdef01234567"
    payload = {
        "class": "UniqueRecord",
        "args": [42],
        "queue": "default",
        "retry": True,
        "jid": jid,
        "created_at": time.time(),
        "enqueued_at": time.time(),
        "unique_for": 600,
        "unique_until": "success",
    }
    lock = lock_of(UniqueRecord, 42)
    r.set(lock, jid, px=600_000)
    r.sadd("queues", "default")
    r.lpush("queue:default", orjson.dumps(payload))
    (done,) = wait_until(lambda: records(r))
    assert (done["jid"], done["holder"]) == (jid, jid)
    wait_until(lambda: lock_holder(r, lock) is None)
