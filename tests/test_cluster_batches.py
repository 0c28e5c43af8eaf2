"""Batches and workflows on a real Redis Cluster (kiq.store.cluster_batches; docs/cluster.md).

The two-step write is driven directly where the claim is about it (a crash between the
steps leaves the jobs counted and in the outbox, and whoever touches the batch next
delivers them, each once); real worker processes, one SIGKILLed mid-batch, carry a
batch spread over queues and partitions on several primaries to exactly one success
and one complete callback with exact counts; a dying job fires death once; a chain and
a chord run every step once.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import kiq
from kiq import api, workflow
from kiq import payload as wire
from kiq.config import Config
from kiq.keys import batch_root
from tests.support import batch_jobs
from tests.support.batch_jobs import BCallback, BRow, Step
from tests.support.cluster import LocalCluster
from tests.support.servers import Worker
from tests.support.wait import wait_until

sys.path.insert(0, str(Path(__file__).parent / "support"))  # the workers' -r batch_jobs

QUEUES = ["q1", "q2", "q3", "hot"]  # hot: 4 partitions
SETTINGS = ":partitions:\n  hot: 4\n:process_ttl: 3\n:concurrency: 5\n"


@pytest.fixture
def recorded(r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> redis.Redis:
    """Where the support jobs record their runs (the plain test Redis), emptied."""
    r.flushdb()
    monkeypatch.setattr(batch_jobs, "_redis", r)
    return r


def new_batch(config: Config) -> kiq.Batch:
    callbacks = {
        f"on_{event}": (BCallback, {"event": event}) for event in ("success", "complete", "death")
    }
    return kiq.Batch(description="cluster", config=config, **callbacks)


def queued(config: Config, queue: str) -> list[dict[str, Any]]:
    store = config.store
    return [
        wire.loads(raw)
        for shard in store.shards_of(queue)
        for raw in store._r.lrange(config.keys.queue(shard), 0, -1)
    ]


def spread(config: Config, rows: int, pause: float = 0.0) -> kiq.Batch:
    """A batch of ``rows`` BRow jobs over QUEUES (every shard of them)."""
    batch = new_batch(config)
    with batch.jobs():
        for i in range(rows):
            BRow.set(queue=QUEUES[i % len(QUEUES)]).perform_async(i, "ok", pause)
    return batch


def nodes_of(config: Config, queues: list[str]) -> set[str]:
    store = config.store
    return {
        store._redis.get_node_from_key(config.keys.queue(shard)).name
        for queue in queues
        for shard in store.keys.shards(queue)
    }


def step1_alone(
    config: Config,
    mode: str,
    bid: str,
    jobs: list[tuple[str, str, bytes]],
    fields: dict[str, str] | None = None,
) -> list[Any]:
    """Step 1 of a push (or a launch) alone, as a process killed before its delivery
    leaves it: the family stamped in the sweep's index, then the jobs (jid, queue, raw)
    counted and written to the outbox (cluster_batch_add.lua); its reply."""
    store, k = config.store, config.keys
    stamp = store._stamp(bid)
    keys = [k.batch(bid), k.batch(bid, "jids"), k.batch_outbox(bid), k.batch_outbox_seal(bid)]
    args: list[Any] = [mode, 60, repr(wire.now()), repr(stamp), len(fields or {})]
    for name, value in (fields or {}).items():
        args += (name, value)
    for jid, queue, raw in jobs:
        args += (jid, queue, "", raw)
    return list(store._run_batch_script("cluster_batch_add", keys, args))


def test_a_batch_push_counts_every_job_and_delivers_each_once(cconfig: Config) -> None:
    assert len(nodes_of(cconfig, QUEUES)) >= 2  # the batch's jobs span primaries
    batch = spread(cconfig, 40)
    jids = {job["jid"] for q in QUEUES for job in queued(cconfig, q)}
    assert len(jids) == 40
    assert {job["bid"] for q in QUEUES for job in queued(cconfig, q)} == {batch.bid}
    status = kiq.BatchStatus(batch.bid)
    assert (status.total, status.pending) == (40, 40)
    assert cconfig.store._r.hlen(cconfig.keys.batch_outbox(batch.bid)) == 0  # delivered
    assert [bid for bid, _ in cconfig.store.batch_index(0, -1, 0.0)] == [batch.bid]
    with kiq.Batch(batch.bid, config=cconfig).jobs():  # re-opened: a job for later
        later = str(BRow.set(queue="hot").perform_in(600, 99))
    shard = cconfig.keys.shard_of("hot", later)
    (raw,) = cconfig.store._r.zrange(cconfig.keys.schedule_shard(shard), 0, -1)
    assert wire.loads(raw)["jid"] == later  # on its partition's schedule shard
    assert kiq.BatchStatus(batch.bid).total == 41


def test_a_crash_between_count_and_push_is_repaired_by_the_next_touch(cconfig: Config) -> None:
    batch = new_batch(cconfig)
    with batch.jobs():
        BRow.set(queue="q1").perform_async(0)
    store = cconfig.store
    raw = wire.dumps(
        {"class": "BRow", "queue": "q2", "args": [1], "jid": "f" * 24, "bid": batch.bid}
    )
    # Step 1 alone, as a process killed before its delivery leaves it:
    assert step1_alone(cconfig, "push", batch.bid, [("f" * 24, "q2", raw)]) == [1, 1]
    assert queued(cconfig, "q2") == []
    assert kiq.BatchStatus(batch.bid).pending == 2  # counted first: never run uncounted
    assert [job["jid"] for job in queued(cconfig, "q2")] == ["f" * 24]  # the read delivered
    # A delivery repeated after its outbox delete was lost pushes nothing twice:
    store._r.hset(cconfig.keys.batch_outbox(batch.bid), "j|" + "f" * 24, b"|q2|" + raw)
    assert store.batch_deliver(batch.bid) == 0
    assert len(queued(cconfig, "q2")) == 1
    assert store._r.hlen(cconfig.keys.batch_outbox(batch.bid)) == 0


def test_a_callback_decided_but_not_pushed_is_pushed_once_by_the_recovered_jobs_check(
    cconfig: Config,
) -> None:
    batch = new_batch(cconfig)
    with batch.jobs():
        jid = str(BRow.set(queue="q1").perform_async(0))
    store = cconfig.store
    # The outcome's script alone (its process killed before delivering the callbacks):
    args = [cconfig.keys.prefix, "success", batch.bid, jid, "", "1"]
    reply = store._run_batch_script("batch_update", [cconfig.keys.batch(batch.bid)], args)
    assert sorted(reply[:-1]) == [f"{batch.bid}:complete".encode(), f"{batch.bid}:success".encode()]
    assert reply[-1] == 2  # two callbacks in the outbox
    assert queued(cconfig, "default") == []
    # The job was not acknowledged: it re-runs, and its check (kiq_recoveries) delivers.
    assert store.batch_gate(batch.bid, jid) == (True, False, False)
    events = sorted(job["args"][1]["event"] for job in queued(cconfig, "default"))
    assert events == ["complete", "success"]
    assert store.batch_update(batch.bid, "success", jid, "") == []  # idempotent per jid
    assert store.batch_gate(batch.bid, jid) == (True, False, False)
    assert len(queued(cconfig, "default")) == 2  # each callback pushed once


def test_nested_batches_share_the_root_slot_and_the_parent_waits(
    cconfig: Config, recorded: redis.Redis
) -> None:
    from tests.support.inprocess import running

    root = kiq.Batch(description="root", on_success=(BCallback, {"event": "root"}), config=cconfig)
    with root.jobs():
        batch_jobs.BParent.perform_async(2, 2)
    with running(cconfig):
        wait_until(lambda: "root" in {c["event"] for c in batch_jobs.callbacks(recorded)}, 30)
    events = sorted(c["event"] for c in batch_jobs.callbacks(recorded))
    assert events == ["kid-1", "kid-2", "root"]
    (kid,) = kiq.BatchStatus(root.bid).child_bids()
    assert kid.startswith(root.bid + ".")


def _workers(tmp_path: Path, url: str, record_url: str, n: int, first: int = 0) -> list[Worker]:
    args = ["-r", "batch_jobs", *[a for q in [*QUEUES, "default"] for a in ("-q", q)]]
    return [
        Worker(tmp_path, url, *args, record_url=record_url, config_text=SETTINGS, name=f"w{i}")
        for i in range(first, first + n)
    ]


def _stop(workers: list[Worker]) -> None:
    for worker in workers:
        worker.kill()


@pytest.mark.slow
def test_a_batch_over_several_primaries_survives_a_worker_sigkill_callbacks_once(
    cconfig: Config, recorded: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    rows = 120
    batch = spread(cconfig, rows, pause=0.2)
    url = cconfig.redis_url or ""
    workers = _workers(tmp_path, url, redis_url, 2)
    try:

        def busy() -> tuple[Worker, str] | None:  # a worker with 3+ jobs running
            found = {p.pid: p.identity for p in api.ProcessSet(cconfig) if p.busy >= 3}
            return next(((w, found[w.pid]) for w in workers if w.pid in found), None)

        wait_until(lambda: busy() is not None, timeout=30)
        found = busy()
        assert found is not None
        victim, identity = found
        victim.signal(signal.SIGKILL)  # mid-batch, with jobs in progress
        victim.kill()
        assert kiq.BatchStatus(batch.bid).pending > rows // 2
        orphans = cconfig.store.in_progress(identity, QUEUES)
        assert orphans  # taken, not acknowledged: only its recovery can finish them
        workers += _workers(tmp_path, url, redis_url, 1, first=2)
        wait_until(lambda: len(batch_jobs.callbacks(recorded)) >= 2, timeout=60)
        wait_until(lambda: kiq.BatchStatus(batch.bid).pending == 0, timeout=30)
        assert all(queued(cconfig, q) == [] for q in QUEUES)
    except Exception:
        raise AssertionError("\n".join(w.output()[-2000:] for w in workers)) from None
    finally:
        _stop(workers)
    events = sorted(c["event"] for c in batch_jobs.callbacks(recorded))
    assert events == ["complete", "success"]  # each once, no death
    done = {int(k): v for k, v in batch_jobs.runs(recorded, batch_jobs.DONE).items()}
    assert set(done) == set(range(rows))  # every row finished
    assert all(queued(cconfig, q) == [] for q in QUEUES)
    assert cconfig.store.in_progress(identity, QUEUES) == []  # recovered
    status = kiq.BatchStatus(batch.bid)
    assert (status.total, status.pending, status.failures) == (rows, 0, 0)
    success = next(c for c in batch_jobs.callbacks(recorded) if c["event"] == "success")
    assert (success["total"], success["pending"]) == (rows, 0)


@pytest.mark.slow
def test_a_dying_job_fires_death_and_complete_once_never_success(
    cconfig: Config, recorded: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    batch = new_batch(cconfig)
    with batch.jobs():
        for i in range(8):
            BRow.set(queue=QUEUES[i % 4]).perform_async(i)
        BRow.set(queue="hot", retry=0).perform_async(99, "die")
    workers = _workers(tmp_path, cconfig.redis_url or "", redis_url, 1)
    try:
        wait_until(lambda: len(batch_jobs.callbacks(recorded)) >= 2, timeout=30)
        wait_until(lambda: kiq.BatchStatus(batch.bid).dead == 1, timeout=10)
    finally:
        _stop(workers)
    events = sorted(c["event"] for c in batch_jobs.callbacks(recorded))
    assert events == ["complete", "death"]
    status = kiq.BatchStatus(batch.bid)
    assert (status.total, status.pending, status.failures, status.dead) == (9, 1, 1, 1)
    assert not status.success


@pytest.mark.slow
def test_a_chain_and_a_chord_run_every_step_once_on_a_cluster(
    cconfig: Config, recorded: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    chain = kiq.chain(
        Step.s("a", 1, queue="q1"),
        Step.s("b", 2, queue="q2"),
        Step.s("c", 3, queue="hot"),
        pass_result=True,
    )
    chord = kiq.chord(
        kiq.group(Step.s(f"g{i}", i, queue=QUEUES[i % 4]) for i in range(6)),
        Step.s("sum", 0, queue="q3"),
        pass_result=True,
    )
    wids = [chain.start(config=cconfig), chord.start(config=cconfig)]
    workers = _workers(tmp_path, cconfig.redis_url or "", redis_url, 2)
    try:
        for wid in wids:
            wait_until(
                lambda wid=wid: kiq.WorkflowStatus(wid).state == "succeeded",  # type: ignore[misc]
                timeout=60,
            )
    except Exception:
        raise AssertionError("\n".join(w.output()[-2000:] for w in workers)) from None
    finally:
        _stop(workers)
    steps = ["a", "b", "c", "sum", *[f"g{i}" for i in range(6)]]
    assert batch_jobs.runs(recorded) == dict.fromkeys(steps, 1)
    out = {k: json.loads(v) for k, v in recorded.hgetall("bt:out").items()}
    assert out["c"] == [3, 3]  # a's 1 + b's 2, passed down the chain
    assert out["sum"] == [0, [0, 1, 2, 3, 4, 5]]  # the group's results, in order


@pytest.mark.slow
def test_sigkill_the_batch_slots_primary_mid_batch_callbacks_once_with_wait_replicas(
    recorded: redis.Redis, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The primary holding the batch's keys (its counts, its outbox) is SIGKILLed while
    workers record outcomes into it: its replica is promoted, the outcomes cut by the
    failover are recorded again (idempotent per jid), and with ``wait_replicas: 1``
    nothing acknowledged is lost: success and complete fire once, the counts exact."""
    with LocalCluster(tmp_path / "cluster") as cluster:
        config = Config(redis_url=cluster.url, partitions={"hot": 4}, wait_replicas=1)
        monkeypatch.setattr(kiq.config, "_default", config)
        rows = 120
        batch = spread(config, rows, pause=0.05)
        victim_key = config.keys.batch(batch.bid)
        victim = cluster.primary_of(victim_key)
        settings = SETTINGS + ":wait_replicas: 1\n"
        args = ["-r", "batch_jobs", *[a for q in [*QUEUES, "default"] for a in ("-q", q)]]
        workers = [
            Worker(
                tmp_path,
                cluster.url,
                *args,
                record_url=redis_url,
                config_text=settings,
                name=f"f{i}",
            )
            for i in range(2)
        ]
        try:
            wait_until(lambda: len(batch_jobs.runs(recorded)) >= rows // 4, timeout=30)
            cluster.kill(victim)
            assert len(batch_jobs.runs(recorded, batch_jobs.DONE)) < rows  # mid-batch
            cluster.wait_promoted(victim, victim_key)
            victim.start()  # rejoins as a replica of the promoted one
            wait_until(lambda: len(batch_jobs.callbacks(recorded)) >= 2, timeout=90)
            wait_until(lambda: kiq.BatchStatus(batch.bid).pending == 0, timeout=30)
        except Exception:
            raise AssertionError("\n".join(w.output()[-3000:] for w in workers)) from None
        finally:
            _stop(workers)
        events = sorted(c["event"] for c in batch_jobs.callbacks(recorded))
        assert events == ["complete", "success"]
        status = kiq.BatchStatus(batch.bid)
        assert (status.total, status.pending, status.failures) == (rows, 0, 0)
        done = {int(k) for k in batch_jobs.runs(recorded, batch_jobs.DONE)}
        assert done == set(range(rows))
        config.close()


def test_a_step_launch_cut_before_its_push_is_pushed_once_by_the_next_advance(
    cconfig: Config,
) -> None:
    """A workflow step's batch created and its jobs counted, its process killed before
    the delivery: the re-run of ``advance`` (its callback job recovered) finds the step
    launched, and its read of the step delivers the jobs, once."""
    wid = kiq.chain(Step.s("a", queue="q1"), Step.s("b", queue="q2")).start(config=cconfig)
    bid = workflow.step_bid(wid, "1")
    jid = workflow._jid(wid, "1", 0)
    raw = wire.dumps({"class": "Step", "queue": "q2", "args": ["b"], "jid": jid, "bid": bid})
    fields = {"description": "step 1"}
    assert step1_alone(cconfig, "launch", bid, [(jid, "q2", raw)], fields) == [1, 1]
    assert queued(cconfig, "q2") == []
    for _ in range(2):  # twice: the second finds nothing left to push
        workflow.advance(cconfig, wid)
    assert [job["jid"] for job in queued(cconfig, "q2")] == [jid]
    assert kiq.BatchStatus(bid).pending == 1


def test_a_cancelled_and_an_expired_member_count_as_done_and_the_batch_fires_once(
    cconfig: Config, recorded: redis.Redis
) -> None:
    """As on one Redis (tests/test_batch.py): a member cancelled while waiting in a
    partitioned queue (kiq.api.cancel) and one expired before it started count as a
    success for their batch, whose counts are on another slot than their queues:
    ``complete`` and ``success`` fire once, nothing is left pending."""
    from tests.support.inprocess import running

    batch = new_batch(cconfig)
    with batch.jobs():
        BRow.set(queue="q1").perform_async(1)
        waiting = BRow.set(queue="hot").perform_async(2) or ""
        BRow.set(queue="q2", expires_at=wire.now() - 1).perform_async(3)
        BRow.set(queue="q3").perform_async(4)
    assert api.cancel(waiting, cconfig).outcome == "removed"
    assert kiq.BatchStatus(batch.bid).pending == 3  # the cancelled one counted at once
    assert queued(cconfig, "hot") == []
    cconfig.queues = [(q, 0) for q in QUEUES] + [("default", 0)]
    with running(cconfig):
        wait_until(lambda: len(batch_jobs.callbacks(recorded)) >= 2, timeout=30)
        wait_until(lambda: kiq.BatchStatus(batch.bid).pending == 0, timeout=10)
    events = sorted(c["event"] for c in batch_jobs.callbacks(recorded))
    assert events == ["complete", "success"]
    assert batch_jobs.runs(recorded) == {"1": 1, "4": 1}  # 2 cancelled, 3 expired
    status = kiq.BatchStatus(batch.bid)
    assert (status.total, status.pending, status.failures) == (4, 0, 0)
    assert api.fate(waiting, cconfig)["fate"] == "cancelled"


# -- the outbox sweep: a push whose writer died between its steps, nobody touching it ---
class Crash(BaseException):
    """The writer's process dying right after step 1 (nothing below catches it)."""


@contextlib.contextmanager
def crash_before_delivery(config: Config) -> Iterator[None]:
    """Within: every push's step 2 raises Crash, as if its process died after step 1."""

    def crash(*args: object) -> int:
        raise Crash

    config.store._deliver = crash  # type: ignore[method-assign]
    try:
        yield
    finally:
        del config.store._deliver


def index_of(config: Config) -> dict[str, float]:
    pairs = config.store._r.zrange(config.keys.batch_outboxes, 0, -1, withscores=True)
    return {root.decode(): score for root, score in pairs}


def test_the_sweep_delivers_a_stranded_push_once_then_seals_and_unindexes_it(
    cconfig: Config,
) -> None:
    store, keys = cconfig.store, cconfig.keys
    bid = "sweep0123456789"
    assert store.batch_open(bid, "t0", 600, wire.now(), "", {"description": "died"})
    jobs = [(f"{i:024x}", QUEUES[i], wire.dumps({"class": "BRow", "jid": f"{i:024x}",
             "queue": QUEUES[i], "args": [i], "bid": bid})) for i in range(4)]  # fmt: skip
    assert step1_alone(cconfig, "push", bid, jobs) == [4, 4]  # its writer dies here
    stamp = index_of(cconfig)[bid]
    assert store.batch_sweep(stamp + 29, 30.0) == 0  # within the grace: left to its writer
    assert all(queued(cconfig, q) == [] for q in QUEUES)
    assert store.batch_sweep(stamp + 31, 30.0) == 4  # past it: delivered
    assert sorted(j["jid"] for q in QUEUES for j in queued(cconfig, q)) == [j[0] for j in jobs]
    assert store._r.hlen(keys.batch_outbox(bid)) == 0
    assert store.batch_sweep(stamp + 31, 30.0) == 0  # again: nothing pushed twice
    assert index_of(cconfig) == {}  # the empty outbox sealed, its entry removed
    assert float(store._r.get(keys.batch_outbox_seal(bid))) == stamp
    assert sum(len(queued(cconfig, q)) for q in QUEUES) == 4
    # A writer still holding that stamp (a stalled step 1) writes nothing now...
    late = wire.dumps({"class": "BRow", "jid": "e" * 24, "queue": "q1", "args": [9], "bid": bid})
    k = keys
    refused = store._run_batch_script(
        "cluster_batch_add",
        [k.batch(bid), k.batch(bid, "jids"), k.batch_outbox(bid), k.batch_outbox_seal(bid)],
        ["push", 60, "0", repr(stamp), 0, "e" * 24, "q1", "", late],
    )
    assert refused[0] == -2
    assert float(refused[1]) == stamp
    assert kiq.BatchStatus(bid).total == 4
    # ...and the push path, its cached stamp refused, stamps above the seal and pushes.
    assert store.batch_push(bid, 600, [("e" * 24, "q1", None, late)]) == 1
    assert index_of(cconfig)[bid] > stamp  # indexed again, above the seal
    assert "e" * 24 in {j["jid"] for j in queued(cconfig, "q1")}
    assert kiq.BatchStatus(bid).total == 5


def test_a_family_the_sweep_cannot_read_is_skipped_loudly_and_the_rest_swept(
    cconfig: Config, caplog: pytest.LogCaptureFixture
) -> None:
    store, keys = cconfig.store, cconfig.keys
    for bid, jid in (("badfam012345678", "a" * 24), ("goodfam01234567", "b" * 24)):
        store.batch_open(bid, "t", 600, wire.now(), "", {"description": "died"})
        raw = wire.dumps({"class": "BRow", "jid": jid, "queue": "q1", "args": [1], "bid": bid})
        assert step1_alone(cconfig, "push", bid, [(jid, "q1", raw)]) == [1, 1]
    store._r.lpush(keys.batch_outbox_seal("badfam012345678"), "not a seal")  # a bad key
    assert store.batch_sweep(wire.now() + 60, 30.0) == 1
    assert [j["jid"] for j in queued(cconfig, "q1")] == ["b" * 24]
    assert "badfam012345678" in index_of(cconfig)  # kept for a later sweep, once fixed
    assert "fix or delete the key" in caplog.text


SWEEPER = """
import sys, redis
from kiq.config import Config
config = Config(redis_url=sys.argv[1], partitions={"hot": 4})
config.store.known_queues()
redis.Redis.from_url(sys.argv[2]).blpop("sweep-go")
print(sum(config.store.batch_sweep(float(sys.argv[3]), 30.0) for _ in range(3)))
"""


def test_two_processes_sweeping_at_once_push_each_stranded_job_once(
    cconfig: Config, recorded: redis.Redis, redis_url: str
) -> None:
    import subprocess

    rows = []
    for n in range(12):  # 12 families, each with 3 jobs its writer never delivered
        bid = f"two{n:02d}0123456789"
        cconfig.store.batch_open(bid, "t", 600, wire.now(), "", {"description": "died"})
        jobs = []
        for i in range(3):
            jid, queue = f"{n:02d}{i:022x}", QUEUES[(n + i) % 4]
            raw = {"class": "BRow", "jid": jid, "queue": queue, "args": [i], "bid": bid}
            jobs.append((jid, queue, wire.dumps(raw)))
            rows.append(jid)
        assert step1_alone(cconfig, "push", bid, jobs) == [3, 3]
    later = repr(wire.now() + 60)
    env = {"PYTHONPATH": str(Path(__file__).parent.parent / "src")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SWEEPER, cconfig.redis_url or "", redis_url, later],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    wait_until(lambda: _blocked(recorded) == 2, 30)
    recorded.rpush("sweep-go", "1", "1")  # both at once
    pushed = [int(p.communicate(timeout=60)[0].strip()) for p in procs]
    assert sum(pushed) == len(rows)  # split between them, no job pushed by both
    assert sorted(j["jid"] for q in QUEUES for j in queued(cconfig, q)) == sorted(rows)
    assert index_of(cconfig) == {}
    assert cconfig.store.batch_sweep(float(later), 30.0) == 0


def _blocked(r: redis.Redis) -> int:
    return sum(1 for c in r.client_list() if c.get("cmd") == "blpop")


GRACE = 2.0  # the workers' batch_sweep_grace here (30 s by default)


@pytest.mark.slow
def test_pushes_whose_writer_died_are_delivered_by_a_running_workers_sweep_run_once(
    cconfig: Config,
    recorded: redis.Redis,
    redis_url: str,
    tmp_path: Path,
) -> None:
    """Three writers die between step 1 and step 2, and nobody reads their batches: a
    jobs() block's first push (its block stays open: no callback, as on one Redis), a
    batch launched with callbacks, a workflow's first step (``chain.start``). A running
    worker's sweep delivers each within the grace and one tick; every job runs once,
    the batch's success and complete fire once, the workflow runs every step once."""
    settings = SETTINGS + f":batch_sweep_grace: {GRACE}\n"
    args = ["-r", "batch_jobs", *[a for q in [*QUEUES, "default"] for a in ("-q", q)]]
    workers = [
        Worker(tmp_path, cconfig.redis_url or "", *args, record_url=redis_url,
               config_text=settings, name="sweeper")
    ]  # fmt: skip
    store = cconfig.store
    try:
        wait_until(lambda: len(list(api.ProcessSet(cconfig))) == 1, timeout=30)
        opened = "died0123456789"  # a jobs() block whose process died at its first push
        store.batch_open(opened, "t", 600, wire.now(), "", {"description": "died"})
        raws = [
            (f"{i:024x}", q, wire.dumps({"class": "BRow", "jid": f"{i:024x}", "queue": q,
             "args": [i], "bid": opened})) for i, q in enumerate(QUEUES)
        ]  # fmt: skip
        assert step1_alone(cconfig, "push", opened, raws) == [4, 4]
        launched = "launched0123456"  # created with its jobs and callbacks, never delivered
        fields = kiq.batch.batch_fields(cconfig, launched, "launched", new_batch(cconfig).callbacks)
        members = kiq.client.Client(cconfig).encode_members(
            [{"class": "BRow", "jid": f"{10 + i:024x}", "queue": q, "args": [10 + i],
              "bid": launched, "created_at": wire.now()} for i, q in enumerate(QUEUES)]
        )  # fmt: skip
        chain = kiq.chain(Step.s("a", 1, queue="q1"), Step.s("b", 2, queue="hot"))
        with crash_before_delivery(cconfig):
            with pytest.raises(Crash):
                store.batch_launch(launched, 600, wire.now(), fields, members)
            with pytest.raises(Crash):
                chain.start(config=cconfig)
        stamps = index_of(cconfig)
        assert batch_jobs.runs(recorded) == {}  # nothing delivered by its writer
        (wid,) = [w.decode() for w in store._r.zrange(cconfig.keys.workflows, 0, -1)]
        first = workflow.step_bid(wid, "0")
        assert set(stamps) == {opened, launched, batch_root(first)}

        def outbox_empty(bid: str) -> bool:  # read raw: a batch read would deliver it
            return store._r.hlen(cconfig.keys.batch_outbox(bid)) == 0

        for bid in (opened, launched, first):
            wait_until(lambda bid=bid: outbox_empty(bid), timeout=GRACE + 10)  # type: ignore[misc]
            delay = wire.now() - stamps[batch_root(bid)]
            assert GRACE <= delay <= GRACE + 5  # the grace + one tick (0.2 s), on a loaded box
        wait_until(lambda: len(batch_jobs.callbacks(recorded)) >= 2, timeout=30)
        wait_until(lambda: kiq.WorkflowStatus(wid).state == "succeeded", timeout=30)
        wait_until(lambda: len(batch_jobs.runs(recorded, batch_jobs.DONE)) == 10, timeout=30)
        wait_until(lambda: index_of(cconfig) == {}, timeout=GRACE + 10)  # all swept
    except Exception as exc:
        logs = "\n".join(w.output()[-3000:] for w in workers)
        raise AssertionError(f"{exc!r}\n{logs}") from exc
    finally:
        _stop(workers)
    expected = {str(i): 1 for i in [0, 1, 2, 3, 10, 11, 12, 13]} | {"a": 1, "b": 1}
    assert batch_jobs.runs(recorded) == expected  # each job once
    events = sorted(c["event"] for c in batch_jobs.callbacks(recorded))
    assert events == ["complete", "success"]  # the launched batch's, once each
    assert {c["bid"] for c in batch_jobs.callbacks(recorded)} == {launched}
    assert kiq.BatchStatus(opened).pending == 0  # ran, its block still open: no callback
    assert all(queued(cconfig, q) == [] for q in [*QUEUES, "default"])


def test_a_sweep_index_of_another_type_is_logged_and_the_tick_goes_on(
    cconfig: Config, caplog: pytest.LogCaptureFixture
) -> None:
    """The outbox index holding a string (hostile, or a key clash): the sweep says which
    key to delete and returns, instead of raising WRONGTYPE into the poller (which would
    restart it, with its scheduled jobs' part of the tick, every tick)."""
    store, keys = cconfig.store, cconfig.keys
    store._r.set(keys.batch_outboxes, "not a zset")
    assert store.batch_sweep(wire.now() + 60, 30.0) == 0
    assert f"batch outbox index {keys.batch_outboxes} holds another type" in caplog.text
