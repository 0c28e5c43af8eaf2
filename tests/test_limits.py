"""Limiters shared by every process (issue 16 point 2, kiq.limiter): the five kinds, one
Lua step per try, waits that end when a slot frees, a SIGKILLed holder's slot back after
``lock_timeout``, keys that expire, and a job refused by a full limiter rescheduled
instead of failed.

Real Redis throughout; the concurrency, rate and crash claims use real OS processes
(tests/support/limit_jobs.py in ``kiq worker``s, tests/support/limit_caller.py).
Full sizes: bench/limits_stress.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import ResponseError

import kiq
from kiq import payload as wire
from kiq.errors import ConfigError
from kiq.fetch import UnitOfWork
from kiq.limiter import SLICE
from kiq.processor import Executor, State
from kiq.store.connection import lua
from tests.support.wait import wait_until

SUPPORT = Path(__file__).parent / "support"
LIMITS = ("-r", "limit_jobs")  # the worker loads tests/support/limit_jobs.py too


# -- one process: what each kind allows -----------------------------------------------


def test_a_concurrent_limiter_refuses_past_its_count_with_the_wait_until_a_lock_ends(config):
    """Two holders of a limit of 2: a third call raises OverLimit at once (wait_timeout=0)
    with retry_in the oldest lock's time left; after one release the next call gets in."""
    limiter = kiq.Limiter.concurrent("erp", 2, wait_timeout=0, lock_timeout=30)
    first, second = limiter.within_limit(), limiter.within_limit()
    first.__enter__()
    second.__enter__()

    with pytest.raises(kiq.OverLimit) as refused, limiter.within_limit():
        pass

    assert refused.value.limiter == "erp"
    assert 29 < refused.value.retry_in <= 30
    first.__exit__(None, None, None)
    with limiter.within_limit():
        pass
    second.__exit__(None, None, None)


def test_a_waiter_gets_a_freed_slot_at_once_not_at_its_next_poll(config, r):
    """A caller waiting on a full concurrent limiter is woken by the release (BLPOP on
    its own wake-up list, pushed by the release that handed it the slot), well before
    the lock would have expired."""
    limiter = kiq.Limiter.concurrent("mutex", 1, wait_timeout=10, lock_timeout=30)
    got: list[float] = []
    holder = limiter.within_limit()
    holder.__enter__()

    def wait_for_it() -> None:
        with limiter.within_limit():
            got.append(time.monotonic())

    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    wait_until(lambda: "cmd=blpop" in r.execute_command("CLIENT", "LIST"))
    released = time.monotonic()
    holder.__exit__(None, None, None)
    waiter.join(5)

    assert len(got) == 1
    assert got[0] - released < 0.5


def test_freed_slots_go_to_the_waiters_in_the_order_they_came(config, r):
    """Three threads wait on a limit of 1: each release hands the slot to the oldest
    waiter in the same step (it is the holder before it wakes), so they get in in the
    order they joined the line. The first one in stays until the holders are read (it
    would otherwise be done, and have handed the slot on, before the test looks)."""
    limiter = kiq.Limiter.concurrent("fifo", 1, wait_timeout=20, lock_timeout=30)
    order: list[int] = []
    checked = threading.Event()
    holder = limiter.within_limit()
    holder.__enter__()

    def wait_for_it(i: int) -> None:
        with limiter.within_limit():
            order.append(i)
            checked.wait(10)

    threads = []
    for i in range(3):
        threads.append(threading.Thread(target=wait_for_it, args=(i,)))
        threads[-1].start()
        wait_until(lambda i=i: r.zcard("kiq|limiter|fifo|waiters") == i + 1)
    first = r.zrange("kiq|limiter|fifo|waiters", 0, 0)
    holder.__exit__(None, None, None)
    assert r.zrange("kiq|limiter|fifo|holders", 0, -1) == first  # handed, not just freed
    checked.set()
    for thread in threads:
        thread.join(10)

    assert order == [0, 1, 2]
    fields = r.hgetall("kiq|limiter|fifo")
    assert (fields["held"], fields["immediate"], fields["waited"]) == ("4", "1", "3")
    assert r.zcard("kiq|limiter|fifo|waiters") == r.zcard("kiq|limiter|fifo|leases") == 0


def test_a_cancelled_async_waiter_leaves_the_line_and_is_handed_nothing(config, r):
    """An ``async with`` waiter cancelled while it waits gives its place back (the same
    step as a release), so the next release leaves the slot free for a fresh caller."""
    limiter = kiq.Limiter.concurrent("async-line", 1, wait_timeout=20, lock_timeout=30)
    now = kiq.Limiter.concurrent("async-line", 1, wait_timeout=0, lock_timeout=30)

    async def main() -> int:
        holder = limiter.within_limit()
        await holder.__aenter__()

        async def wait_for_it() -> None:
            async with limiter.within_limit():
                pass

        task = asyncio.create_task(wait_for_it())
        while r.zcard("kiq|limiter|async-line|waiters") == 0:
            await asyncio.sleep(0.01)  # a poll of the task's progress, not a timing
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        in_line = r.zcard("kiq|limiter|async-line|waiters")
        await holder.__aexit__(None, None, None)
        async with now.within_limit():  # the slot was free, not handed to the gone waiter
            pass
        await config.store.aclose()
        return in_line

    assert asyncio.run(main()) == 0


def test_a_waiter_stopped_by_an_exception_gives_its_place_back(config, r, monkeypatch):
    """A job timeout or shutdown raised into a waiting thread (here: out of its BLPOP):
    the waiter leaves the line before the exception goes on, so no release hands a
    slot to a call that is gone."""
    limiter = kiq.Limiter.concurrent("line-exc", 1, wait_timeout=20, lock_timeout=30)
    held = limiter.acquire()
    in_line: list[int] = []

    def interrupted(name: str, token: str, timeout: float) -> int | None:
        in_line.append(r.zcard("kiq|limiter|line-exc|waiters"))
        raise TimeoutError("the job's timeout, raised into its thread")

    monkeypatch.setattr(config.store, "limit_wait", interrupted)
    with pytest.raises(TimeoutError), limiter.within_limit():
        pass

    assert in_line == [1]
    assert r.zcard("kiq|limiter|line-exc|waiters") == r.zcard("kiq|limiter|line-exc|leases") == 0
    limiter.release(held)
    assert r.zcard("kiq|limiter|line-exc|holders") == 0  # handed to nobody


def test_the_handoff_is_the_same_in_both_scripts():
    """limit.lua (a try finding expired locks) and limit_release.lua (a release) hand
    free slots to waiters with one function, kept as two identical copies."""

    def handoff(name: str) -> str:
        text = lua(name)
        return text[text.index("-- handoff begin") : text.index("-- handoff end")]

    assert handoff("limit") == handoff("limit_release")
    assert "local function handoff" in handoff("limit")


def test_a_bucket_allows_count_per_fixed_window_and_says_when_the_next_opens(config):
    """bucket(5, 10 s): five calls, then OverLimit with retry_in at most the window."""
    limiter = kiq.Limiter.bucket("sms", 5, 10, wait_timeout=0)
    for _ in range(5):
        with limiter.within_limit():
            pass

    with pytest.raises(kiq.OverLimit) as refused, limiter.within_limit():
        pass

    assert 0 < refused.value.retry_in <= 10


def test_a_window_counts_the_calls_of_the_last_seconds(config):
    """window(3, 0.3 s): a fourth call waits for the oldest to leave the window."""
    limiter = kiq.Limiter.window("mail", 3, 0.3, wait_timeout=1)
    started = time.monotonic()
    for _ in range(4):
        with limiter.within_limit():
            pass

    assert 0.25 < time.monotonic() - started < 0.9


def test_points_used_gives_back_what_the_estimate_did_not_spend(config):
    """points(10/10 s): an 8-point estimate that used 2 leaves room for 7 more at once."""
    limiter = kiq.Limiter.points("shopify", 10, 10, wait_timeout=0)
    with limiter.within_limit(points=8) as handle:
        handle.points_used(2)
    with limiter.within_limit(points=7):
        pass

    with pytest.raises(kiq.OverLimit), limiter.within_limit(points=5):
        pass


def test_async_with_holds_and_releases_a_slot(config):
    """``async with`` in an async job: the slot is held inside, free after."""
    limiter = kiq.Limiter.concurrent("async-erp", 1, wait_timeout=0)

    async def main() -> list[bool]:
        seen = []
        async with limiter.within_limit():
            try:
                async with limiter.within_limit():
                    seen.append(True)
            except kiq.OverLimit:
                seen.append(False)
        async with kiq.Limiter.leaky("async-push", 2, 1, wait_timeout=0).within_limit():
            pass
        async with limiter.within_limit():
            seen.append(True)
        await config.store.aclose()
        return seen

    assert asyncio.run(main()) == [False, True]


def test_every_key_of_every_kind_expires(config, r):
    """Limiters named per partition stay bounded: each of their keys has a TTL."""
    for name in ("stripe-1", "stripe-2"):
        with kiq.Limiter.concurrent(name, 2).within_limit():
            pass
    for kind in ("bucket", "window", "leaky", "points"):
        with getattr(kiq.Limiter, kind)(f"{kind}-acct-7", 5, "minute").within_limit():
            pass
    with kiq.Limiter.concurrent("stripe-3", 2).within_limit():  # its holders ZSET is live
        assert r.pttl("kiq|limiter|stripe-3|holders") > 0

    keys = list(r.scan_iter("kiq|limiter*"))
    assert len(keys) > 8
    assert {k: r.pttl(k) > 0 for k in keys} == dict.fromkeys(keys, True)


def test_the_counts_say_immediate_waited_and_over_limit(config, r):
    """The limiter's hash counts calls that got in at once, after a wait, and refused."""
    limiter = kiq.Limiter.window("counted", 1, 0.2, wait_timeout=0.5)
    with limiter.within_limit():
        pass
    with limiter.within_limit():  # waits ~0.2 s for the window
        pass
    with (
        pytest.raises(kiq.OverLimit),
        kiq.Limiter.window("counted", 1, 60, wait_timeout=0).within_limit(),
    ):
        pass

    fields = r.hgetall("kiq|limiter|counted")
    assert (fields["held"], fields["immediate"], fields["waited"], fields["overlimit"]) == (
        "2",
        "1",
        "1",
        "1",
    )


def test_a_limiter_key_of_another_type_is_an_error_and_nothing_is_written(config, r):
    """A key in the limiter's place that is not its type: WRONGTYPE naming the key, and
    no other key of the limiter (holders, index, minute counts) is written."""
    r.set("kiq|limiter|clash", "someone else's")

    limiter = kiq.Limiter.concurrent("clash", 1)
    with (
        pytest.raises(ResponseError, match=r"WRONGTYPE kiq\|limiter\|clash"),
        limiter.within_limit(),
    ):
        pass

    assert r.get("kiq|limiter|clash") == "someone else's"
    assert sorted(r.scan_iter("kiq|limiter*")) == ["kiq|limiter|clash"]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: kiq.Limiter.concurrent("has space", 1), "letters, digits"),
        (lambda: kiq.Limiter.concurrent("x", 0), "limit 0"),
        (lambda: kiq.Limiter.bucket("x", 1, "fortnight"), "second, minute"),
        (lambda: kiq.Limiter.window("x", 1, -1), "seconds > 0"),
        (lambda: kiq.Limiter.bucket("x", 5, 1).within_limit(points=2), "only points"),
        (lambda: kiq.Limiter.points("x", 10, 1).within_limit(points=11), "from 1 to"),
    ],
)
def test_bad_definitions_are_refused_where_they_are_written(config, build, message):
    """A wrong name, count, interval or points value is a ConfigError saying what is allowed."""
    with pytest.raises(ConfigError, match=message):
        build()


# -- inside a job: rescheduled, not failed --------------------------------------------

FULL = kiq.Limiter.concurrent("full-test", 1, wait_timeout=0, reschedule=3)


class Limited(kiq.Job, name="test_limits.Limited"):
    def perform(self) -> None:
        with FULL.within_limit():
            pass


def executor_for(config) -> tuple[Executor, State, list[UnitOfWork]]:
    """A worker's Executor on a fake Pool that records the units it finished."""
    done: list[UnitOfWork] = []
    pool = type(
        "P",
        (),
        {
            "finished": lambda self, unit: done.append(unit),
            "requeue": lambda self, unit: None,
            "abandon": lambda self, unit: None,
        },
    )()
    state = State()
    return Executor(config, state, pool, threading.Event()), state, done


def run_once(config, payload: dict[str, Any]) -> tuple[State, list[UnitOfWork]]:
    """Run one job through the worker's Executor (the real path, on this thread)."""
    executor, state, done = executor_for(config)
    try:
        executor.run_sync(UnitOfWork.parse("default", wire.dumps(payload)))
    finally:
        executor.reaper.stop()
    return state, done


def test_a_job_refused_by_a_full_limiter_is_rescheduled_and_not_counted_as_a_failure(config, r):
    """OverLimit inside perform: the job goes to ``schedule`` with overrated 1, no
    retry_count; no error handler runs; failed stays 0; kiq|limited counts it; acked."""
    errors: list[BaseException] = []
    config.error_handlers.append(lambda exc, ctx: errors.append(exc))
    payload = {"class": "test_limits.Limited", "args": [], "queue": "default", "jid": "j1"}
    with FULL.within_limit():
        state, done = run_once(config, payload)

    ((raw, at),) = r.zrange("schedule", 0, -1, withscores=True)
    job = json.loads(raw)
    assert (job["jid"], job["overrated"], "retry_count" in job) == ("j1", 1, False)
    assert at > time.time()
    assert (errors, state.failed, len(done)) == ([], 0, 1)
    assert r.hgetall("kiq|limited") == {"test_limits.Limited": "1", "total": "1"}
    assert r.zcard("retry") == 0


class AsyncLimited(kiq.Job, name="test_limits.AsyncLimited"):
    async def perform(self) -> None:
        async with FULL.within_limit():
            pass


def test_an_async_job_refused_by_a_full_limiter_is_rescheduled_too(config, r):
    """``async with`` in an ``async def perform``: the same reschedule, no failure."""
    from kiq.aio import AsyncRunner

    executor, state, done = executor_for(config)
    runner = AsyncRunner(executor)
    runner.start()
    payload = {"class": "test_limits.AsyncLimited", "args": [], "queue": "default", "jid": "j3"}
    try:
        with FULL.within_limit():
            runner.submit(UnitOfWork.parse("default", wire.dumps(payload)))
            wait_until(lambda: done)
    finally:
        executor.stopping.set()
        runner.stop()
        executor.reaper.stop()

    ((raw, _),) = r.zrange("schedule", 0, -1, withscores=True)
    assert (json.loads(raw)["overrated"], state.failed) == (1, 0)


def test_past_its_reschedule_bound_a_limited_job_fails_normally(config, r):
    """overrated at the limiter's ``reschedule`` (3): OverLimit is a failure like any."""
    errors: list[BaseException] = []
    config.error_handlers.append(lambda exc, ctx: errors.append(exc))
    payload = {"class": "test_limits.Limited", "args": [], "queue": "default", "jid": "j2"}
    payload["overrated"] = 3
    with FULL.within_limit():
        state, _ = run_once(config, payload)

    ((raw, _),) = r.zrange("retry", 0, -1, withscores=True)
    assert json.loads(raw)["error_class"] == "OverLimit"
    assert [type(e) for e in errors] == [kiq.OverLimit]
    assert state.failed == 1
    assert r.zcard("schedule") == 0


# -- real processes ----------------------------------------------------------------------


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The most spans open at one moment (an end at t closes before a start at t)."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_concurrent_limit_of_5_holds_across_4_processes_of_10_slots(config, r, start_worker):
    """1,500 jobs of 40 ms behind one limiter of 5, run by 4 processes x 10 threads:
    never more than 5 at once, and the throughput close to 5 / 40 ms."""
    jobs, seconds = 1500, 0.04
    for _ in range(4):
        start_worker(*LIMITS, "-c", "10")
    wait_until(lambda: r.scard("processes") == 4, timeout=30)
    kiq.Client(config).push_bulk({"class": "LimitedCall", "args": [[seconds]] * jobs})

    wait_until(lambda: r.llen("test:spans") == jobs, timeout=90)

    spans = [tuple(map(float, s.split())) for s in r.lrange("test:spans", 0, -1)]
    assert max_overlap(spans) == 5
    elapsed = max(e for _, e in spans) - min(s for s, _ in spans)
    ideal = jobs * seconds / 5
    print(f"throughput {jobs / elapsed:.0f}/s, {ideal / elapsed:.0%} of 5/job-time")
    assert ideal / elapsed > 0.75  # CI's loaded 2 cores; the stress bench holds 90%


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_sigkilled_holder_gives_its_slot_back_after_lock_timeout(config, r, start_worker):
    """A process killed inside within_limit: its slot stays taken until its lock ends
    (lock_timeout 2 s), then the next caller gets in."""
    worker = start_worker(*LIMITS, "-c", "1", env={"LIMIT_LOCK_TIMEOUT": "2"})
    kiq.Client(config).push({"class": "HoldForever", "args": []})
    wait_until(lambda: r.llen("test:holding") == 1, timeout=30)
    locked = time.time()
    worker.proc.send_signal(signal.SIGKILL)
    worker.proc.wait(10)
    limiter = kiq.Limiter.concurrent("mutex-test", 1, wait_timeout=0, lock_timeout=2)

    with pytest.raises(kiq.OverLimit), limiter.within_limit():
        pass
    patient = kiq.Limiter.concurrent("mutex-test", 1, wait_timeout=10, lock_timeout=2)
    with patient.within_limit():
        got = time.time()

    assert locked + 1.5 < got < locked + 3.5


def start_waiter(redis_url: str, name: str, lock_timeout: float) -> subprocess.Popen[bytes]:
    """A process waiting on the concurrent limiter ``name`` of 1 (support/limit_waiter.py)."""
    return subprocess.Popen(
        [sys.executable, str(SUPPORT / "limit_waiter.py"), redis_url, name, str(lock_timeout)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_release_hands_the_slot_to_a_waiting_process_before_a_fresh_caller(config, r, redis_url):
    """Two processes wait in line for a limit of 1 held here: the release makes the
    first of them the holder in its own step, so a fresh caller right after the
    release is refused, and the processes get in in the order they came."""
    limiter = kiq.Limiter.concurrent("handoff", 1, wait_timeout=0, lock_timeout=30)
    holder = limiter.within_limit()
    holder.__enter__()
    waiters = []
    for i in range(2):
        waiters.append(start_waiter(redis_url, "handoff", 30))
        wait_until(lambda i=i: r.zcard("kiq|limiter|handoff|waiters") == i + 1, timeout=30)
    first = r.zrange("kiq|limiter|handoff|waiters", 0, 0)

    holder.__exit__(None, None, None)
    handed = r.zrange("kiq|limiter|handoff|holders", 0, -1)
    with pytest.raises(kiq.OverLimit), limiter.within_limit():  # a fresh caller: no barging
        pass
    for waiter in waiters:
        assert waiter.wait(30) == 0

    assert handed == first
    assert r.lrange("test:got", 0, -1) == [str(w.pid) for w in waiters]
    assert r.zcard("kiq|limiter|handoff|holders") == 0


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_slot_handed_to_a_sigkilled_waiter_comes_back_after_lock_timeout(config, r, redis_url):
    """A waiting process killed with SIGKILL, then the slot released: the release hands
    it to the dead waiter (its place had not lapsed yet), which holds it like a killed
    holder: refused to others until its lock ends (lock_timeout 2 s), then granted."""
    # held with a long lock (the waiter's start-up may take seconds on a loaded box),
    # released by the 2 s definition: a handed slot's lock is the releaser's lock_timeout
    held = kiq.Limiter.concurrent("handoff-kill", 1, lock_timeout=30).acquire()
    limiter = kiq.Limiter.concurrent("handoff-kill", 1, wait_timeout=0, lock_timeout=2)
    waiter = start_waiter(redis_url, "handoff-kill", 2)
    wait_until(lambda: r.zcard("kiq|limiter|handoff-kill|waiters") == 1, timeout=30)
    (token,) = r.zrange("kiq|limiter|handoff-kill|waiters", 0, 0)
    waiter.send_signal(signal.SIGKILL)
    waiter.wait(10)

    limiter.release(held)
    released = time.time()
    assert r.zrange("kiq|limiter|handoff-kill|holders", 0, -1) == [token]
    with pytest.raises(kiq.OverLimit), limiter.within_limit():
        pass
    patient = kiq.Limiter.concurrent("handoff-kill", 1, wait_timeout=10, lock_timeout=2)
    with patient.within_limit():
        got = time.time()

    assert released + 1.5 < got < released + 3.5
    assert r.llen("test:got") == 0


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_sigkilled_waiter_whose_place_lapsed_is_handed_nothing(config, r, redis_url):
    """A waiter renews its place in line each SLICE; killed, its place lapses within
    two SLICEs, and a release after that leaves the slot free: a fresh caller gets in."""
    limiter = kiq.Limiter.concurrent("handoff-lapse", 1, wait_timeout=0, lock_timeout=30)
    holder = limiter.within_limit()
    holder.__enter__()
    waiter = start_waiter(redis_url, "handoff-lapse", 30)
    wait_until(lambda: r.zcard("kiq|limiter|handoff-lapse|leases") == 1, timeout=30)
    waiter.send_signal(signal.SIGKILL)
    waiter.wait(10)
    ((_, lease),) = r.zrange("kiq|limiter|handoff-lapse|leases", 0, 0, withscores=True)
    assert lease <= redis_ms(r) + 2 * 1000 * SLICE + 50
    wait_until(lambda: redis_ms(r) > lease, timeout=10)

    holder.__exit__(None, None, None)
    with limiter.within_limit():  # not handed to the dead waiter
        pass

    assert r.zcard("kiq|limiter|handoff-lapse|waiters") == 0


def redis_ms(r: Any) -> int:
    seconds, micros = r.time()
    return int(seconds) * 1000 + int(micros) // 1000


def within(times: list[float], start: float, end: float) -> int:
    return sum(start <= t < end for t in times)


SLACK = 0.0015  # s: granted_at is in whole ms of the server's clock


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_rate_limiters_stay_at_or_under_their_limit_and_reach_90_percent_of_it(
    config, r, redis_url
):
    """bucket, window, leaky and points limiters (20 per 0.5 s; points: 40 per 0.5 s at 2
    a call), each called by 2 processes x 4 threads for 3 s: no window over its limit,
    and at least 90% of the limit's rate used."""
    limit, interval, seconds = 20, 0.5, 3.0
    specs = [
        f"bucket:b:{limit}:{interval}",
        f"window:w:{limit}:{interval}",
        f"leaky:l:{limit}:{interval}",
        f"points:p:{2 * limit}:{interval}:2",
    ]
    callers = [
        subprocess.Popen(
            [
                sys.executable,
                str(SUPPORT / "limit_caller.py"),
                redis_url,
                str(seconds),
                "4",
                *specs,
            ],
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        for _ in range(2)
    ]
    wait_until(lambda: r.llen("test:ready") == 2, timeout=30)  # both imported kiq
    r.rpush("test:go", "1", "1")  # and start together
    for caller in callers:
        assert caller.wait(60) == 0
    calls = {name: sorted(map(float, r.lrange(f"test:calls:{name}", 0, -1))) for name in "bwlp"}
    first = min(min(t) for t in calls.values())

    b = calls["b"]  # fixed windows aligned to the epoch; a call inside [w+SLACK, w+interval)
    w0 = (first // interval + 1) * interval  # was decided in window w
    windows = [w0 + i * interval for i in range(int(seconds / interval) - 1)]
    assert max(within(b, w + SLACK, w + interval) for w in windows) <= limit
    for name in "wlp":  # any span shorter than the interval: at most `limit` calls
        times = calls[name]
        burst = limit if name == "w" else 2 * limit  # leaky, points: a full bucket + its drain
        most = max(within(times, t, t + interval - SLACK) for t in times)
        assert most <= burst, name
    for name, times in calls.items():
        # from the second whole window on: a leaky or points bucket's burst is behind
        rate = within(times, w0 + interval, w0 + len(windows) * interval) / (
            (len(windows) - 1) * interval
        )
        assert rate >= 0.9 * limit / interval, (name, rate)
