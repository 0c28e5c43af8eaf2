"""The Poller: due ``schedule`` and ``retry`` entries move to their queues, exactly once
even with pollers racing, on Sidekiq's randomised interval (shared/sidekiq-wire.md §5).
"""

from __future__ import annotations

import random
import threading
from typing import Any

import orjson
import pytest

from kiq import payload as wire
from kiq.client import Client
from kiq.outage import Outage
from kiq.scheduler import Poller
from tests.support import jobs
from tests.support.jobs import records
from tests.support.wait import wait_until

NOW = 1_700_000_000.0


def poller(config, seed: int = 0) -> Poller:
    return Poller(config, Outage(config.store.safe_url), random.Random(seed))


def schedule(r, score: float, **fields: Any) -> dict[str, Any]:
    """ZADD a Record job to the schedule set at ``score``; return its payload."""
    payload = {"class": "Record", "args": [], "queue": "default", "jid": wire.new_jid(), **fields}
    r.zadd("schedule", {orjson.dumps(payload).decode(): score})
    return payload


def queued(r, queue: str = "default") -> list[dict[str, Any]]:
    """Payloads of ``queue:<queue>`` in the order they will be fetched."""
    return [orjson.loads(raw) for raw in reversed(r.lrange(f"queue:{queue}", 0, -1))]


# -- enqueue_due ----------------------------------------------------------------------------


def test_only_due_scheduled_jobs_are_pushed(config, r):
    """Entries with a score up to ``now`` move to their queue; later ones stay."""
    past = schedule(r, NOW - 10, args=["past"])
    due = schedule(r, NOW, args=["due"])
    schedule(r, NOW + 0.5, args=["future"])

    assert poller(config).enqueue_due(now=NOW) == 2

    assert [p["jid"] for p in queued(r)] == [past["jid"], due["jid"]]
    assert [orjson.loads(m)["args"] for m in r.zrange("schedule", 0, -1)] == [["future"]]
    assert r.sismember("queues", "default")


def test_pushed_scheduled_jobs_get_enqueued_at(config, r):
    """A promoted job is pushed like a new one: ``enqueued_at`` is set to the push time."""
    schedule(r, NOW, created_at=NOW - 60)
    before = wire.now()

    poller(config).enqueue_due(now=NOW)

    (payload,) = queued(r)
    assert payload["enqueued_at"] >= before
    assert payload["created_at"] == NOW - 60


def test_due_retries_go_back_to_their_queue_with_their_error_fields(config, r):
    """A due retry-set entry is pushed to the queue in its payload, keeping retry_count
    and the error fields for the next failure."""
    failed = {
        "class": "Record",
        "args": [1],
        "queue": "mailers",
        "jid": wire.new_jid(),
        "retry_count": 2,
        "error_class": "ValueError",
        "error_message": "nope",
    }
    r.zadd("retry", {orjson.dumps(failed).decode(): NOW - 1})

    assert poller(config).enqueue_due(now=NOW) == 1

    (payload,) = queued(r, "mailers")
    assert {k: payload[k] for k in failed} == failed
    assert r.zcard("retry") == 0


def test_retries_are_pushed_before_scheduled_jobs(config, r):
    """As Sidekiq, the retry set is drained before the schedule set."""
    scheduled = schedule(r, NOW - 100)
    retry = {"class": "Record", "args": [], "queue": "default", "jid": "r1", "retry_count": 0}
    r.zadd("retry", {orjson.dumps(retry).decode(): NOW - 1})

    poller(config).enqueue_due(now=NOW)

    assert [p["jid"] for p in queued(r)] == ["r1", scheduled["jid"]]


@pytest.mark.parametrize(
    "member",
    ["{not json", '{"class":"Record","args":[],"queue":5,"jid":"q5"}'],
    ids=["invalid-json", "bad-queue"],
)
def test_a_job_that_cannot_be_pushed_goes_to_the_dead_set(config, r, member):
    """A due entry that is not a pushable job is moved to the dead set, not lost, and the
    poller goes on with the next entry. Not JSON: buried as written (Sidekiq); a job kiq
    refuses at the door: buried with the reason as its error, as a worker's fetch does
    (issue 12)."""
    r.zadd("schedule", {member: NOW - 1})
    ok = schedule(r, NOW)

    poller(config).enqueue_due(now=NOW)

    (buried,) = r.zrange("dead", 0, -1)
    assert [p["jid"] for p in queued(r)] == [ok["jid"]]
    if member == "{not json":
        assert buried == member
    else:
        job = orjson.loads(buried)
        assert (job["error_class"], job["queue"], job["jid"]) == ("kiq.PayloadError", 5, "q5")
        assert "queue=5 must be a non-empty string" in job["error_message"]


def test_a_job_whose_queue_key_is_not_a_list_goes_to_the_dead_set(config, r):
    """WRONGTYPE on the target queue: the job is kept in ``dead`` (not lost mid-move) and
    the jobs behind it in ``schedule`` are still pushed."""
    bad = schedule(r, NOW - 20, queue="broken")
    good = schedule(r, NOW - 10)
    r.set("queue:broken", "not a list")

    assert poller(config).enqueue_due(NOW) == 1

    assert [p["jid"] for p in queued(r)] == [good["jid"]]
    assert [orjson.loads(raw)["jid"] for raw in r.zrange("dead", 0, -1)] == [bad["jid"]]
    assert r.zcard("schedule") == 0


def test_two_pollers_racing_push_each_job_exactly_once(config, r):
    """Two pollers draining the same 500 due jobs at once push each exactly once."""
    for i in range(500):
        schedule(r, NOW - i, args=[i])
    pollers = [poller(config, seed) for seed in (1, 2)]
    counts: list[int] = []
    threads = [
        threading.Thread(target=lambda p=p: counts.append(p.enqueue_due(now=NOW))) for p in pollers
    ]

    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert sum(counts) == 500
    assert r.llen("queue:default") == 500
    assert len({p["jid"] for p in queued(r)}) == 500
    assert r.zcard("schedule") == 0


# -- the interval -----------------------------------------------------------------------------


@pytest.mark.parametrize("processes", [1, 3, 9])
def test_interval_under_10_processes_is_uniform_around_the_cluster_average(config, processes):
    """Under 10 processes the wait is uniform in [A/2, 3A/2], A = processes * 5 s, so the
    cluster as a whole polls about every 5 s."""
    config.poll_interval_average = None
    p = poller(config, seed=processes)
    average = processes * config.average_scheduled_poll_interval

    waits = [p.interval(processes) for _ in range(2000)]

    assert all(average / 2 <= w <= average * 1.5 for w in waits)
    assert min(waits) < average * 0.55
    assert max(waits) > average * 1.45
    assert sum(waits) / len(waits) == pytest.approx(average, rel=0.05)


@pytest.mark.parametrize("processes", [10, 40])
def test_interval_from_10_processes_is_uniform_from_zero(config, processes):
    """From 10 processes up the wait is uniform in [0, A]."""
    config.poll_interval_average = None
    p = poller(config, seed=processes)
    average = processes * config.average_scheduled_poll_interval

    waits = [p.interval(processes) for _ in range(2000)]

    assert all(0 <= w <= average for w in waits)
    assert min(waits) < average * 0.05
    assert max(waits) > average * 0.95


def test_poll_interval_average_fixes_the_average(config):
    """``poll_interval_average`` replaces processes * average_scheduled_poll_interval."""
    config.poll_interval_average = 2.0
    p = poller(config)

    waits = [p.interval(5) for _ in range(500)]

    assert all(1.0 <= w <= 3.0 for w in waits)


def test_first_poll_waits_10_to_15_seconds_by_default(config):
    """Before its first poll a process waits 10 + 5 * rand seconds (heartbeats first)."""
    config.poll_interval_average = None
    config.poll_initial_wait = None
    p = poller(config)

    waits = [p.initial_wait() for _ in range(200)]

    assert all(10 <= w <= 15 for w in waits)


# -- the thread -------------------------------------------------------------------------------


class FailOnce:
    """Client middleware that raises for the first push of a job with args ["boom"]."""

    def __init__(self) -> None:
        self.failed = False

    def __call__(self, job, payload, queue, call_next):
        if payload["args"] == ["boom"] and not self.failed:
            self.failed = True
            raise RuntimeError("middleware bug")
        return call_next()


def test_poller_thread_survives_a_failing_push(config, r):
    """A push that raises (here a client middleware bug) does not stop the poller: the
    job goes to the dead set and later due jobs are still promoted."""
    config.client_middleware.add(FailOnce())
    boom = schedule(r, 1.0, args=["boom"])
    p = poller(config)
    p.start()
    try:
        wait_until(lambda: r.zcard("dead") == 1, timeout=5)
        ok = schedule(r, 2.0, args=["ok"])
        wait_until(lambda: r.llen("queue:default") == 1, timeout=5)
    finally:
        p.stop()
    assert orjson.loads(r.zrange("dead", 0, -1)[0])["jid"] == boom["jid"]
    assert [q["jid"] for q in queued(r)] == [ok["jid"]]


# -- a worker ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_worker_runs_perform_in_jobs_when_due(config, r, start_worker):
    """``perform_in`` jobs wait in ``schedule``, then the worker's poller pushes and runs them."""
    jid = jobs.Record.perform_in(0.3, "later")
    assert r.zcard("schedule") == 1

    start_worker()

    (done,) = wait_until(lambda: records(r))
    assert (done["jid"], done["args"]) == (jid, ["later"])
    assert r.zcard("schedule") == 0


@pytest.mark.slow
def test_worker_runs_due_retries(config, r, start_worker):
    """A retry-set entry that is due is pushed back to its queue and run again."""
    payload = Client(config).normalize({"class": "Record", "args": ["retried"]})
    payload.update(retry_count=0, error_class="ValueError", error_message="nope")
    r.zadd("retry", {wire.dumps(payload).decode(): wire.now() - 1})

    start_worker()

    (done,) = wait_until(lambda: records(r))
    assert (done["jid"], done["args"]) == (payload["jid"], ["retried"])
    assert r.zcard("retry") == 0
