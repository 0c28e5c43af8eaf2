"""Unique jobs (issue 16 point 1, kiq.unique): the lock taken with the push in one Lua
step, refused pushes returning None in every push verb, and the lock released as
promised (success, start, retry kept, death, delete, TTL) by real worker processes.

Real Redis throughout; the concurrency and crash claims use real OS processes.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

import kiq
from kiq import api, unique
from kiq.client import Client
from tests.support.unique_jobs import (
    UniqueImport,
    UniqueRecord,
)

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
