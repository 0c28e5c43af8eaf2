"""Fetch: queue order (strict, weighted, paused), the one-round-trip ``Store.fetch``
that acknowledges and refills atomically, requeues, and what a worker leaves behind.
"""

from __future__ import annotations

import math
import random
from collections import Counter

import orjson
import pytest

from kiq import payload as wire
from kiq.client import Client
from kiq.fetch import CALL_AHEAD, QueueOrder
from kiq.outage import Outage
from tests.support import jobs
from tests.support.jobs import identity_of, records
from tests.support.rawredis import raw_redis
from tests.support.wait import wait_until

ME = "host:1:abc"


def push(config, queue: str, n: int) -> list[bytes]:
    """Push ``n`` jobs to ``queue`` one by one; return their raw payloads, oldest first."""
    client = Client(config)
    raws = []
    for i in range(n):
        client.push({"class": "Record", "args": [queue, i], "queue": queue})
        raws.append(raw_redis(config).lindex(f"queue:{queue}", 0))
    return raws


def args_of(raws) -> list[list[object]]:
    return [wire.loads(raw)["args"] for raw in raws]


# -- queue order ------------------------------------------------------------------------


def test_strict_order_is_always_the_given_order():
    """With no weights, every fetch tries the queues in the order given."""
    order = QueueOrder([("critical", 0), ("default", 0), ("low", 0)], random.Random(1))

    assert {tuple(order.next()) for _ in range(100)} == {("critical", "default", "low")}
    assert order.strict


def test_weighted_order_puts_each_queue_first_in_proportion_to_its_weight():
    """Weighted (Sidekiq: expand by weight, shuffle, keep first occurrences): a queue of
    weight w comes first with probability w / total, and every queue is tried."""
    order = QueueOrder([("a", 3), ("b", 2), ("c", 1)], random.Random(42))
    draws = [order.next() for _ in range(6000)]

    assert all(sorted(names) == ["a", "b", "c"] for names in draws)
    first = Counter(names[0] for names in draws)
    assert first["a"] / 6000 == pytest.approx(3 / 6, abs=0.03)
    assert first["b"] / 6000 == pytest.approx(2 / 6, abs=0.03)
    assert first["c"] / 6000 == pytest.approx(1 / 6, abs=0.03)


def test_equal_weights_give_each_queue_an_equal_share():
    """Equal weights: each queue comes first about equally often (Sidekiq's "random")."""
    order = QueueOrder([("a", 1), ("b", 1)], random.Random(7))

    first = Counter(order.next()[0] for _ in range(4000))

    assert first["a"] / 4000 == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize("queues", [[("a", 0), ("b", 0), ("c", 0)], [("a", 1), ("b", 5), ("c", 1)]])
def test_paused_queues_are_skipped(queues):
    """A paused queue is left out of every fetch, strict or weighted."""
    order = QueueOrder(queues, random.Random(3))
    order.paused = frozenset({"b"})

    assert all("b" not in order.next() for _ in range(200))
    assert set(order.next()) == {"a", "c"}


# -- Store.fetch ------------------------------------------------------------------------


def _fetcher(config):
    from kiq.fetch import Fetcher

    return Fetcher(config, "host:1:tune", lambda units: None, Outage(""))


def test_fetch_ahead_grows_with_the_round_trip(config):
    """A 1 ms round trip takes ~20 more jobs in hand than loopback; it shrinks back too."""
    config.prefetch = 10
    fetcher = _fetcher(config)
    base = fetcher._free
    fetcher.tune(0.000_05)
    loopback = fetcher._free
    fetcher.tune(0.001)
    link = fetcher._free
    fetcher.tune(0.000_05)
    assert loopback - base <= 1
    assert link - base == 20
    assert fetcher._free == loopback


def test_fetch_ahead_covers_the_fetch_calls_of_fast_jobs_only(config):
    """Fast jobs: the jobs run during the fetch calls' time are taken ahead too, at most
    CALL_AHEAD * prefetch; slow jobs (a low rate) add none; a slow link's PING still counts."""
    config.prefetch = 10
    fetcher = _fetcher(config)
    base = fetcher._free
    for _ in range(100):  # 0.3 ms calls, 13 acks each 1 ms apart: 13,000 jobs/s
        fetcher._retune(0.000_3, 13, 0.001)
    fast = fetcher._free - base
    fetcher.tune(0.001)
    link = fetcher._free - base
    slow = _fetcher(config)
    for _ in range(100):  # 0.5 ms calls, one ack every 100 ms: 10 jobs/s
        slow._retune(0.000_5, 1, 0.1)
    assert fast == math.ceil(CALL_AHEAD * 0.000_3 * 13_000)  # 12
    assert link == 20  # the larger: the PING's 20
    assert slow._free - base <= 1  # as a loopback PING's share
    for _ in range(100):  # calls stretched to 5 ms (the GIL held by CPU-bound jobs)
        fetcher._retune(0.005, 13, 0.001)
    assert fetcher._free - base == CALL_AHEAD * config.prefetch


def test_prefetch_zero_turns_fetch_ahead_off_whatever_the_round_trip(config):
    """With prefetch 0 a process never holds more jobs than slots (Sidekiq's behaviour)."""
    config.prefetch = 0
    fetcher = _fetcher(config)
    fetcher.tune(0.01)
    assert fetcher._free == config.concurrency


def test_fetch_moves_jobs_into_in_progress_in_queue_order(config, r):
    """One fetch takes up to ``count`` jobs, the first queue before the next, oldest
    first, and keeps each in this process's in-progress list for its queue."""
    push(config, "a", 3)
    push(config, "b", 3)

    taken = config.store.fetch(ME, ["a", "b"], 4)

    assert [(q, wire.loads(raw)["args"]) for q, raw in taken] == [
        ("a", ["a", 0]),
        ("a", ["a", 1]),
        ("a", ["a", 2]),
        ("b", ["b", 0]),
    ]
    assert r.llen("queue:a") == 0
    assert r.llen("queue:b") == 2
    assert r.llen(f"kiq|inprogress|{ME}|a") == 3
    assert r.llen(f"kiq|inprogress|{ME}|b") == 1


def test_fetch_acknowledges_and_refills_in_one_call(config, r):
    """A fetch with acks removes the finished jobs from in-progress and moves new ones
    in, in the same script call."""
    push(config, "a", 4)
    first = config.store.fetch(ME, ["a"], 2)

    second = config.store.fetch(ME, ["a"], 2, acks=first)

    assert args_of(raw for _, raw in second) == [["a", 2], ["a", 3]]
    in_progress = r.lrange(f"kiq|inprogress|{ME}|a", 0, -1)
    assert sorted(orjson.loads(raw)["args"][1] for raw in in_progress) == [2, 3]
    assert r.llen("queue:a") == 0


def test_fetch_with_count_zero_only_acknowledges(config, r):
    """An idle process's fetch (count 0) acknowledges and takes nothing."""
    push(config, "a", 3)
    taken = config.store.fetch(ME, ["a"], 2)

    assert config.store.fetch(ME, ["a"], 0, acks=taken[:1]) == []

    assert r.llen(f"kiq|inprogress|{ME}|a") == 1
    assert r.llen("queue:a") == 1


def test_a_fetch_call_sent_again_returns_what_it_took_and_takes_no_more(config, r):
    """A fetch whose reply was lost (Redis killed after the script ran, a socket timeout)
    is sent again with the same call id, by redis-py's retry or the fetcher: it gets the
    jobs the first one took instead of a new batch, so none stays in a live worker's
    in-progress list unknown to it (issue 12: jobs still queued at the chaos deadline)."""
    push(config, "a", 3)
    push(config, "b", 3)
    first, _ = config.store.fetch_batch(ME, ["a", "b"], 4, call="7")

    again, _ = config.store.fetch_batch(ME, ["a", "b"], 4, call="7")
    assert again == first
    assert (r.llen("queue:a"), r.llen("queue:b")) == (0, 2)
    fresh, _ = config.store.fetch_batch(ME, ["a", "b"], 4, call="8")
    assert len(fresh) == 2
    assert r.llen("queue:b") == 0


def test_fetch_marks_the_jobs_taken_ahead_and_releases_them(config, r):
    """The jobs from ``ahead_from`` on are in ``kiq|ahead|<identity>`` after the call; a
    later call's ``release`` takes their marks off; a requeue takes them off too, and
    requeue_all drops the set and the call record."""
    push(config, "a", 5)
    taken, marked = config.store.fetch_batch(ME, ["a"], 5, ahead_from=2, call="1")
    raws = [raw for _, raw in taken]
    assert marked
    assert r.smembers(f"kiq|ahead|{ME}") == set(map(bytes.decode, raws[2:]))

    config.store.fetch_batch(ME, ["a"], 0, release=raws[2:3])
    config.store.requeue(ME, "a", raws[3:4])
    assert r.smembers(f"kiq|ahead|{ME}") == {raws[4].decode()}

    config.store.requeue_all(ME, ["a"])
    assert not r.exists(f"kiq|ahead|{ME}", f"kiq|fetch-call|{ME}")


def test_fetch_from_empty_queues_returns_nothing(config, r):
    """Empty queues: nothing is returned and no in-progress list is created."""
    assert config.store.fetch(ME, ["a", "b"], 5) == []
    assert list(r.scan_iter("kiq|inprogress|*")) == []


def test_wait_moves_one_job_into_in_progress(config, r):
    """The idle path (BLMOVE) takes the oldest job straight into in-progress."""
    raws = push(config, "a", 2)

    assert config.store.wait(ME, "a") == raws[0]

    assert r.lrange(f"kiq|inprogress|{ME}|a", 0, -1) == [raws[0].decode()]


def test_requeue_puts_jobs_back_to_be_fetched_next_in_order(config, r):
    """Requeued jobs (given oldest first) go back to the tail of their queue and are
    fetched again in their original order, before jobs that were still waiting."""
    push(config, "a", 5)
    taken = [raw for _, raw in config.store.fetch(ME, ["a"], 3)]

    assert config.store.requeue(ME, "a", taken) == 3

    again = config.store.fetch(ME, ["a"], 5)
    assert [raw[1] for raw in args_of(raw for _, raw in again)] == [0, 1, 2, 3, 4]
    assert r.llen(f"kiq|inprogress|{ME}|a") == 5


def test_requeue_all_empties_in_progress_oldest_at_the_tail(config, r):
    """At exit every in-progress job goes back, the oldest fetched next."""
    push(config, "a", 3)
    push(config, "b", 1)
    config.store.fetch(ME, ["a", "b"], 4)

    assert config.store.requeue_all(ME, ["a", "b"]) == 4

    assert [orjson.loads(raw)["args"][1] for raw in reversed(r.lrange("queue:a", 0, -1))] == [
        0,
        1,
        2,
    ]
    assert r.llen("queue:b") == 1
    assert list(r.scan_iter("kiq|inprogress|*")) == []


# -- a worker -------------------------------------------------------------------------------


@pytest.mark.slow
def test_worker_fetches_strictly_in_queue_order(config, r, start_worker):
    """Strict queues: every job of the first queue runs before any of the second."""
    for i in range(3):
        jobs.Record.set(queue="low").perform_async("low", i)
    for i in range(3):
        jobs.Record.set(queue="high").perform_async("high", i)

    start_worker("-q", "high", "-q", "low", "-c", "1", config_text=":prefetch: 0\n")

    wait_until(lambda: len(records(r)) == 6)
    assert [tuple(d["args"]) for d in records(r)] == [
        ("high", 0),
        ("high", 1),
        ("high", 2),
        ("low", 0),
        ("low", 1),
        ("low", 2),
    ]


@pytest.mark.slow
def test_worker_skips_a_paused_queue_until_it_is_unpaused(config, r, start_worker):
    """A queue in ``kiq|paused`` is not fetched (batch or idle wait) until removed."""
    r.sadd("kiq|paused", "b")
    jobs.Record.set(queue="b").perform_async("b")
    jobs.Record.set(queue="a").perform_async("a")
    worker = start_worker("-q", "b", "-q", "a")
    identity = wait_until(lambda: identity_of(r, worker.pid))
    wait_until(lambda: records(r))
    beat = r.hget(identity, "beat")
    wait_until(lambda: r.hget(identity, "beat") != beat)
    assert [d["args"] for d in records(r)] == [["a"]]
    assert r.llen("queue:b") == 1

    r.srem("kiq|paused", "b")

    wait_until(lambda: len(records(r)) == 2)
    assert r.llen("queue:b") == 0


@pytest.mark.slow
def test_worker_leaves_nothing_in_progress_after_a_weighted_drain(config, r, start_worker):
    """After draining weighted queues, every job ran and no in-progress list remains."""
    for queue in ("a", "b", "c"):
        jobs.Tally.set(queue=queue).perform_bulk([[f"{queue}{i}"] for i in range(300)])

    start_worker("-q", "a,3", "-q", "b,2", "-q", "c,1", "-c", "5")

    wait_until(lambda: r.scard("test:tally") == 900, timeout=20)
    wait_until(lambda: not list(r.scan_iter("kiq|inprogress|*")))
    assert r.get("test:count") == "900"
    assert [r.llen(f"queue:{q}") for q in "abc"] == [0, 0, 0]
