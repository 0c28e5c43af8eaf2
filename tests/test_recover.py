"""Crash recovery: the in-progress jobs of a process whose heartbeat expired go back to
their queues; a live process's jobs are never taken; a job that keeps killing its
process ends in the dead set as ``kiq.PoisonJob`` (issue 4).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from kiq.client import Client
from kiq.recover import POISON, Recoverer
from tests.support import jobs
from tests.support.jobs import identity_of, records
from tests.support.wait import wait_until

DEAD = "host:111:dead00000000"
ALIVE = "host:222:a11ve0000000"
ME = "host:333:5e1f00000000"


def take(config, identity: str, queue: str, n: int, **fields) -> list[str | None]:
    """Push ``n`` jobs to ``queue`` and let ``identity`` fetch them; return their jids."""
    client = Client(config)
    jids = [
        client.push({"class": "Record", "args": [i], "queue": queue, **fields}) for i in range(n)
    ]
    config.store.register_fetcher(identity, orjson.dumps([queue]))
    assert len(config.store.fetch(identity, [queue], n)) == n
    return jids


def queued(r, queue: str) -> list[dict[str, Any]]:
    """Payloads of ``queue:<queue>`` in the order they will be fetched."""
    return [orjson.loads(raw) for raw in reversed(r.lrange(f"queue:{queue}", 0, -1))]


def beating(r, identity: str) -> None:
    r.hset(identity, "info", "{}")
    r.expire(identity, 60)


# -- Recoverer.sweep in process ----------------------------------------------------------


def test_sweep_requeues_a_dead_process_jobs_oldest_first(config, r):
    """A registered fetcher with no heartbeat hash is dead: its in-progress jobs go back
    to the tail of their queue, the oldest fetched next, and it is unregistered."""
    jids = take(config, DEAD, "default", 3)

    assert Recoverer(config, ME).sweep() == 3

    assert [p["jid"] for p in queued(r, "default")] == jids
    assert r.exists(f"kiq|inprogress|{DEAD}|default") == 0
    assert r.hexists("kiq|fetchers", DEAD) is False
    assert r.sismember("queues", "default")


def test_sweep_counts_each_recovery_in_the_payload(config, r):
    """Every recovery increments ``kiq_recoveries`` in the requeued payload."""
    take(config, DEAD, "default", 1, kiq_recoveries=1)

    Recoverer(config, ME).sweep()

    (payload,) = queued(r, "default")
    assert payload["kiq_recoveries"] == 2


def test_only_the_jobs_without_an_ahead_mark_count_as_recovered(config, r):
    """Jobs a worker took ahead of its slots are marked in ``kiq|ahead|<identity>`` by
    the fetch call itself and never start before a later call releases them: a
    recovery gives ``kiq_recoveries`` only to the unmarked ones (running, or released
    to run), so a busy worker SIGKILLed a few times does not bury good jobs it never
    ran as poison (issue 12). The marks go with the recovery."""
    client = Client(config)
    jids = [client.push({"class": "Record", "args": [i]}) for i in range(20)]
    config.store.register_fetcher(DEAD, orjson.dumps(["default"]))
    taken, marked = config.store.fetch_batch(DEAD, ["default"], 20, ahead_from=8)
    assert marked
    assert len(taken) == 20
    released = [raw for _, raw in taken[8:10]]
    config.store.fetch_batch(DEAD, ["default"], 0, release=released)

    assert Recoverer(config, ME).sweep() == 20

    payloads = queued(r, "default")
    assert [p["jid"] for p in payloads] == jids  # order kept: oldest fetched next
    assert [p.get("kiq_recoveries") for p in payloads] == [1] * 10 + [None] * 10
    assert not r.exists(f"kiq|ahead|{DEAD}")


def test_a_foreign_key_where_the_ahead_marks_live_counts_every_job(config, r):
    """A key of another type at ``kiq|ahead|<identity>``: the fetch still takes its jobs
    but reports them unmarked, and a recovery then blames them all (safe side)."""
    client = Client(config)
    for i in range(3):
        client.push({"class": "Record", "args": [i]})
    r.set(f"kiq|ahead|{DEAD}", "not a set")
    config.store.register_fetcher(DEAD, orjson.dumps(["default"]))
    taken, marked = config.store.fetch_batch(DEAD, ["default"], 3, ahead_from=0)
    assert (len(taken), marked) == (3, False)

    assert Recoverer(config, ME).sweep() == 3

    assert [p.get("kiq_recoveries") for p in queued(r, "default")] == [1, 1, 1]


def test_sweep_never_takes_a_live_process_jobs(config, r):
    """A fetcher whose heartbeat hash exists is alive, however long its jobs run."""
    take(config, ALIVE, "default", 2)
    beating(r, ALIVE)

    assert Recoverer(config, ME).sweep() == 0

    assert r.llen(f"kiq|inprogress|{ALIVE}|default") == 2
    assert r.llen("queue:default") == 0
    assert r.hexists("kiq|fetchers", ALIVE)


def test_sweep_skips_its_own_process(config, r):
    """The sweeping process never recovers its own in-progress jobs."""
    take(config, ME, "default", 1)

    assert Recoverer(config, ME).sweep() == 0
    assert r.llen(f"kiq|inprogress|{ME}|default") == 1


def test_only_one_sweep_runs_at_a_time(config, r):
    """While another process holds the recovery lock, a sweep does nothing."""
    take(config, DEAD, "default", 1)
    r.set("kiq|recover-lock", ALIVE, ex=30)

    assert Recoverer(config, ME).sweep() == 0
    assert r.llen(f"kiq|inprogress|{DEAD}|default") == 1


def test_a_job_recovered_more_than_max_recoveries_times_is_buried_as_poison(config, r):
    """A job whose process died ``max_recoveries + 1`` times goes to the dead set with
    error_class kiq.PoisonJob instead of its queue."""
    config.max_recoveries = 2
    (jid,) = take(config, DEAD, "default", 1, kiq_recoveries=2)

    Recoverer(config, ME).sweep()

    assert r.llen("queue:default") == 0
    ((member, _),) = r.zrange("dead", 0, -1, withscores=True)
    payload = orjson.loads(member)
    assert (payload["jid"], payload["error_class"], payload["kiq_recoveries"]) == (jid, POISON, 3)
    assert "died 3 times" in payload["error_message"]


def test_poison_failed_at_follows_the_timestamp_format(config, r):
    """A poison job's ``failed_at`` is written like every payload time: int epoch ms in
    Sidekiq 8 mode."""
    config.max_recoveries = 0
    config.timestamp_format = "ms"
    take(config, DEAD, "default", 1)
    before = int(time.time() * 1000)

    Recoverer(config, ME).sweep()

    failed_at = orjson.loads(r.zrange("dead", 0, -1)[0])["failed_at"]
    assert isinstance(failed_at, int)
    assert before <= failed_at <= int(time.time() * 1000)


def test_burying_a_poison_job_trims_the_dead_set(config, r):
    """Like every add to the dead set, burying a poison job trims it to dead_max_jobs."""
    config.max_recoveries = 0
    config.dead_max_jobs = 2
    for i in range(3):
        r.zadd("dead", {f'{{"class":"Old","args":[{i}]}}': time.time() - 60 + i})
    take(config, DEAD, "default", 1)

    Recoverer(config, ME).sweep()

    assert r.zcard("dead") == 2
    assert orjson.loads(r.zrange("dead", -1, -1)[0])["error_class"] == POISON


def test_unparseable_in_progress_entries_are_requeued_unchanged(config, r):
    """An entry that is not a job goes back as it was, for the worker to bury properly."""
    config.store.register_fetcher(DEAD, orjson.dumps(["default"]))
    r.lpush(f"kiq|inprogress|{DEAD}|default", "{not json")

    Recoverer(config, ME).sweep()

    assert r.lrange("queue:default", 0, -1) == ["{not json"]


def test_recover_moves_one_dead_process_jobs_at_once_and_counts_them(config, r):
    """Recoverer.recover (the supervisor's, for a child it saw die) requeues that
    process's jobs although its heartbeat has not expired yet, counting the crash, and
    leaves its registration for the sweep after the expiry (a late fetch may land)."""
    jids = take(config, DEAD, "default", 2)
    beating(r, DEAD)  # still "alive" for a sweep: the hash expires only in 60 s

    assert Recoverer(config, ME).sweep() == 0
    assert Recoverer(config, ME).recover(DEAD) == 2

    assert [(p["jid"], p["kiq_recoveries"]) for p in queued(r, "default")] == [
        (jid, 1) for jid in jids
    ]
    assert r.exists(f"kiq|inprogress|{DEAD}|default") == 0
    assert r.hexists("kiq|fetchers", DEAD)
    assert Recoverer(config, ME).recover(DEAD) == 0  # nothing twice


def test_recover_buries_a_job_past_max_recoveries(config, r):
    """The bound is the sweep's: a job recovered more than max_recoveries times is dead."""
    config.max_recoveries = 0
    (jid,) = take(config, DEAD, "default", 1)

    assert Recoverer(config, ME).recover(DEAD) == 1

    assert r.llen("queue:default") == 0
    (dead,) = [orjson.loads(raw) for raw in r.zrange("dead", 0, -1)]
    assert (dead["jid"], dead["error_class"]) == (jid, POISON)


def test_recover_of_an_unregistered_process_does_nothing(config, r):
    """A process that exited cleanly unregistered itself: nothing to move."""
    assert Recoverer(config, ME).recover(DEAD) == 0


# -- real processes ------------------------------------------------------------------------

FAST_EXPIRY = ":process_ttl: 1\n:prefetch: 0\n"
# A process killed mid-sweep leaves the recovery lock to expire (30 s); rare, but the
# waits below allow for it rather than fail.
RECOVERY_WAIT = 45.0


@pytest.mark.slow
def test_killed_workers_job_is_recovered_and_a_live_workers_job_is_not(config, r, start_worker):
    """SIGKILL a worker mid-job: once its heartbeat expires another worker requeues and
    runs the job, while a slow job in a live worker is never taken from it."""
    live = start_worker("-q", "live", "-c", "1", config_text=FAST_EXPIRY)
    live_jid = jobs.Slow.set(queue="live").perform_async(3.0, "live")
    victim = start_worker("-c", "1", config_text=FAST_EXPIRY)
    victim_jid = jobs.Slow.perform_async(0.5, "victim")
    wait_until(lambda: r.llen("test:started") == 2)
    victim.kill()

    rescuer = start_worker("-c", "1", config_text=FAST_EXPIRY)

    wait_until(lambda: len(records(r)) == 2, timeout=RECOVERY_WAIT)
    by_jid = {d["jid"]: d for d in records(r)}
    assert by_jid[victim_jid]["pid"] == rescuer.pid
    assert by_jid[live_jid]["pid"] == live.pid
    started = [(d["jid"], d["pid"]) for d in records(r, "test:started")]
    assert sorted(started) == sorted(
        [(live_jid, live.pid), (victim_jid, victim.pid), (victim_jid, rescuer.pid)]
    )
    assert r.llen("queue:default") == r.llen("queue:live") == 0


@pytest.mark.slow
def test_poison_job_is_recovered_max_recoveries_times_then_dead(config, r, start_worker):
    """A job that SIGKILLs every process running it is recovered ``max_recoveries``
    times, then buried in the dead set as kiq.PoisonJob; the next worker survives."""
    jid = jobs.Suicide.perform_async()
    settings = FAST_EXPIRY + ":max_recoveries: 2\n"

    for runs in (1, 2, 3):
        worker = start_worker("-c", "1", config_text=settings)
        assert worker.proc.wait(RECOVERY_WAIT) == -9
        assert r.llen("test:started") == runs
    survivor = start_worker("-c", "1", config_text=settings)

    (member,) = wait_until(lambda: r.zrange("dead", 0, -1), timeout=RECOVERY_WAIT)
    payload = orjson.loads(member)
    assert (payload["jid"], payload["error_class"]) == (jid, POISON)
    assert payload["kiq_recoveries"] == 3
    assert r.llen("test:started") == 3
    assert r.llen("queue:default") == 0
    assert identity_of(r, survivor.pid) is not None


@pytest.mark.slow
def test_a_killed_worker_blames_only_the_jobs_it_started_not_those_taken_ahead(
    config, r, start_worker
):
    """SIGKILL a busy worker holding ~20 jobs fetched ahead of its 2 slots: the recovery
    gives ``kiq_recoveries`` to exactly the 2 it was running; the ones taken ahead go
    back unchanged (issue 12: they were counted too, and good jobs beside many crashes
    were buried as kiq.PoisonJob)."""
    slow = [jobs.Slow.perform_async(30.0, i) for i in range(30)]
    worker = start_worker("-c", "2", config_text=":process_ttl: 1\n:prefetch: 20\n")
    wait_until(lambda: r.llen("test:started") == 2)
    ident = wait_until(lambda: identity_of(r, worker.pid))
    wait_until(lambda: r.scard(f"kiq|ahead|{ident}") >= 18)
    held = r.llen(f"kiq|inprogress|{ident}|default")
    worker.kill()

    wait_until(lambda: Recoverer(config, ME).sweep() > 0 or None, timeout=RECOVERY_WAIT)

    started = [d["jid"] for d in records(r, "test:started")]
    payloads = queued(r, "default")
    assert sorted(p["jid"] for p in payloads) == sorted(slow)  # none lost
    blamed = {p["jid"]: p["kiq_recoveries"] for p in payloads if "kiq_recoveries" in p}
    assert blamed == dict.fromkeys(started, 1)
    assert held >= 22  # 2 running + 20 taken ahead (prefetch), which went back unblamed
    assert not r.exists(f"kiq|ahead|{ident}")


@pytest.mark.slow
def test_a_poison_job_taken_ahead_still_counts_its_crash(config, r, start_worker):
    """A poison job behind other jobs is taken ahead (marked), released when its turn
    comes and only then started: its crash counts (``kiq_recoveries`` 1), so it still
    reaches the dead set; the jobs before it ran (the last one's ack may have been
    waiting for the next fetch call: then it is requeued too, at-least-once)."""
    done = [jobs.Record.perform_async(i) for i in range(6)]
    poison = jobs.Suicide.perform_async()
    worker = start_worker("-c", "1", config_text=":process_ttl: 1\n")
    assert worker.proc.wait(RECOVERY_WAIT) == -9

    wait_until(lambda: Recoverer(config, ME).sweep() > 0 or None, timeout=RECOVERY_WAIT)

    assert {d["jid"] for d in records(r)} == set(done)
    payloads = {p["jid"]: p for p in queued(r, "default")}
    assert payloads[poison]["kiq_recoveries"] == 1
    assert set(payloads) - {poison} <= set(done)


@pytest.mark.slow
def test_a_worker_swept_while_alive_drops_the_jobs_it_held_ahead(config, r, start_worker):
    """A live worker taken for dead (its heartbeat hash gone, as after an outage or OOM
    window longer than process_ttl) is swept: its jobs go back to the queue. At its next
    beat it drops the units it held ahead that are no longer in its in-progress lists,
    so each of them runs once (the requeued copy), not twice; only the one it was
    running and the one released to run next (one job finishes per call here) may run
    twice."""
    naps = [jobs.Slow.perform_async(0.3, i) for i in range(12)]
    worker = start_worker("-c", "1", config_text=":prefetch: 10\n")
    ident = wait_until(lambda: identity_of(r, worker.pid))
    wait_until(lambda: r.scard(f"kiq|ahead|{ident}") >= 8)
    r.delete(ident)  # its hash expired: it looks dead

    assert Recoverer(config, ME).sweep() >= 9

    wait_until(lambda: {d["jid"] for d in records(r)} == set(naps), timeout=30)
    starts: dict[str, int] = {}
    for record in records(r, "test:started"):
        starts[record["jid"]] = starts.get(record["jid"], 0) + 1
    assert set(starts) == set(naps)
    assert sum(n - 1 for n in starts.values()) <= 2, starts  # not the ~9 held ahead
    assert "were dropped here" in worker.output()
