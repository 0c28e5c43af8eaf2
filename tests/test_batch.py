"""Batches (issue 17 point 1): Sidekiq Pro's API and keys, on a real Redis.

The scripts are driven directly where the claim is about the script (atomic push and
membership, exactly-once callbacks under concurrent outcomes, idempotence per jid),
and through an in-process worker where it is about the job's path (outcomes recorded
before the ack, nesting, invalidation, a job adding to its own batch).
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis

import kiq
from kiq import payload as wire
from kiq.config import Config
from kiq.errors import BatchError
from tests.support import batch_jobs
from tests.support.batch_jobs import BAdder, BCallback, BParent, BRow
from tests.support.inprocess import running
from tests.support.wait import wait_until


@pytest.fixture
def recorded(r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> redis.Redis:
    """The support jobs record into this test's database."""
    monkeypatch.setattr(batch_jobs, "_redis", r)
    return r


def callback_queue(r: redis.Redis) -> list[dict[str, Any]]:
    return [wire.loads(raw) for raw in r.lrange("queue:default", 0, -1)]


def new_batch(config: Config, **kw: Any) -> kiq.Batch:
    callbacks = {
        f"on_{event}": (BCallback, {"event": event}) for event in ("success", "complete", "death")
    }
    return kiq.Batch(description="t", config=config, **{**callbacks, **kw})


def test_pushes_inside_jobs_join_the_batch_and_are_counted(config: Config, r: redis.Redis) -> None:
    batch = new_batch(config)
    with batch.jobs():
        jids = [BRow.perform_async(i) for i in range(3)]
        jids += BRow.perform_bulk([[3], [4]])
        BRow.perform_in(60, 5)
    outside = BRow.perform_async(6)
    members = set(r.smembers(f"b-{batch.bid}-jids"))
    assert len(members) == 6
    assert set(jids) <= members
    assert outside not in members
    queued = [wire.loads(raw) for raw in r.lrange("queue:default", 0, -1)]
    assert {job["bid"] for job in queued if job["jid"] != outside} == {batch.bid}
    assert "bid" not in next(job for job in queued if job["jid"] == outside)
    assert wire.loads(r.zrange("schedule", 0, -1)[0])["bid"] == batch.bid
    status = kiq.BatchStatus(batch.bid)
    assert (status.total, status.pending, status.failures) == (6, 6, 0)
    assert status.description == "t"
    assert not status.complete
    assert r.zscore("batches", batch.bid) is not None
    assert 0 < r.ttl(f"b-{batch.bid}") <= config.batch_ttl


def test_a_push_into_a_missing_batch_writes_nothing(config: Config, r: redis.Redis) -> None:
    with pytest.raises(BatchError, match="does not exist"):
        kiq.Client(config).push({"class": BRow, "args": [1], "bid": "nope"})
    r.set("queue:broken", "a string")
    batch = new_batch(config)
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"), batch.jobs():
        BRow.set(queue="broken").perform_async(1)
    assert r.llen("queue:default") == 0
    assert r.scard(f"b-{batch.bid}-jids") == 0
    assert kiq.BatchStatus(batch.bid).total == 0


def test_success_fires_exactly_once_when_outcomes_race(config: Config, r: redis.Redis) -> None:
    batch = new_batch(config)
    with batch.jobs():
        jids = [j for j in BRow.perform_bulk([[i] for i in range(200)]) if j]
    r.delete("queue:default")
    store, barrier = config.store, threading.Barrier(8)

    def finish(part: list[str]) -> None:
        barrier.wait()
        for jid in part:
            store.batch_update(batch.bid, "success", jid, "")
            store.batch_update(batch.bid, "success", jid, "")  # a re-run: no double count

    threads = [threading.Thread(target=finish, args=(jids[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    events = [job["args"][1]["event"] for job in callback_queue(r)]
    assert sorted(events) == ["complete", "success"]
    status = kiq.BatchStatus(batch.bid)
    assert (status.total, status.pending, status.failures) == (200, 0, 0)


def test_complete_counts_failures_and_success_waits_for_the_retry(config: Config) -> None:
    batch = new_batch(config)
    with batch.jobs():
        a, b = BRow.perform_async(1), BRow.perform_async(2)
    store = config.store
    assert store.batch_update(batch.bid, "failure", a or "", '{"error_class":"E"}') == []
    assert store.batch_update(batch.bid, "failure", a or "", '{"error_class":"E"}') == []
    assert store.batch_update(batch.bid, "success", b or "", "") == [f"{batch.bid}:complete"]
    status = kiq.BatchStatus(batch.bid)
    assert (status.pending, status.failures, status.complete, status.success) == (1, 1, True, False)
    assert status.failure_info() == [{"jid": a, "error_class": "E"}]
    assert store.batch_update(batch.bid, "success", a or "", "") == [f"{batch.bid}:success"]
    assert kiq.BatchStatus(batch.bid).failures == 0


def test_death_fires_once_with_complete_and_never_success(config: Config, r: redis.Redis) -> None:
    batch = new_batch(config)
    with batch.jobs():
        a, b = BRow.perform_async(1), BRow.perform_async(2)
    store = config.store
    assert store.batch_update(batch.bid, "death", a or "", "{}") == [f"{batch.bid}:death"]
    assert store.batch_update(batch.bid, "death", a or "", "{}") == []
    assert store.batch_update(batch.bid, "success", b or "", "") == [f"{batch.bid}:complete"]
    status = kiq.BatchStatus(batch.bid)
    assert (status.death, status.complete, status.success, status.dead) == (True, True, False, 1)
    assert status.dead_jids() == [a]


def test_no_callback_fires_while_the_jobs_block_is_open(config: Config) -> None:
    batch = new_batch(config)
    with batch.jobs():
        jid = BRow.perform_async(1) or ""
        assert config.store.batch_update(batch.bid, "success", jid, "") == []
        assert not kiq.BatchStatus(batch.bid).success
    assert kiq.BatchStatus(batch.bid).success


def test_a_block_that_raises_leaves_the_batch_open(config: Config) -> None:
    batch = new_batch(config)
    jid = ""

    def build() -> None:
        nonlocal jid
        with batch.jobs():
            jid = BRow.perform_async(1) or ""
            raise ValueError("half built")

    with pytest.raises(ValueError, match="half built"):
        build()
    assert config.store.batch_update(batch.bid, "success", jid, "") == []
    assert kiq.BatchStatus(batch.bid).open_blocks == 1


def test_reopen_by_bid_adds_jobs(config: Config) -> None:
    batch = new_batch(config)
    with batch.jobs():
        BRow.perform_async(1)
    with kiq.Batch(batch.bid, config=config).jobs():
        BRow.perform_async(2)
    assert kiq.BatchStatus(batch.bid).total == 2
    with pytest.raises(BatchError, match="does not exist"), kiq.Batch("gone", config=config).jobs():
        pass


def test_the_worker_records_outcomes_and_runs_callbacks(
    config: Config, recorded: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = new_batch(config)
    with batch.jobs():
        for i in range(5):
            BRow.perform_async(i, "flaky" if i == 2 else "ok")
    monkeypatch.setattr("kiq.retry.jitter", lambda count, rng=None: 0)
    with running(config):
        wait_until(lambda: len(batch_jobs.callbacks(recorded)) == 2, timeout=20)
    events = {c["event"]: c for c in batch_jobs.callbacks(recorded)}
    assert events["complete"]["failures"] >= 0
    assert events["success"]["pending"] == 0
    assert batch_jobs.runs(recorded)["2"] == 2
    status = kiq.BatchStatus(batch.bid)
    assert (status.total, status.pending, status.failures) == (5, 0, 0)


def test_a_recovered_job_whose_success_is_recorded_is_not_run_again(
    config: Config, recorded: redis.Redis
) -> None:
    batch = new_batch(config)
    with batch.jobs():
        jid = BRow.perform_async(1) or ""
        BRow.perform_async(2)
    # a crash between the outcome script and the ack: the recovery puts the job back,
    # marked as recovered (kiq_recoveries), as kiq.recover does
    config.store.batch_update(batch.bid, "success", jid, "")
    raws = recorded.lrange("queue:default", 0, -1)
    recorded.delete("queue:default")
    for raw in reversed(raws):
        job = wire.loads(raw)
        if job["jid"] == jid:
            job["kiq_recoveries"] = 1
        recorded.lpush("queue:default", wire.dumps(job))
    with running(config):
        wait_until(lambda: len(batch_jobs.callbacks(recorded)) == 2, timeout=20)
        wait_until(lambda: recorded.llen("queue:default") == 0, timeout=5)
    assert batch_jobs.runs(recorded) == {"2": 1}


def test_invalidated_batch_skips_its_jobs_and_fires_nothing(
    config: Config, recorded: redis.Redis
) -> None:
    batch = new_batch(config)
    with batch.jobs():
        BRow.perform_async(1)
    assert batch.invalidate_all()
    with running(config):
        wait_until(lambda: kiq.BatchStatus(batch.bid).pending == 0, timeout=20)
    assert batch_jobs.runs(recorded) == {}
    assert batch_jobs.callbacks(recorded) == []
    status = kiq.BatchStatus(batch.bid)
    assert status.invalidated
    assert status.fired == {}
    with pytest.raises(BatchError, match="invalidated"), batch.jobs():
        pass


def test_nested_batches_three_levels_parent_waits(config: Config, recorded: redis.Redis) -> None:
    root = kiq.Batch(description="root", on_success=(BCallback, {"event": "root"}), config=config)
    with root.jobs():
        BParent.perform_async(3, 2)
    with running(config):
        wait_until(lambda: "root" in {c["event"] for c in batch_jobs.callbacks(recorded)}, 30)
    events = sorted(c["event"] for c in batch_jobs.callbacks(recorded))
    assert events == ["kid-1", "kid-2", "kid-3", "root"]
    chain = [kiq.BatchStatus(root.bid)]
    while chain[-1].child_count:
        (kid,) = chain[-1].child_bids()
        chain.append(kiq.BatchStatus(kid))
        assert chain[-1].parent_bid == chain[-2].bid
    assert len(chain) == 4  # root + three levels
    fired = [status.fired["success"] for status in chain]
    assert fired == sorted(fired, reverse=True)  # each parent after its child
    assert len(batch_jobs.runs(recorded)) == 3 * 2 + 3  # rows + the three parents


def test_expiry_is_the_configured_ttl(config: Config, r: redis.Redis) -> None:
    config.batch_ttl = 120.0
    batch = new_batch(config)
    with batch.jobs():
        BRow.perform_async(1)
    assert 0 < r.ttl(f"b-{batch.bid}") <= 120
    assert 0 < r.ttl(f"b-{batch.bid}-jids") <= 120


def test_a_running_job_adds_to_its_own_batch_and_success_waits(
    config: Config, recorded: redis.Redis
) -> None:
    batch = new_batch(config)
    with batch.jobs():
        BAdder.perform_async(3)
    with running(config):
        wait_until(lambda: "success" in {c["event"] for c in batch_jobs.callbacks(recorded)}, 20)
    success = next(c for c in batch_jobs.callbacks(recorded) if c["event"] == "success")
    assert (success["total"], success["pending"]) == (4, 0)
    assert batch_jobs.runs(recorded, batch_jobs.DONE) == {"500": 1, "501": 1, "502": 1}


def test_a_bid_naming_a_key_of_another_type_costs_that_job_only(
    config: Config, recorded: redis.Redis
) -> None:
    recorded.set("b-evil", "not a batch")
    evil = {"class": "BRow", "args": [1], "jid": "e" * 24, "queue": "default", "retry": 0}
    recorded.lpush("queue:default", wire.dumps({**evil, "bid": "evil"}))
    BRow.perform_async(2)
    with running(config):
        wait_until(lambda: batch_jobs.runs(recorded, batch_jobs.DONE).get("2") == 1, 20)
        wait_until(lambda: recorded.zcard("dead") == 1, timeout=10)
    (dead,) = recorded.zrange("dead", 0, -1)
    assert wire.loads(dead)["error_class"] == "ResponseError"
    assert recorded.get("b-evil") == "not a batch"


class Patient(kiq.Job, name="test_batch.Patient"):
    """Runs until it is cancelled (a thread job checks ``cancelled()``), at most 30 s."""

    def perform(self, n: int) -> None:
        batch_jobs._redis.hincrby(batch_jobs.RUNS, str(n), 1)
        wait_until(self.cancelled, timeout=30)


def test_cancelled_and_expired_members_count_as_done_and_the_batch_fires(
    config: Config, recorded: redis.Redis
) -> None:
    """A member cancelled while waiting (kiq.api.cancel), one cancelled while running and
    one expired before it started each count as a success for the batch (Sidekiq Pro's
    rule for an expired job): ``complete`` and ``success`` fire once, nothing is left
    pending (before, such a batch never fired until it expired)."""
    import kiq.api

    batch = new_batch(config)
    with batch.jobs():
        BRow.perform_async(1)
        waiting = BRow.perform_async(2) or ""
        running_jid = Patient.perform_async(3) or ""
        BRow.set(expires_at=wire.now() - 1).perform_async(4)
    assert kiq.api.cancel(waiting).outcome == "removed"
    with running(config):
        wait_until(lambda: batch_jobs.runs(recorded).get("3") == 1, timeout=20)
        assert kiq.api.cancel(running_jid).outcome == "cancelling"
        wait_until(lambda: len(batch_jobs.callbacks(recorded)) == 2, timeout=20)
    events = sorted(c["event"] for c in batch_jobs.callbacks(recorded))
    assert events == ["complete", "success"]
    assert batch_jobs.runs(recorded) == {"1": 1, "3": 1}  # 2 cancelled, 4 expired: never run
    status = kiq.BatchStatus(batch.bid)
    assert (status.total, status.pending, status.failures) == (4, 0, 0)
    assert kiq.api.fate(running_jid)["fate"] == "cancelled"
