"""A capsule with processes of its own (issue 14's mixed capsules): ``-g io:io:50:async:1``.

Real ``kiq worker`` processes on real Redis: the supervisor starts the shared process
(the default capsule) and the io capsule's own process even without ``--processes``;
each child's heartbeat lists only its capsules and slots; each queue's jobs run in its
own process; a SIGKILLed capsule child has its jobs recovered at once and comes back
with the same capsule; TERM stops both; systemd's READY counts every slot; memory-limit
restarts keep each child's capsules.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator

import orjson
import pytest
import redis

import kiq.api
from kiq.config import Config
from tests.support import capsule_jobs, jobs
from tests.support.jobs import identity_of, records
from tests.support.servers import Worker
from tests.support.wait import wait_until
from tests.test_sdnotify import Listener
from tests.test_supervisor import lines, pids

pytestmark = pytest.mark.slow

SPLIT = ("-q", "default", "-c", "3", "-g", "io:io:50:async:1", "-r", "capsule_jobs")


@pytest.fixture
def split(start_worker: Callable[..., Worker], r: redis.Redis) -> Iterator[Worker]:
    """``kiq worker -c 3 -g io:io:50:async:1`` (no --processes); afterwards no child
    outlives the test."""
    worker = start_worker(*SPLIT, config_text=":process_ttl: 60\n")
    yield worker
    with contextlib.suppress(Exception):
        worker.stop(30)
    for pid in pids(r):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def capsules_of(r: redis.Redis) -> dict[int, tuple[list[str], int, str, list[str]]]:
    """pid -> (its heartbeat's capsule names, info concurrency, hash concurrency, queues)."""
    out = {}
    for identity in r.smembers("processes"):
        raw = r.hget(identity, "info")
        if raw is None:
            continue
        info = orjson.loads(raw)
        out[info["pid"]] = (
            list(info["capsules"]),
            info["concurrency"],
            r.hget(identity, "concurrency"),
            info["queues"],
        )
    return out


def pid_by_capsule(r: redis.Redis) -> dict[str, int]:
    """``{"default": pid, "io": pid}`` once both children beat, else {}."""
    found = capsules_of(r)
    if len(found) != 2:
        return {}
    return {names[0]: pid for pid, (names, *_) in found.items() if len(names) == 1}


def ran(r: redis.Redis, key: str) -> dict[str, int]:
    """jid -> pid, from a list of ``jid pid`` lines (tests/support/capsule_jobs.IoPid)."""
    return {jid: int(pid) for jid, pid in (line.split() for line in r.lrange(key, 0, -1))}


def test_a_capsule_with_its_own_process_runs_apart_and_comes_back(
    config: Config, r: redis.Redis, split: Worker
) -> None:
    """Two children beat, one per group, each listing only its capsule and slots; the
    default queue's jobs run in one, the io queue's in the other; SIGKILL the io child
    mid-job: its jobs are recovered at once and finish on a new io-only child; TERM
    stops both."""
    by_capsule = wait_until(lambda: pid_by_capsule(r), timeout=30)
    assert split.pid not in pids(r)  # the supervisor itself runs no capsule
    assert capsules_of(r) == {
        by_capsule["default"]: (["default"], 3, "3", ["default"]),
        by_capsule["io"]: (["io"], 50, "50", ["io"]),
    }
    for name, slots in (("default", 3), ("io", 50)):  # as the Web UI's Busy page reads it
        process = kiq.api.ProcessSet.get(str(identity_of(r, by_capsule[name])))
        assert (process.concurrency, process.queues) == (slots, [name])

    thread_jids = [jobs.Record.perform_async(i) for i in range(20)]
    io_jids = [capsule_jobs.IoPid.perform_async() for _ in range(20)]
    wait_until(lambda: len(records(r)) == 20 and r.llen("cap:io:pids") == 20, timeout=30)
    assert {rec["jid"]: rec["pid"] for rec in records(r)} == dict.fromkeys(
        thread_jids, by_capsule["default"]
    )
    assert ran(r, "cap:io:pids") == dict.fromkeys(io_jids, by_capsule["io"])

    victim = by_capsule["io"]
    identity = identity_of(r, victim)
    held = {capsule_jobs.IoPid.perform_async(True) for _ in range(3)}
    wait_until(lambda: held <= set(ran(r, "cap:io:began")), timeout=30)
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()

    wait_until(lambda: f"recovered 3 jobs of {identity}, which died" in split.output(), timeout=30)
    assert not r.sismember("processes", str(identity))  # off the list at once
    again = wait_until(
        lambda: (found := pid_by_capsule(r)) and found.get("io") not in (None, victim) and found,
        timeout=30,
    )
    assert again["default"] == by_capsule["default"]  # the shared child was left alone
    assert capsules_of(r)[again["io"]] == (["io"], 50, "50", ["io"])
    r.set("cap:release", 1)
    done = wait_until(lambda: held <= set(ran(r, "cap:io:pids")) and ran(r, "cap:io:pids"))
    assert {done[jid] for jid in held} == {again["io"]}  # rerun on the new io child
    assert time.monotonic() - killed < 20  # long before process_ttl (60 s)

    assert split.stop() == 0
    assert not r.smembers("processes")
    assert all(not _alive(pid) for pid in again.values())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_systemd_ready_counts_the_capsules_own_process(
    r: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    """READY=1 comes once both slots' children beat (the shared one and io's own):
    "2 of 2 worker processes", though --processes is 1."""
    listener = Listener(f"@kiq-test-{os.getpid()}-{time.monotonic_ns()}")
    try:
        worker = start_worker(*SPLIT, env={"NOTIFY_SOCKET": listener.name})
        wait_until(lambda: any("READY" in m for m in listener.fields()), timeout=30)
        assert len(pid_by_capsule(r)) == 2  # both children beat before READY
        assert worker.stop() == 0
        sent = listener.fields()
    finally:
        listener.close()
    assert [m["STATUS"] for m in sent if "READY" in m] == ["2 of 2 worker processes"]


def test_memory_limit_restarts_keep_each_childs_capsules(
    r: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    """--max-memory-mb below any Python process: both children (shared and io's own)
    are quieted, stopped and replaced, each by a child of its own group, again and
    again."""
    worker = start_worker(*SPLIT, "--max-memory-mb", "1")

    def starts() -> tuple[int, int]:
        started = [msg for _, _, msg in lines(worker.output()) if " started: " in msg]
        io = sum(", capsule io, async, concurrency 50, queues io," in msg for msg in started)
        return len(started) - io, io

    wait_until(lambda: min(starts()) >= 3, timeout=60)
    assert worker.stop() == 0
    every = [msg for _, _, msg in lines(worker.output()) if " started: " in msg]
    assert all(  # each child ran one of the two groups, never another mix
        ", concurrency 3, queues default," in msg or ", capsule io," in msg for msg in every
    )
