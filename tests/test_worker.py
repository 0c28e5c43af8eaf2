"""A real ``kiq worker`` process end to end: draining, job kinds, stats, shutdown, signals
and job timeouts (issue 2 "Done when", issue 4 points 1, 2, 4, 5).

Each test starts its own worker on the test database through ``start_worker`` and
watches Redis from outside, as an operator would; nothing here sleeps to wait.
"""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime

import orjson
import pytest

from kiq.keys import STAT_TTL
from tests.support import jobs
from tests.support.jobs import blocked_waiters, identity_of, records
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow


def in_progress(r) -> list[str]:
    return list(r.scan_iter("kiq|inprogress|*"))


def queued_jids(r, queue: str = "default") -> list[str]:
    """Jids in ``queue:<queue>`` in the order they will be fetched (tail first)."""
    return [orjson.loads(raw)["jid"] for raw in reversed(r.lrange(f"queue:{queue}", 0, -1))]


def wait_quiet(r, pid: int) -> str | None:
    identity = wait_until(lambda: identity_of(r, pid))
    wait_until(lambda: r.hget(identity, "quiet") == "true")
    return identity


# -- draining ------------------------------------------------------------------------


def test_drains_10000_bulk_jobs_exactly_once(config, r, start_worker):
    """10,000 no-op jobs pushed by perform_bulk each run exactly once, and nothing is left
    in the queue or in any in-progress list afterwards."""
    jobs.Tally.perform_bulk([[i] for i in range(10_000)])

    start_worker("-c", "10")

    wait_until(lambda: r.scard("test:tally") == 10_000, timeout=40)
    wait_until(lambda: r.llen("queue:default") == 0 and not in_progress(r))
    assert r.get("test:count") == "10000"


def test_runs_sync_and_async_jobs(config, r, start_worker):
    """A ``def perform`` job and an ``async def perform`` job both run in one worker."""
    sync_jid = jobs.Record.perform_async("sync")
    async_jid = jobs.AsyncRecord.perform_async("async")

    start_worker()

    wait_until(lambda: len(records(r)) == 2)
    done = records(r)
    assert {(d["jid"], d["args"][0]) for d in done} == {(sync_jid, "sync"), (async_jid, "async")}


@pytest.mark.slow
def test_async_jobs_share_the_concurrency_limit(config, r, start_worker):
    """With -c 2, never more than 2 async jobs run at once, though more are fetched ahead."""
    jobs.AsyncGauge.perform_bulk([[0.2] for _ in range(8)])
    worker = start_worker("-c", "2")
    wait_until(lambda: r.llen("test:done") == 8, timeout=30)
    worker.stop()
    levels = [int(level) for level in r.lrange("test:levels", 0, -1)]
    assert len(levels) == 8
    assert max(levels) == 2


def test_runs_a_5mb_payload(config, r, start_worker):
    """A job whose payload is 5 MB is fetched and run like any other."""
    blob = "x" * 5_000_000
    jid = jobs.Big.perform_async(blob)

    start_worker()

    (done,) = wait_until(lambda: records(r), timeout=20)
    assert (done["jid"], done["args"]) == (jid, [5_000_000])


def test_stats_are_flushed_to_totals_and_daily_keys(config, r, start_worker):
    """stat:processed counts every execution, stat:failed the failures; both also go to
    the UTC daily keys, which expire after five years."""
    for i in range(3):
        jobs.Record.perform_async(i)
    jobs.Boom.perform_async(1)
    jobs.Boom.perform_async(2)

    start_worker()

    wait_until(lambda: r.get("stat:processed") == "5" and r.get("stat:failed") == "2")
    day = datetime.now(UTC).date().isoformat()
    assert r.get(f"stat:processed:{day}") == "5"
    assert r.get(f"stat:failed:{day}") == "2"
    assert 0 < r.ttl(f"stat:processed:{day}") <= STAT_TTL
    assert 0 < r.ttl(f"stat:failed:{day}") <= STAT_TTL


@pytest.mark.parametrize(
    ("job", "error"), [(jobs.Exit, "SystemExit"), (jobs.Interrupt, "KeyboardInterrupt")]
)
def test_exit_or_interrupt_in_a_job_is_a_failure_and_the_process_keeps_serving(
    config, r, start_worker, job, error
):
    """A job raising SystemExit or KeyboardInterrupt is recorded as failed (retry=0: dead
    set) and the worker goes on to run the next job."""
    job.perform_async()
    worker = start_worker("-c", "1")
    (dead,) = wait_until(lambda: r.zrange("dead", 0, -1))
    assert orjson.loads(dead)["error_class"] == error

    jobs.Record.perform_async("after")

    wait_until(lambda: records(r))
    assert worker.proc.poll() is None


# -- job timeouts ----------------------------------------------------------------------


@pytest.mark.parametrize("job", [jobs.SlowTimeout, jobs.AsyncSlowTimeout])
def test_timeout_stops_the_job_and_records_job_timeout(config, r, start_worker, job):
    """A job running past its ``timeout`` is stopped and fails with JobTimeout (retry=0:
    dead set); the worker then runs the next job."""
    jid = job.perform_async()
    worker = start_worker("-c", "1")

    (dead,) = wait_until(lambda: r.zrange("dead", 0, -1))
    payload = orjson.loads(dead)
    assert (payload["jid"], payload["error_class"]) == (jid, "JobTimeout")

    jobs.Record.perform_async("after")
    wait_until(lambda: records(r))
    assert worker.proc.poll() is None


def test_async_job_raising_timeout_error_itself_is_not_a_job_timeout(config, r, start_worker):
    """A TimeoutError raised by an async job's own code keeps its class and message; it is
    not reported as the job's ``timeout`` expiring."""
    jobs.AsyncRaisesTimeout.perform_async()

    start_worker()

    (dead,) = wait_until(lambda: r.zrange("dead", 0, -1))
    payload = orjson.loads(dead)
    assert (payload["error_class"], payload["error_message"]) == (
        "TimeoutError",
        "upstream took too long",
    )


# -- the idle fast path (a job arriving at an idle worker runs on its waiter thread) -----


def idle_worker(r, start_worker, *args: str, config_text: str = ""):
    """A worker that has started and found its queue empty: both waiters are blocking."""
    worker = start_worker(*args, config_text=config_text)
    wait_until(lambda: identity_of(r, worker.pid))
    wait_until(lambda: blocked_waiters(r) == 2)
    return worker


def test_a_job_arriving_at_an_idle_worker_runs_on_the_waiter_thread(config, r, start_worker):
    """Each job sent to an idle worker runs on a waiter thread (no hop to a processor),
    exactly once, and is acknowledged."""
    idle_worker(r, start_worker, "-c", "2")
    sent = []
    for i in range(6):
        sent.append(jobs.WhereRan.perform_async(i))
        wait_until(lambda: len(records(r)) == len(sent))
        wait_until(lambda: blocked_waiters(r) == 2)  # idle again, as between requests
    assert [d["jid"] for d in records(r)] == sent
    threads = r.lrange("test:threads", 0, -1)
    assert set(threads) == {"kiq.waiter-default"}
    wait_until(lambda: in_progress(r) == [])


def test_on_the_waiter_thread_timeouts_hold_and_async_jobs_go_to_the_loop(config, r, start_worker):
    """A job timing out on the waiter thread fails with JobTimeout and the waiter goes on
    serving; an async job arriving at an idle worker runs on the event loop, and the
    next sync job still runs on the waiter thread."""
    idle_worker(r, start_worker, "-c", "2")
    jid = jobs.SlowTimeout.perform_async()
    (dead,) = wait_until(lambda: r.zrange("dead", 0, -1))
    assert (orjson.loads(dead)["jid"], orjson.loads(dead)["error_class"]) == (jid, "JobTimeout")
    wait_until(lambda: blocked_waiters(r) == 2)

    async_jid = jobs.AsyncRecord.perform_async("async")
    wait_until(lambda: len(records(r)) == 1)
    wait_until(lambda: blocked_waiters(r) == 2)
    sync_jid = jobs.WhereRan.perform_async("sync")  # the waiter was not stuck in the timeout
    wait_until(lambda: len(records(r)) == 2)
    assert [d["jid"] for d in records(r)] == [async_jid, sync_jid]
    assert r.lrange("test:threads", 0, -1) == ["kiq.waiter-default"]


def test_a_long_job_on_the_waiter_thread_leaves_its_queue_served(config, r, start_worker):
    """While a job runs on the waiter thread, the next job on its queue is still taken
    at once; TERM past the timeout interrupts it and puts it back like any running job."""
    worker = idle_worker(r, start_worker, "-c", "2", config_text=":timeout: 1\n")
    long = jobs.Slow.perform_async(30, "long")
    wait_until(lambda: r.llen("test:started") == 1)
    nxt = jobs.WhereRan.perform_async("next")
    wait_until(lambda: len(records(r)) == 1)
    assert records(r)[0]["jid"] == nxt

    sent = time.monotonic()
    worker.signal(signal.SIGTERM)

    assert worker.proc.wait(10) == 0
    assert time.monotonic() - sent < 3.5  # 1 s timeout, no wait on the busy waiter thread
    assert queued_jids(r) == [long]
    assert in_progress(r) == []


# -- graceful and forced shutdown -------------------------------------------------------


def test_term_lets_running_jobs_finish_within_the_timeout(config, r, start_worker):
    """TERM while 10 jobs run on 10 slots: all finish, the exit code is 0, nothing is
    requeued and nothing is left in progress."""
    jids = {jobs.Slow.perform_async(0.5, i) for i in range(10)}
    worker = start_worker("-c", "10", config_text=":timeout: 20\n")
    wait_until(lambda: r.llen("test:started") == 10)

    worker.signal(signal.SIGTERM)

    assert worker.proc.wait(20) == 0
    assert {d["jid"] for d in records(r)} == jids
    assert r.llen("test:started") == 10
    assert r.llen("queue:default") == 0
    assert in_progress(r) == []


def test_term_past_the_timeout_requeues_unfinished_jobs_in_order(config, r, start_worker):
    """TERM with a short timeout: a job that finishes within it is done, the others
    (running or fetched ahead) go back to the tail of the queue in their original
    order; every job is done or queued exactly once and the exit code is 0."""
    quick = jobs.Slow.perform_async(0.3, "quick")
    rest = [jobs.Slow.perform_async(30, i) for i in range(5)]
    worker = start_worker("-c", "2", config_text=":timeout: 1\n")
    wait_until(lambda: r.llen("test:started") == 2)

    sent = time.monotonic()
    worker.signal(signal.SIGTERM)

    assert worker.proc.wait(10) == 0
    assert time.monotonic() - sent < 3.5  # 1 s timeout; no needless 3 s hard-shutdown wait
    assert [d["jid"] for d in records(r)] == [quick]
    assert queued_jids(r) == rest
    assert in_progress(r) == []


def test_second_term_forces_shutdown_at_once(config, r, start_worker):
    """A second TERM during the shutdown grace stops waiting: the running job goes back
    to its queue and the process exits 0 long before the 30 s timeout."""
    jid = jobs.Slow.perform_async(30)
    worker = start_worker("-c", "1", config_text=":timeout: 30\n")
    wait_until(lambda: r.llen("test:started") == 1)
    worker.signal(signal.SIGTERM)
    wait_quiet(r, worker.pid)

    sent = time.monotonic()
    worker.signal(signal.SIGTERM)

    assert worker.proc.wait(10) == 0
    assert time.monotonic() - sent < 2.5  # not the 30 s timeout, nor a 3 s idle wait
    assert queued_jids(r) == [jid]
    assert records(r) == []


def test_tstp_quiets_the_process(config, r, start_worker):
    """TSTP: the heartbeat says quiet, the running job finishes, no new job is taken,
    and the process stays alive until TERM."""
    jobs.Slow.perform_async(0.5, "running")
    worker = start_worker("-c", "1")
    wait_until(lambda: r.llen("test:started") == 1)

    worker.signal(signal.SIGTSTP)
    identity = wait_quiet(r, worker.pid)
    late = jobs.Record.perform_async("late")

    wait_until(lambda: records(r))
    beat = r.hget(identity, "beat")
    wait_until(lambda: r.hget(identity, "beat") != beat)  # a full beat after the job
    assert [d["args"] for d in records(r)] == [[0.5, "running"]]
    assert queued_jids(r) == [late]
    assert worker.proc.poll() is None
    assert worker.stop() == 0


def test_remote_tstp_through_the_signals_list_quiets(config, r, start_worker):
    """LPUSH TSTP to ``<identity>-signals`` (the Web UI's Quiet button) quiets the process."""
    worker = start_worker()
    identity = wait_until(lambda: identity_of(r, worker.pid))

    r.lpush(f"{identity}-signals", "TSTP")

    wait_until(lambda: r.hget(identity, "quiet") == "true")
    late = jobs.Record.perform_async("late")
    beat = r.hget(identity, "beat")
    wait_until(lambda: r.hget(identity, "beat") != beat)
    assert queued_jids(r) == [late]
    assert worker.proc.poll() is None


def test_remote_term_through_the_signals_list_stops(config, r, start_worker):
    """LPUSH TERM to ``<identity>-signals`` (the Web UI's Stop button) stops the process
    cleanly: exit code 0 and it leaves the ``processes`` set."""
    worker = start_worker()
    identity = wait_until(lambda: identity_of(r, worker.pid))

    r.lpush(f"{identity}-signals", "TERM")

    assert worker.proc.wait(10) == 0
    assert identity not in r.smembers("processes")


def test_ttin_logs_every_thread_stack(config, r, start_worker):
    """TTIN logs each thread's name and stack, and the process keeps running."""
    worker = start_worker()
    wait_until(lambda: identity_of(r, worker.pid))

    worker.signal(signal.SIGTTIN)

    wait_until(lambda: "thread kiq.heartbeat" in worker.output())
    out = worker.output()
    assert "thread kiq.processor-0" in out
    assert 'File "' in out
    assert worker.proc.poll() is None
