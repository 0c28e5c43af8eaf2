"""The chaos run of issue 4, in its short form: workers SIGKILLed at random, poison jobs,
Redis SIGKILLed and restarted from its AOF, and not one job lost (bench/chaos.py); with
issue 12's hostile input besides (bench/chaos_hostile.py): bad-field payloads and garbage
on queues, ``schedule``, ``retry`` and a vanished process's in-progress list, a queue key
of the wrong type, and a few seconds of Redis out of memory.

One short run (a module fixture, ~40 s) serves the tests that check each claim.

CI runs these through pytest (``.ci/run`` has no separate chaos step). Each run starts
its own redis-server, so it does not touch the test database.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

CHAOS = Path(__file__).resolve().parent.parent / "bench" / "chaos.py"


def chaos(*args: str, timeout: float) -> tuple[int, dict[str, Any], str]:
    """Run bench/chaos.py; return its exit status, its RESULT line and its output."""
    done = subprocess.run(
        [sys.executable, str(CHAOS), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = done.stdout + done.stderr
    results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert results, f"no RESULT line from bench/chaos.py:\n{output}"
    return done.returncode, json.loads(results[-1].removeprefix("RESULT ")), output


@pytest.fixture(scope="module")
def short_run() -> tuple[int, dict[str, Any], str]:
    """The hostile short run: plants, a WRONGTYPE queue, an OOM window, SIGKILLs."""
    return chaos("--short", timeout=200)


@pytest.fixture(scope="module")
def plain_run() -> tuple[int, dict[str, Any], str]:
    """The short run without hostile input: SIGKILLs, poison jobs and a Redis crash."""
    return chaos("--short", "--no-hostile", timeout=200)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_short_chaos_run_loses_no_job(plain_run):
    """3,000 jobs through SIGKILLed workers, poison jobs and a Redis crash: every job is
    done or, for the planted poison jobs only, dead as kiq.PoisonJob; none is lost."""
    status, result, output = plain_run

    assert (result["lost"], result["unfinished"], result["dead_unexpected"]) == (0, 0, []), output
    assert result["completed"] == result["enqueued"] - result["dead_expected"], output
    assert min(result["kills"], result["poison_exits"]) > 0, output  # the chaos did happen
    assert status == 0, output


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_hostile_chaos_run_loses_no_job(short_run):
    """With the hostile plants too, every job is done, none is lost or stranded in a list
    no sweep finds, none is still waiting at the deadline, and the dead set holds only the
    planted poison jobs as kiq.PoisonJob: no good job beside the crashes is buried with
    them (a crash counts only against the jobs that had started, issue 12)."""
    status, result, output = short_run

    assert (result["lost"], result["stranded"]) == (0, 0), output
    assert (result["unfinished"], result["unfinished_where"]) == (0, {}), output
    assert result["dead_unexpected"] == [], output
    assert result["dead"] == result["dead_expected"], output
    assert result["completed"] == result["enqueued"] - result["dead_expected"], output
    assert min(result["kills"], result["poison_exits"]) > 0, output  # the chaos did happen
    assert status == 0, output


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_short_chaos_run_accounts_for_every_hostile_plant(short_run):
    """Every plant ends as kiq.payload's table says, by every path (queue, schedule,
    retry, a dead process's in-progress list): a bad field the engine acts on is dead
    unrun as kiq.PayloadError with a message, a bad descriptive field is dropped and the
    job done, garbage is dead as written, a timeout guard dies as JobTimeout; none is
    left waiting or lost."""
    _, result, output = short_run

    assert result["planted"] >= 100, output
    assert result["plants_unaccounted"] == [], output
    assert result["plants_dead"] + result["plants_done"] == result["planted"], output


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_short_chaos_run_keeps_every_worker_part_alive(short_run):
    """Through the plants, the OOM window and the WRONGTYPE queue no worker thread dies
    or even crashes (each of them is sorted: dead job, back-off, skipped queue), no worker
    exits but by the harness's SIGKILLs and poison jobs, and every live worker still
    beats at the end."""
    _, result, output = short_run

    assert result["oom_s"] >= 3, output  # the OOM window did happen
    assert result["thread_deaths"] == [], output
    assert result["part_crashes"] == [], output
    assert result["unexpected_exits"] == [], output
    assert result["not_beating"] == [], output


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_short_chaos_run_skips_the_wrongtype_queue_loudly(short_run):
    """queue:wrongtype (a STRING) is among every worker's queues: the good queues still
    drain (above) and the workers log an error about it."""
    _, result, output = short_run

    assert result["wrongtype_lines"] > 0, output


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_poison_job_in_a_backlog_is_buried_alone():
    """A poison job fetched with a batch of others under load takes only itself to the
    dead set: the jobs that crashed beside it are not buried with it (fetch isolation)."""
    status, result, output = chaos(
        "--jobs", "2000", "--seconds", "1", "--poison", "1", "--no-hostile", timeout=100
    )

    assert result["dead_unexpected"] == [], output
    assert (result["dead"], result["lost"], result["unfinished"]) == (1, 0, 0), output
    assert status == 0, output
