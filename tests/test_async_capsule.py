"""Async capsules (issue 14, point 2): thousands of ``async def`` jobs on one event loop,
with the guarantees of thread jobs.

Real worker processes on real Redis: 1,500 coroutines of a 1,000-slot capsule stopped
by TERM mid-flight lose nothing; a coroutine past its timeout is retried; async
middleware wraps the awaited job; progress is reported from a coroutine; every
coroutine runs on the capsule's one loop thread. In-process: ``cancel(jid)`` and a job
of the wrong kind pushed at run time.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path

import pytest

import kiq.api
from kiq.aio import new_loop
from kiq.job import read_progress
from tests.support import capsule_jobs
from tests.support.inprocess import running
from tests.support.wait import wait_until

IO_CAPSULE = ("-q", "default", "-c", "2", "-g", "io:io:1000:async", "-r", "capsule_jobs")


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads: line")


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_term_mid_flight_loses_no_coroutine(config, r, start_worker) -> None:
    """1,500 jobs into a 1,000-slot async capsule; TERM while 1,000 await: after ``-t``
    they are cancelled and requeued with the ones never started; a second worker then
    runs every one of them. One loop thread, not a thread per job."""
    jids = set(capsule_jobs.Io.perform_bulk([[3.0]] * 1500))
    worker = start_worker(*IO_CAPSULE, "-t", "0.5")
    wait_until(lambda: int(r.get("cap:io:started") or 0) >= 1000, timeout=30.0)
    assert threads_of(worker.pid) < 40  # ~ processors of default, fetchers, waiters, loop

    assert worker.stop() == 0

    finished = set(r.lrange("cap:io:done", 0, -1))  # before TERM's -t ran out
    assert len(finished) < 500  # most were cut short mid-await
    assert r.llen("queue:io") == 1500 - len(finished)
    assert r.keys("kiq|inprogress|*") == []
    start_worker(*IO_CAPSULE)
    wait_until(lambda: set(r.lrange("cap:io:done", 0, -1)) == jids, timeout=45.0)
    assert r.zcard("retry") == 0


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_sigkilled_async_capsule_jobs_are_recovered(config, r, start_worker) -> None:
    """SIGKILL a worker while 200 coroutines of its async capsule await: they stay in its
    in-progress list of queue io, and a survivor recovers and runs every one."""
    jids = set(capsule_jobs.IoWait.perform_bulk([[]] * 200))
    expiry = ":process_ttl: 1\n"
    victim = start_worker(*IO_CAPSULE, config_text=expiry)
    wait_until(lambda: int(r.get("cap:io:started") or 0) >= 200, timeout=30.0)

    victim.kill()

    assert r.llen("cap:io:done") == 0
    assert sum(r.llen(key) for key in r.keys("kiq|inprogress|*|io")) == 200
    r.set("cap:release", 1)
    start_worker(*IO_CAPSULE, config_text=expiry)
    wait_until(lambda: set(r.lrange("cap:io:done", 0, -1)) == jids, timeout=45.0)


@pytest.mark.slow
def test_timed_out_coroutine_is_retried(config, r, start_worker) -> None:
    """A coroutine past its ``timeout`` is cancelled and fails with JobTimeout into the
    retry set; run again, it finishes."""
    jid = capsule_jobs.IoTimeout.perform_async()
    start_worker(*IO_CAPSULE)

    wait_until(lambda: r.zcard("retry") == 1, timeout=20.0)
    (entry,) = kiq.api.RetrySet(config)
    assert (entry.jid, entry.payload["error_class"]) == (jid, "JobTimeout")
    assert "timeout of 0.2s" in entry.payload["error_message"]
    kiq.api.RetrySet(config).retry_all()
    wait_until(lambda: r.lrange("cap:io:done", 0, -1) == [jid], timeout=20.0)
    assert r.get(f"cap:runs:{jid}") == "2"


@pytest.mark.slow
def test_async_middleware_wraps_the_awaited_job(config, r, start_worker) -> None:
    """An ``async def __call__`` server middleware runs before the job and after its
    last await (the job's record is written between the two)."""
    jid = capsule_jobs.Io.perform_async(0.05)
    start_worker(*IO_CAPSULE, env={"CAP_MIDDLEWARE": "1"})

    wait_until(lambda: r.llen("cap:mw") == 2, timeout=20.0)

    assert r.lrange("cap:mw", 0, -1) == [f"before {jid}", f"after {jid}"]
    assert r.lrange("cap:io:done", 0, -1) == [jid]


@pytest.mark.slow
def test_progress_from_a_coroutine_and_its_loop_thread(config, r, start_worker) -> None:
    """``self.progress`` works in an async capsule's job; every coroutine runs on the
    capsule's loop thread ``kiq.io.asyncio``."""
    jid = capsule_jobs.IoProgress.perform_async()
    for _ in range(3):
        capsule_jobs.IoThread.perform_async()
    start_worker(*IO_CAPSULE)

    progress = wait_until(lambda: read_progress(config, jid), timeout=20.0)
    wait_until(lambda: r.llen("cap:io:threads") == 3, timeout=20.0)

    assert (progress["percent"], progress["message"]) == (40.0, "halfway there")
    assert set(r.lrange("cap:io:threads", 0, -1)) == {"kiq.io.asyncio"}
    r.set("cap:release", 1)
    wait_until(lambda: r.lrange("cap:io:done", 0, -1) == [jid], timeout=20.0)


@pytest.mark.slow
def test_sync_job_pushed_to_an_async_capsule_fails_alone(config, r, start_worker) -> None:
    """A ``def perform`` job pushed at run time to an async capsule's queue fails with
    an error naming the fix; the async jobs beside it run."""
    bad = capsule_jobs.Fast.set(queue="io").perform_async(1)
    good = capsule_jobs.Io.perform_async(0.01)
    start_worker(*IO_CAPSULE)

    wait_until(lambda: r.zcard("retry") == 1 and r.llen("cap:io:done") == 1, timeout=20.0)

    (entry,) = kiq.api.RetrySet(config)
    assert (entry.jid, entry.payload["error_class"]) == (bad, "ConfigError")
    assert "served by the async capsule 'io'" in entry.payload["error_message"]
    assert r.lrange("cap:io:done", 0, -1) == [good]
    assert r.llen("cap:fast") == 0


# -- in-process: cancel(jid) -------------------------------------------------------------

STARTED = threading.Event()


class Waits(kiq.Job, name="CapWaits", queue="cancel"):
    async def perform(self) -> None:
        STARTED.set()
        await asyncio.sleep(30)


def test_cancel_one_running_coroutine_by_jid(config) -> None:
    """``AsyncRunner.cancel(jid)`` cancels that job's task: it is acknowledged, not
    retried, and its slot is free again."""
    config.capsule("cancel", queues=["cancel"], concurrency=10, mode="async")
    STARTED.clear()
    jid = Waits.perform_async()
    with running(config) as launcher:
        runner = launcher.managers[1].aio
        assert runner is not None
        assert STARTED.wait(10.0)
        wait_until(lambda: jid in launcher.state.cancellers)

        assert runner.cancel(jid) is True

        wait_until(lambda: not launcher.state.cancellers and launcher.managers[1]._in_flight() == 0)
        assert config.store.in_progress_sizes(launcher.identity, ["cancel"]) == [0]
        assert runner.cancel(jid) is False
    assert kiq.api.RetrySet(config).size() == 0
    assert kiq.api.fate(jid, config=config)["fate"] == "cancelled"


# -- the event loop: uvloop's when installed (kiq[uvloop]), asyncio's otherwise ---------


def test_async_capsule_runs_on_uvloop_when_installed(config) -> None:
    """With uvloop importable an async capsule's loop is uvloop's (and a job runs on it)."""
    import uvloop  # in the test extra and the dev group (test_needs: no importorskip)

    config.capsule("cancel", queues=["cancel"], concurrency=10, mode="async")
    STARTED.clear()
    jid = Waits.perform_async()
    with running(config) as launcher:
        runner = launcher.managers[1].aio
        assert runner is not None
        assert isinstance(runner.loop, uvloop.Loop)
        assert STARTED.wait(10.0)
        wait_until(lambda: jid in launcher.state.cancellers)
        assert runner.cancel(jid) is True
        wait_until(lambda: not launcher.state.cancellers)


def test_event_loop_is_asyncio_without_uvloop_or_when_refused(monkeypatch) -> None:
    """uvloop is optional: not importable, or ``KIQ_EVENT_LOOP=asyncio``, gives the
    standard loop, which runs a coroutine as well."""
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop -> ImportError
    loop = new_loop()
    try:
        assert type(loop).__module__.startswith("asyncio")
        assert loop.run_until_complete(asyncio.sleep(0, "ran")) == "ran"
    finally:
        loop.close()
    monkeypatch.delitem(sys.modules, "uvloop")
    monkeypatch.setenv("KIQ_EVENT_LOOP", "asyncio")
    loop = new_loop()
    try:
        assert type(loop).__module__.startswith("asyncio")
    finally:
        loop.close()


SYNC_RAN, ASYNC_RAN = threading.Event(), threading.Event()


class SyncNote(kiq.Job, name="test_async_capsule.SyncNote"):
    def perform(self) -> None:
        SYNC_RAN.set()


class AsyncNote(kiq.Job, name="test_async_capsule.AsyncNote"):
    async def perform(self) -> None:
        ASYNC_RAN.set()


def test_the_default_capsule_builds_its_loop_at_its_first_async_job(config) -> None:
    """A worker running thread jobs only has no event loop (nor uvloop's import, 2.3 MB
    of RSS); the first ``async def`` job starts the loop thread and runs on it."""
    SYNC_RAN.clear()
    ASYNC_RAN.clear()
    with running(config) as launcher:
        SyncNote.perform_async()
        assert SYNC_RAN.wait(10.0)
        assert launcher.manager.aio is None
        assert not any(t.name.endswith("asyncio") for t in threading.enumerate())

        AsyncNote.perform_async()
        assert ASYNC_RAN.wait(10.0)
        assert launcher.manager.aio is not None
        assert launcher.manager.aio.loop.is_running()


# -- in-process: kiq's own failure around a coroutine costs that job, not a slot ---------

GUARDED: list[int] = []


class Guarded(kiq.Job, name="test_async_capsule.Guarded", queue="guard"):
    async def perform(self, n: int) -> None:
        GUARDED.append(n)


@pytest.mark.parametrize(
    ("step", "message"),
    [("begin", "starting an async job failed in kiq"),
     ("finish", "recording the outcome of an async job failed in kiq")],
)  # fmt: skip
def test_a_kiq_failure_around_a_coroutine_frees_its_slot(
    config, monkeypatch, caplog, step, message
) -> None:
    """``Executor.begin`` or ``finish`` raising (a kiq bug, not the job's error) is
    logged with its traceback and frees the slot, as a Processor's watchdog does for a
    thread: a capsule of one slot still runs the next job; the failed one stays
    in-progress in Redis (requeued at exit), its busy entry gone."""
    from kiq.processor import Executor

    config.capsule("guard", queues=["guard"], concurrency=1, mode="async")
    GUARDED.clear()
    real = getattr(Executor, step)
    calls: list[int] = []

    def fails_once(self: Executor, *args: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError(f"{step} broke")
        return real(self, *args)

    monkeypatch.setattr(Executor, step, fails_once)
    Guarded.perform_async(1)
    with running(config) as launcher:
        manager = launcher.managers[1]
        wait_until(lambda: len(calls) == 1 and manager._in_flight() == 0)
        Guarded.perform_async(2)
        wait_until(lambda: 2 in GUARDED and manager._in_flight() == 0)
        # job 2's ack may still ride on the next fetch call: wait for it, job 1 stays
        wait_until(lambda: config.store.in_progress_sizes(launcher.identity, ["guard"]) == [1])
        assert not launcher.state.work
    assert any(message in r.getMessage() and r.exc_info for r in caplog.records)
    ran = [1, 2] if step == "finish" else [2]  # begin failed: job 1 never started
    assert ran == GUARDED
