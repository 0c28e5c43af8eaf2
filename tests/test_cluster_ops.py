"""Cluster mode beyond push and fetch, on the local cluster: the admin API across shards,
cron exactly once, unique jobs, orphan recovery, Prometheus and ``kiq status``."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import orjson

import kiq
from kiq import api, prometheus, status
from kiq.config import Config
from kiq.cron import CronJob
from kiq.outage import Outage
from kiq.recurring import CronPoller, save

T0 = datetime(2026, 1, 1, 10, 0, 30, tzinfo=UTC)


class ClusterRecord(kiq.Job, name="ClusterRecord"):
    def perform(self, *args: object) -> None: ...


def _schedule(cfg: Config, n: int, queue: str) -> list[str]:
    client = kiq.Client(cfg)
    return [
        str(client.push({"class": "ClusterRecord", "queue": queue, "args": [i], "at": 2e9 + i}))
        for i in range(n)
    ]


def test_the_sets_page_across_shards_in_score_order(cconfig: Config) -> None:
    jids = _schedule(cconfig, 12, "hot") + _schedule(cconfig, 6, "default")
    scheduled = api.ScheduledSet(cconfig)
    assert scheduled.size() == 18
    scores = [e.score for e in scheduled.page(0, 18)]
    assert scores == sorted(scores)
    assert len({e.jid for e in scheduled.page(0, 18)}) == 18
    page = scheduled.page(5, 4)
    assert [e.score for e in page] == scores[5:9]
    assert [e.score for e in scheduled.page(0, 3, reverse=True)] == sorted(scores)[::-1][:3]
    assert {e.jid for e in scheduled} == set(jids)  # iteration walks every shard
    found = scheduled.find_job(jids[3])
    assert found is not None
    found.kill()
    assert api.DeadSet(cconfig).size() == 1
    assert scheduled.size() == 17
    assert api.Stats(cconfig).scheduled_size == 17
    assert api.Stats(cconfig).dead_size == 1
    assert scheduled.add_all_to_queue() == 17
    assert api.Queue("hot", cconfig).size() == 11  # across its 4 partitions
    assert api.Queue("default", cconfig).size() == 6
    assert len(list(api.Queue("hot", cconfig))) == 11
    api.Queue("hot", cconfig).clear()
    assert api.Queue("hot", cconfig).size() == 0


def test_retries_and_the_dead_set_across_shards(cconfig: Config) -> None:
    store = cconfig.store
    for i in range(8):
        payload = {"class": "ClusterRecord", "queue": "hot" if i % 2 else "low",
                   "jid": f"{i:024x}", "args": [i], "retry_count": 1}  # fmt: skip
        store.add_retry(time.time() + 100 + i, orjson.dumps(payload))
    retries = api.RetrySet(cconfig)
    assert retries.size() == 8
    assert retries.kill_all() == 8
    dead = api.DeadSet(cconfig)
    assert dead.size() == 8
    assert dead.retry_all() == 8
    assert api.Queue("hot", cconfig).size() + api.Queue("low", cconfig).size() == 8


def test_cron_ticks_fire_exactly_once_across_racing_pollers(cconfig: Config) -> None:
    save(cconfig, CronJob(name="m", klass="ClusterRecord", cron="* * * * *", queue="hot"), now=T0)
    save(cconfig, CronJob(name="t", klass="ClusterRecord", cron="*/10 * * * * *"), now=T0)
    pollers = [CronPoller(cconfig, Outage(cconfig.store.safe_url)) for _ in range(4)]
    barrier = threading.Barrier(len(pollers))
    fired = [0] * len(pollers)

    def run(index: int) -> None:
        for step in range(1, 25):  # 2 minutes in 5 s steps
            barrier.wait()
            fired[index] += pollers[index].tick(T0 + timedelta(seconds=5 * step))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(pollers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert api.Queue("hot", cconfig).size() == 2  # 10:01, 10:02
    assert api.Queue("default", cconfig).size() == 12  # every 10 s from 10:00:40 to 10:02:30
    assert sum(fired) == 14
    # The tick current when a job is saved does not fire (the saved seed).
    save(cconfig, CronJob(name="n", klass="ClusterRecord", cron="* * * * *"), now=T0)
    assert pollers[0].tick(T0 + timedelta(seconds=10)) == 0


def test_unique_jobs_lock_and_release_on_a_cluster(cconfig: Config) -> None:
    job = ClusterRecord.set(unique_for=60, queue="hot")
    assert job.perform_async(1) is not None
    assert job.perform_async(1) is None  # the lock is held
    assert job.perform_async(2) is not None
    store = cconfig.store
    taken = store.fetch("me:1:x", ["hot"], 10)
    assert len(taken) == 2
    released = kiq.unique.release_raws(cconfig, [raw for _, raw in taken])
    assert released == 2
    assert job.perform_async(1) is not None


def test_a_dead_process_s_jobs_go_back_to_their_shards(cconfig: Config) -> None:
    store = cconfig.store
    jobs = [("hot", orjson.dumps({"jid": f"{i:024x}", "queue": "hot"})) for i in range(20)]
    jobs += [("default", orjson.dumps({"jid": f"d{i}", "queue": "default"})) for i in range(5)]
    store.push(jobs)
    ident = "gone:1:abc"
    store.register_fetcher(ident, b'["hot","default"]')
    assert len(store.fetch(ident, ["hot", "default"], 25)) == 25
    assert store.queue_sizes(["hot", "default"]) == [0, 0]
    moves = store.recover_orphans(
        "me:2:x", lambda q, raws, ahead: (raws[::-1], []), time.time(), 100, 1e6
    )
    assert moves is not None
    assert sum(len(requeued) for _, requeued, _ in moves) == 25
    assert store.queue_sizes(["hot", "default"]) == [20, 5]
    assert store.in_progress_sizes(ident, ["hot", "default"]) == [0, 0]
    assert store._r.hget(store.keys.fetchers, ident) is None


def test_ahead_marks_and_call_records_live_in_each_shard_and_recovery_honours_them(
    cconfig: Config,
) -> None:
    store = cconfig.store
    keys = store.keys
    jobs = [("hot", orjson.dumps({"jid": f"{i:024x}", "queue": "hot"})) for i in range(20)]
    store.push(jobs)
    ident = "gone:1:ahead"
    store.register_fetcher(ident, b'["hot"]')
    taken, marked = store.fetch_batch(ident, ["hot"], 12, ahead_from=4, call="c1")
    assert marked
    assert len(taken) == 12
    # A resent call (its reply lost) returns what it took, shard by shard: no new jobs.
    again, _ = store.fetch_batch(ident, ["hot"], 12, ahead_from=4, call="c1")
    assert sorted(raw for _, raw in again) == sorted(raw for _, raw in taken)
    assert sum(store.in_progress_sizes(ident, ["hot"])) == 12
    marks = set()
    for shard in keys.shards("hot"):
        shard_marks = store._r.smembers(keys.ahead_shard(ident, shard))
        assert all(keys.shard_of("hot", orjson.loads(m)["jid"]) == shard for m in shard_marks)
        marks |= shard_marks
    assert marks == {raw for _, raw in taken[4:]}
    released = taken[4][1]  # released: may start now, so its mark goes
    store.fetch_batch(ident, ["hot"], 0, release=[released])
    seen: dict[bytes, bool] = {}

    def plan(
        queue: str, raws: list[bytes], ahead: frozenset[bytes]
    ) -> tuple[list[bytes], list[bytes]]:
        seen.update({raw: raw in ahead for raw in raws})
        return raws[::-1], []

    moves = store.recover_orphans("me:2:x", plan, time.time(), 100, 1e6)
    assert moves is not None
    assert sum(len(r) for _, r, _ in moves) == 12
    assert {raw for raw, was in seen.items() if was} == marks - {released}
    for shard in keys.shards("hot"):
        assert not store._r.exists(keys.ahead_shard(ident, shard))
        assert not store._r.exists(keys.fetch_call_shard(ident, shard))


def test_a_recovery_moves_nothing_from_a_list_that_changed(cconfig: Config) -> None:
    store = cconfig.store
    store.push([("default", orjson.dumps({"jid": "a", "queue": "default"}))])
    ident = "slow:1:abc"
    store.register_fetcher(ident, b'["default"]')
    store.fetch(ident, ["default"], 1)

    def plan(
        queue: str, raws: list[bytes], ahead: frozenset[bytes]
    ) -> tuple[list[bytes], list[bytes]]:
        store.push([("default", orjson.dumps({"jid": "b", "queue": "default"}))])
        store.fetch(ident, ["default"], 1)  # the "dead" process fetched: alive
        return raws, []

    assert store.recover_orphans("me:2:x", plan, time.time(), 100, 1e6) is None
    assert store.in_progress_sizes(ident, ["default"]) == [2]


def test_prometheus_and_status_read_the_cluster(cconfig: Config) -> None:
    _schedule(cconfig, 3, "hot")
    kiq.Client(cconfig).push({"class": "ClusterRecord", "queue": "hot", "args": [1]})
    body, _ = prometheus.render(cconfig)
    text = body.decode()
    assert "kiq_redis_up 1.0" in text
    assert "kiq_scheduled_size 3.0" in text
    assert 'kiq_queue_size{queue="hot"} 1.0' in text
    data = status.snapshot(cconfig)
    assert data["scheduled"] == 3
    assert {q["name"]: q["size"] for q in data["queues"]}["hot"] == 1
    assert len(cconfig.store.info()["cluster_nodes"]) == 3


def test_the_web_ui_and_kiq_status_show_every_shard(cconfig: Config) -> None:
    import warnings

    from kiq.web import create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    jids = _schedule(cconfig, 6, "hot")
    client = kiq.Client(cconfig)
    for i in range(5):
        client.push({"class": "ClusterRecord", "queue": "hot", "args": [i]})
    dead = {"class": "ClusterRecord", "queue": "low", "jid": "d" * 24, "args": [],
            "error_class": "E", "error_message": "m", "failed_at": time.time()}  # fmt: skip
    cconfig.store.bury([orjson.dumps(dead)], time.time(), 100, 1e9)
    with TestClient(create_app(cconfig)) as web:
        assert web.get("/").status_code == 200
        queues = web.get("/queues").text
        assert "hot" in queues
        assert web.get("/queues/hot").text.count("ClusterRecord") >= 5
        scheduled = web.get("/scheduled").text
        assert all(jid in scheduled for jid in jids)  # every partition's shard
        assert "d" * 24 in web.get("/morgue").text
        sidekiq = web.get("/stats").json()["sidekiq"]
        assert sidekiq["scheduled"] == 6
        assert sidekiq["enqueued"] == 5
    command = ["status", "--json", "--redis-url", str(cconfig.redis_url)]
    done = subprocess.run(
        [sys.executable, "-m", "kiq.cli", *command],
        capture_output=True, timeout=60, check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip
    data = orjson.loads(done.stdout)
    assert data["scheduled"] == 6
    assert data["dead"] == 1
    assert {q["name"]: q["size"] for q in data["queues"]}["hot"] == 5
