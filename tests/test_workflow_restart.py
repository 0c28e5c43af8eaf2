"""Workflows survive a stop of every worker (issue 17's proof, CI sizes): a chain of 5
and a chord stopped mid-way with every ``kiq worker`` process gone, then finished by
new processes, each step run exactly once. Nothing of the workflow lives in a process:
its spec is JSON in Redis and each next step is pushed by the batch callbacks."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest
import redis

import kiq
from kiq.config import Config
from tests.support.batch_jobs import DONE, RUNS, Step, runs
from tests.support.servers import Worker
from tests.support.wait import wait_until

WORKERS = ":concurrency: 5\n"


def stop_midway_then_finish(
    start_worker: Callable[..., Worker],
    r: redis.Redis,
    config: Config,
    wid: str,
    midway: Callable[[], bool],
) -> None:
    first = [start_worker("-r", "batch_jobs", config_text=WORKERS) for _ in range(2)]
    wait_until(lambda: r.scard("processes") == 2, timeout=30)  # both beating: TERM is handled
    wait_until(midway, timeout=60)
    for worker in first:  # TERM to all at once: one stopping must not leave the other working
        worker.signal(signal.SIGTERM)
    for worker in first:
        assert worker.proc.wait(30) == 0
    assert kiq.WorkflowStatus(wid, config=config).state == "running"
    assert r.scard("processes") == 0
    [start_worker("-r", "batch_jobs", config_text=WORKERS) for _ in range(2)]
    wait_until(lambda: kiq.WorkflowStatus(wid, config=config).state == "succeeded", timeout=90)


@pytest.mark.slow
def test_chain_of_five_finishes_after_every_worker_stopped(
    config: Config, r: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    r.set("bt:pause", "0.3")
    wid = kiq.chain(*(Step.s(name, 1) for name in "abcde"), pass_result=True).start()
    stop_midway_then_finish(start_worker, r, config, wid, lambda: r.hexists(RUNS, "c"))
    assert runs(r) == dict.fromkeys("abcde", 1)
    assert r.hget("bt:out", "e") == "[1, 4]"


@pytest.mark.slow
def test_chord_finishes_after_every_worker_stopped(
    config: Config, r: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    r.set("bt:pause", "0.05")
    rows = 200
    header = kiq.group(Step.s(f"row{i}", 1) for i in range(rows))
    wid = kiq.chord(header, Step.s("sum", 0), pass_result=True).start()
    stop_midway_then_finish(start_worker, r, config, wid, lambda: r.hlen(DONE) >= rows // 3)
    counts = runs(r)
    assert len(counts) == rows + 1
    assert set(counts.values()) == {1}
    assert kiq.WorkflowStatus(wid, config=config).step("1")["state"] == "succeeded"
