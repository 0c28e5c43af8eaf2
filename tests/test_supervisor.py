"""``kiq worker --processes N``: N worker processes, restarted when they die."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import redis

import kiq
from kiq.config import Config
from tests.support import jobs
from tests.support.jobs import blocked_waiters, identity_of, records
from tests.support.servers import RedisServer, Worker
from tests.support.wait import wait_until
from tests.test_sdnotify import Listener

pytestmark = pytest.mark.slow


def pids(r: redis.Redis) -> set[int]:
    """Pids of the live kiq processes (identity = host:pid:nonce)."""
    return {int(str(identity).split(":")[-2]) for identity in r.smembers("processes")}


@pytest.fixture
def supervised(
    start_worker: Callable[..., Worker], r: redis.Redis
) -> Iterator[Callable[..., Worker]]:
    """Start a supervisor; afterwards TERM it (it stops its children), then SIGKILL any
    child still beating, so no worker outlives the test."""
    started: list[Worker] = []

    def start(*args: str, processes: int = 2, config_text: str = "") -> Worker:
        started.append(start_worker("--processes", str(processes), *args, config_text=config_text))
        return started[-1]

    yield start
    for supervisor in started:
        with contextlib.suppress(Exception):
            supervisor.stop(30)
    for pid in pids(r):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_runs_n_processes_that_share_the_work(
    config: Config, r: redis.Redis, supervised: Callable[..., Worker]
) -> None:
    """Two child processes heartbeat, and both take jobs from the one queue."""
    supervisor = supervised()
    wait_until(lambda: len(pids(r)) == 2, timeout=30)
    assert supervisor.pid not in pids(r)
    wait_until(lambda: blocked_waiters(r) == 4)  # both children idle, waiting for work
    jobs.Slow.perform_bulk([[0.2, i] for i in range(40)])
    wait_until(lambda: len(records(r, "test:done")) == 40, timeout=60)
    assert {record["pid"] for record in records(r, "test:done")} == pids(r)
    assert supervisor.stop() == 0
    wait_until(lambda: not pids(r), timeout=30)


def test_a_child_that_dies_is_replaced(
    config: Config, r: redis.Redis, supervised: Callable[..., Worker]
) -> None:
    """SIGKILL one child: the supervisor starts a new one, back to two processes."""
    supervised()
    wait_until(lambda: len(pids(r)) == 2, timeout=30)
    victim = min(pids(r))
    os.kill(victim, signal.SIGKILL)
    r.srem("processes", *[i for i in r.smembers("processes") if f":{victim}:" in i])
    wait_until(lambda: len(pids(r)) == 2 and victim not in pids(r), timeout=30)


def test_a_child_over_the_memory_limit_is_restarted(
    config: Config, r: redis.Redis, supervised: Callable[..., Worker]
) -> None:
    """With --max-memory-mb below any Python process, children are stopped and replaced."""
    supervisor = supervised("--max-memory-mb", "1")
    wait_until(lambda: "restarting it" in supervisor.output(), timeout=30)
    wait_until(lambda: supervisor.output().count("starting a new one") >= 1, timeout=30)


def test_an_idle_child_over_the_memory_limit_gets_one_term(
    config: Config, r: redis.Redis, supervised: Callable[..., Worker]
) -> None:
    """Each limit hit stops its child once: one quiet, then (idle) one TERM, one
    "shutting down" line, never a second TERM forcing it (it was TERMed every 0.5 s)."""
    supervisor = supervised("--max-memory-mb", "1")
    wait_until(lambda: supervisor.output().count("starting a new one") >= 3, timeout=60)
    assert supervisor.stop() == 0

    log = lines(supervisor.output())
    hit = [int(msg.split()[1]) for _, pid, msg in log if "restarting it" in msg]
    shut = [pid for _, pid, msg in log if msg.startswith("shutting down")]
    assert len(hit) >= 3
    assert sorted(hit) == sorted(set(hit))  # one hit per child
    assert set(hit) <= set(shut)
    assert sorted(shut) == sorted(set(shut))  # one TERM per child, the final stop's included
    assert "forcing shutdown" not in supervisor.output()


def test_a_dead_childs_jobs_are_recovered_at_once(
    config: Config, r: redis.Redis, supervised: Callable[..., Worker]
) -> None:
    """SIGKILL the child running a long job: the supervisor, which knows the child's
    identity, requeues the job at once; it runs again on another child well before the
    heartbeat (process_ttl 60 s) would have expired."""
    supervisor = supervised(config_text=":process_ttl: 60\n")
    wait_until(lambda: len(pids(r)) == 2, timeout=30)
    identities = {pid: identity_of(r, pid) for pid in pids(r)}
    jobs.Slow.perform_async(30, "long")
    victim = wait_until(lambda: records(r, "test:started"), timeout=30)[0]["pid"]
    assert identities[victim] is not None
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()

    again = wait_until(lambda: records(r, "test:started")[1:], timeout=30)[0]
    assert time.monotonic() - killed < 10
    assert again["pid"] != victim
    recovered = f"recovered 1 jobs of {identities[victim]}, which died"
    wait_until(lambda: recovered in supervisor.output())  # logged within 50 ms
    assert not r.sismember("processes", str(identities[victim]))  # off the list at once


# A plain-format line: "<ts>Z pid=<pid> tid=... LEVEL: message"
LINE = re.compile(r"^(\S+)Z pid=(\d+) .*?(?:INFO|WARNING|ERROR): (.*)$", re.MULTILINE)


def lines(output: str) -> list[tuple[float, int, str]]:
    """(wall time, pid, message) of each log line."""
    out = []
    for ts, pid, message in LINE.findall(output):
        whole, _, ms = ts.partition(".")
        at = time.mktime(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + int(ms) / 1000
        out.append((at, int(pid), message))
    return out


def test_a_job_that_leaks_memory_ends_dead_and_its_neighbours_finish(
    config: Config, r: redis.Redis, supervised: Callable[..., Worker]
) -> None:
    """--max-memory-mb with a job that leaks: each limit hit quiets the child once (no
    TERM storm), gives its jobs -t, then KILLs it; the leaking job counts one crash each
    time and is buried as kiq.PoisonJob after max_recoveries, while a short neighbour
    finishes within -t and a long one (blamed once with it) runs apart and finishes."""
    timeout = 2.0
    supervisor = supervised(
        "--max-memory-mb", "150", "-t", str(timeout),
        processes=1, config_text=":max_recoveries: 1\n:process_ttl: 60\n",
    )  # fmt: skip
    wait_until(lambda: len(pids(r)) == 1, timeout=30)
    jobs.Slow.perform_async(0.5, "short")
    jobs.Slow.perform_async(4, "long")
    jobs.Leak.perform_async(250, 60)

    dead = wait_until(lambda: r.zrange("dead", 0, -1), timeout=60)
    wait_until(lambda: len(records(r, "test:done")) == 2, timeout=60)

    (buried,) = [orjson.loads(raw) for raw in dead]
    assert (buried["class"], buried["error_class"]) == ("Leak", "kiq.PoisonJob")
    started = [tuple(rec["args"]) for rec in records(r, "test:started")]
    assert started.count((250, 60)) == 2  # max_recoveries + 1 runs, then dead
    assert started.count((0.5, "short")) == 1  # finished within -t: not blamed
    assert 1 <= started.count((4, "long")) <= 2  # blamed with the leak once at most
    assert sorted(rec["args"][1] for rec in records(r, "test:done")) == ["long", "short"]

    log = lines(supervisor.output())
    me = supervisor.pid
    hits = [(at, msg) for at, pid, msg in log if pid == me and "restarting it" in msg]
    kills = [(at, msg) for at, pid, msg in log if pid == me and "killing it" in msg]
    quiets = [msg for _, pid, msg in log if pid != me and msg.startswith("quieting")]
    assert len(hits) == len(kills) == len(quiets) == 2  # one quiet, one KILL per hit
    assert not [msg for _, pid, msg in log if pid != me and msg.startswith("shutting down")]
    for (hit_at, hit), (kill_at, kill) in zip(hits, kills, strict=True):
        assert hit.split()[1] == kill.split()[1]  # the same worker pid
        assert kill_at - hit_at >= timeout - 0.01  # its jobs had -t


def test_the_supervisor_alone_notifies_systemd(
    r: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    """Under Type=notify the supervisor (the unit's main pid) sends READY=1 once both
    children beat, then watchdog pings, and STOPPING=1 at the stop; the children send
    nothing (systemd ignores them, so no READY ever came; a restart said STOPPING)."""
    listener = Listener(f"@kiq-test-{os.getpid()}-{time.monotonic_ns()}")
    try:
        env = {"NOTIFY_SOCKET": listener.name, "WATCHDOG_USEC": "2000000"}
        supervisor = start_worker("--processes", "2", env=env)
        wait_until(lambda: any("READY" in m for m in listener.fields()), timeout=30)
        assert len(pids(r)) == 2  # both children beat before READY
        wait_until(lambda: sum("WATCHDOG" in m for m in listener.fields()) >= 2, timeout=30)
        assert supervisor.stop() == 0
        sent = listener.fields()
    finally:
        listener.close()
    assert [m["STATUS"] for m in sent if "READY" in m] == ["2 of 2 worker processes"]
    assert sum("STOPPING" in m for m in sent) == 1


def test_a_dead_childs_jobs_are_recovered_once_redis_is_back(tmp_path: Path) -> None:
    """A child dies while Redis is away: the supervisor cannot recover its job then, says
    so, and recovers it once Redis is back, still well before process_ttl (60 s)."""
    with RedisServer(tmp_path, ["appendonly yes"]) as server:
        supervisor = Worker(
            tmp_path, server.url(), "--processes", "2", config_text=":process_ttl: 60\n"
        )
        try:
            r = server.client()
            wait_until(lambda: len(pids(r)) == 2, timeout=30)
            config = Config(redis_url=server.url())
            try:
                kiq.Client(config).push({"class": "Slow", "args": [30, "long"]})
            finally:
                config.close()
            victim = wait_until(lambda: records(r, "test:started"), timeout=30)[0]["pid"]
            server.stop()
            os.kill(victim, signal.SIGKILL)
            wait_until(lambda: "could not recover the jobs of" in supervisor.output(), timeout=30)
            server.start()
            back = time.monotonic()

            again = wait_until(lambda: records(server.client(), "test:started")[1:], timeout=30)
            assert time.monotonic() - back < 15
            assert again[0]["pid"] != victim
        finally:
            supervisor.stop(30)
            supervisor.kill()
