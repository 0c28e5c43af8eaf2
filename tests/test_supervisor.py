"""``kiq worker --processes N``: N worker processes, restarted when they die."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator

import pytest
import redis

from kiq.config import Config
from tests.support import jobs
from tests.support.jobs import blocked_waiters, records
from tests.support.servers import Worker
from tests.support.wait import wait_until

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

    def start(*args: str) -> Worker:
        started.append(start_worker("--processes", "2", *args))
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
