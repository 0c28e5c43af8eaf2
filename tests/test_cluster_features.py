"""The features merged after the cluster mode, on the local cluster (docs/cluster.md,
"Features"): cancelling, iterable jobs, queue limits, results and limiters (sync and
async) work; a limited queue cannot be partitioned. Batches and workflows:
tests/test_cluster_batches.py."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path

import orjson
import pytest
import redis

import kiq
from kiq import api, cancel
from kiq.config import Config
from kiq.errors import ConfigError
from tests.support import iter_jobs
from tests.support.result_jobs import ResultAdd, ResultBoom
from tests.support.servers import Worker
from tests.support.wait import wait_until

sys.path.insert(0, str(Path(__file__).parent / "support"))  # the worker's -r result_jobs


class ClusterFeature(kiq.Job, name="ClusterFeature"):
    def perform(self, *args: object) -> None: ...


def test_a_queued_job_is_cancelled_and_its_fate_recorded_on_a_cluster(cconfig: Config) -> None:
    jids = [str(ClusterFeature.set(queue="hot").perform_async(i)) for i in range(8)]
    done = cancel.cancel(cconfig, jids[5])
    assert done.outcome == "removed"
    assert cancel.fate(cconfig, jids[5])["fate"] == "cancelled"
    assert cconfig.store.fate_counts(["cancelled"]) == [1]
    assert api.Queue("hot", cconfig).size() == 7


def test_a_fetched_job_of_a_partition_is_found_by_cancel_on_a_cluster(cconfig: Config) -> None:
    jids = [str(ClusterFeature.set(queue="hot").perform_async(i)) for i in range(8)]
    store = cconfig.store
    store.register_fetcher("w:1:x", b'["hot"]')
    assert len(store.fetch("w:1:x", ["hot"], 8)) == 8  # taken from all four partitions
    for jid in jids:
        done = cancel.cancel(cconfig, jid)
        assert (done.outcome, done.where) == ("cancelling", "fetched by a worker, about to start")


def test_in_progress_lists_every_partition_s_jobs(cconfig: Config) -> None:
    for i in range(8):
        ClusterFeature.set(queue="hot").perform_async(i)
    store = cconfig.store
    taken = store.fetch("w:2:x", ["hot"], 8)
    assert sorted(store.in_progress("w:2:x", ["hot"])) == sorted(raw for _, raw in taken)


@pytest.mark.slow
def test_a_running_iterable_job_is_cancelled_within_a_beat_on_a_cluster(
    cconfig: Config,
    cluster_url: str,
    redis_url: str,
    r: redis.Redis,
    tmp_path: Path,
) -> None:
    r.delete("test:items")
    jid = str(iter_jobs.CountJob.perform_async(100_000))
    worker = Worker(tmp_path, cluster_url, "-r", "iter_jobs", "-q", "iter", record_url=redis_url)
    try:
        wait_until(lambda: r.llen("test:items") >= 10, timeout=30)
        assert api.cancel(jid).outcome == "cancelling"
        wait_until(lambda: cancel.fate(cconfig, jid).get("fate") == "cancelled", timeout=15)
    finally:
        worker.kill()
    assert cancel.fate(cconfig, jid)["where"] == "cancelled while running"
    assert r.llen("test:items") < 100_000


def test_the_heartbeat_reads_running_jobs_cancel_flags_on_a_cluster(cconfig: Config) -> None:
    store = cconfig.store
    jids = [f"{i:024x}" for i in range(6)]  # it-<jid> keys on several slots
    store.mark_cancelled(jids[1], 1)
    store.mark_cancelled(jids[4], 1)
    assert store.flush_iteration(jids[2], 1, b"c", 0.5) is False
    beat = store.beat("me:1:beat", {"info": orjson.dumps({}).decode()}, {}, 60, watch=jids)
    assert sorted(beat[3]) == [jids[1], jids[4]]


def test_a_limiter_holds_on_a_cluster_and_the_admin_view_sees_it(cconfig: Config) -> None:
    limiter = kiq.Limiter.concurrent("stripe", 2, wait_timeout=0, config=cconfig)
    first, second = limiter.acquire(), limiter.acquire()
    with pytest.raises(kiq.OverLimit):
        limiter.acquire()
    limiter.release(first)
    third = limiter.acquire()  # the freed slot
    for token in (second, third):
        limiter.release(token)
    bucket = kiq.Limiter.bucket("mail", 3, "minute", wait_timeout=0, config=cconfig)
    for _ in range(3):
        with bucket.within_limit():
            pass
    with pytest.raises(kiq.OverLimit), bucket.within_limit():
        pass
    shown = {info.name: info for info in api.limiters(cconfig)}
    assert set(shown) == {"stripe", "mail"}  # copied to the global index
    assert shown["mail"].held == 3
    assert sum(m.held for m in shown["stripe"].minutes) == 3  # the minute stats, copied


def test_a_release_hands_the_slot_to_a_waiter_on_a_cluster(cconfig: Config) -> None:
    """The handoff on a limiter's slot: a waiting thread is made the holder by the
    release (its wake-up list and line share the limiter's hash tag), a fresh caller
    right after is refused, and the handed call counts as waited in the limiter's own
    minute hash (``ClusterLimits._limit_minute``)."""
    limiter = kiq.Limiter.concurrent("handoff", 1, wait_timeout=0, config=cconfig)
    patient = kiq.Limiter.concurrent("handoff", 1, wait_timeout=20, config=cconfig)
    store, keys = cconfig.store, cconfig.keys
    held = limiter.acquire()
    got: list[str] = []
    waiter = threading.Thread(target=lambda: got.append(patient.acquire()))
    waiter.start()
    wait_until(lambda: store._r.zcard(keys.limiter_waiters("handoff")) == 1, timeout=10)

    limiter.release(held)
    with pytest.raises(kiq.OverLimit):
        limiter.acquire()
    waiter.join(10)

    assert store._r.zrange(keys.limiter_holders("handoff"), 0, -1) == [got[0].encode()]
    limiter.release(got[0])
    (info,) = [i for i in api.limiters(cconfig) if i.name == "handoff"]
    assert (info.held, info.waited) == (2, 1)
    assert sum(m.waited for m in info.minutes) == 1


def test_an_async_limiter_holds_its_limit_on_a_cluster(cconfig: Config) -> None:
    """Twelve coroutines through a concurrent limiter of 3 (the asyncio cluster client):
    never more than 3 inside at once, every one gets in (freed slots hand over), and a
    bucket of 2 a minute refuses the third call."""
    limiter = kiq.Limiter.concurrent("stripe-async", 3, wait_timeout=10, config=cconfig)
    bucket = kiq.Limiter.bucket("mail-async", 2, "minute", wait_timeout=0, config=cconfig)
    inside, peak, done = 0, 0, 0

    async def one() -> None:
        nonlocal inside, peak, done
        async with limiter.within_limit():
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.05)
            inside -= 1
            done += 1

    async def main() -> None:
        await asyncio.gather(*(one() for _ in range(12)))
        for _ in range(2):
            async with bucket.within_limit():
                pass
        with pytest.raises(kiq.OverLimit):
            async with bucket.within_limit():
                pass
        await cconfig.store.aclose()

    asyncio.run(main())
    assert (peak, done) == (3, 12)
    shown = {info.name: info for info in api.limiters(cconfig)}
    assert {"stripe-async", "mail-async"} <= set(shown)  # copied to the global index
    assert sum(m.held for m in shown["stripe-async"].minutes) == 12
    assert shown["mail-async"].held == 2


@pytest.mark.slow
def test_results_are_stored_and_waiters_woken_on_a_cluster(
    cconfig: Config,
    cluster_url: str,
    tmp_path: Path,
) -> None:
    handles = [ResultAdd.enqueue(i, 1) for i in range(6)]  # records on several slots
    seed = cluster_url.removeprefix("redis+cluster://").split(",")[0].rstrip("/")
    # record_url: the job modules open a plain client at import (unused by these jobs)
    worker = Worker(
        tmp_path, cluster_url, "-r", "result_jobs", name="results", record_url=f"redis://{seed}/0"
    )
    try:
        for i, handle in enumerate(handles):
            try:
                value = handle.get(timeout=20)
            except kiq.ResultTimeout:
                raise AssertionError(worker.output()[-3000:]) from None
            assert value == {"sum": i + 1, "jid": handle.jid}
        failed = ResultBoom.enqueue("x")
        with pytest.raises(kiq.JobFailed):
            failed.get(timeout=30)
    finally:
        worker.kill()
    assert kiq.Result(handles[0].jid).status == "succeeded"
    assert cconfig.store.result_counts()["succeeded"] == 6


def test_a_limited_queue_cannot_be_partitioned_in_cluster_mode() -> None:
    with pytest.raises(ConfigError, match="queue 'hot' is partitioned"):
        Config(
            redis_url="redis+cluster://127.0.0.1:7000/", partitions={"hot": 4}, limits={"hot": 2}
        ).validate()


def test_a_queue_limit_holds_across_processes_on_a_cluster(cconfig: Config) -> None:
    store = cconfig.store
    store.push([("capped", orjson.dumps({"jid": f"c{i}", "queue": "capped"})) for i in range(9)])
    limits = {"capped": (3, 0, 0.0)}  # concurrency 3 across every process
    first = store.fetch("a:1:x", ["capped", "default"], 5, limits=limits)
    second = store.fetch("b:1:x", ["capped"], 5, limits=limits)
    assert (len(first), len(second)) == (3, 0)
    store.ack("a:1:x", first[:2])  # two done: room for two more, whoever asks
    assert len(store.fetch("b:1:x", ["capped"], 5, limits=limits)) == 2
    holders = store._r.zrange(cconfig.keys.queue_limit("capped"), 0, -1)
    assert sorted(holders) == [b"a:1:x", b"b:1:x"]
    assert store.queue_limit_usage(["capped"], 0) == [3]  # the admin read (Web UI Limits)
