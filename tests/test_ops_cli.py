"""``kiq status``, ``kiq ping``, ``kiq quiet``, ``kiq stop`` and ``kiq mark`` (issue 8 §5, §7):
their output and exit codes, run as subprocesses against real ``kiq worker`` processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kiq import payload as wire
from tests.conftest import ROOT
from tests.support.jobs import identity_of
from tests.support.servers import free_port
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def empty_db(config):
    """Every test starts on an empty database (the ``config`` fixture flushes it)."""


def kiq(url: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``kiq ARGS --redis-url URL`` and return its exit code and output."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    env.pop("KIQ_REDIS_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "kiq.cli", *args, "--redis-url", url],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
    )


def old_job(r, queue: str, age: float) -> None:
    """A job that has waited ``age`` seconds in ``queue`` (no worker reads that queue)."""
    payload = {"class": "Record", "args": [], "jid": f"old-{queue}", "queue": queue}
    payload["enqueued_at"] = wire.now() - age
    r.lpush(f"queue:{queue}", wire.dumps(payload))
    r.sadd("queues", queue)


@pytest.fixture
def worker(r, start_worker):
    """One running worker and its identity."""
    process = start_worker()
    identity = wait_until(lambda: identity_of(r, process.pid), timeout=20)
    return process, identity


# -- status ------------------------------------------------------------------------------


def test_status_lists_processes_and_queues(redis_url, r, worker):
    """``kiq status`` prints each process with its busy count and each queue with its
    size and latency, and exits 0."""
    _, identity = worker
    old_job(r, "waiting", 42)

    result = kiq(redis_url, "status")

    assert result.returncode == 0, result.stderr
    assert "Processes: 1 (0 of 10 busy)" in result.stdout
    assert identity in result.stdout
    assert "waiting" in result.stdout
    assert "42." in result.stdout  # the latency, in seconds


def test_status_json_has_the_same_facts(redis_url, r, worker):
    """``kiq status --json`` is machine-readable: processes, queues, set sizes, totals."""
    _, identity = worker
    old_job(r, "waiting", 5)

    data = json.loads(kiq(redis_url, "status", "--json").stdout)

    assert [p["identity"] for p in data["processes"]] == [identity]
    assert data["processes"][0]["concurrency"] == 10
    (queue,) = [q for q in data["queues"] if q["name"] == "waiting"]
    assert queue["size"] == 1
    assert queue["latency"] == pytest.approx(5, abs=3)
    assert {"scheduled", "retry", "dead", "processed", "failed"} <= set(data)


def test_status_exits_1_when_a_queue_is_over_its_latency_limit(redis_url, r, worker):
    """``--max-latency QUEUE=SECONDS`` makes the exit code a monitoring check: 1 and a
    line on stderr naming the queue when its oldest job waited longer, 0 otherwise."""
    old_job(r, "waiting", 60)

    over = kiq(redis_url, "status", "--max-latency", "waiting=30", "--max-latency", "default=30")
    under = kiq(redis_url, "status", "--max-latency", "waiting=600")

    assert over.returncode == 1
    assert "queue waiting: latency 60" in over.stderr
    assert "is over 30s" in over.stderr
    assert "default" not in over.stderr
    assert under.returncode == 0


def test_status_with_a_bad_limit_says_the_format(redis_url):
    """A malformed --max-latency is refused with exit 2 and the expected format."""
    result = kiq(redis_url, "status", "--max-latency", "default")

    assert result.returncode == 2
    assert "use QUEUE=SECONDS" in result.stderr


def test_status_exits_2_when_redis_is_unreachable():
    """No answer from Redis is an error (2), with the URL in the message."""
    url = f"redis://127.0.0.1:{free_port()}/0"

    result = kiq(url, "status")

    assert result.returncode == 2
    assert f"cannot reach Redis at {url}" in result.stderr


# -- ping --------------------------------------------------------------------------------


def test_ping_exits_0_when_redis_answers(redis_url):
    """Without a process named, ping checks Redis only."""
    result = kiq(redis_url, "ping")

    assert result.returncode == 0
    assert "ok" in result.stdout


def test_ping_exits_1_when_redis_does_not_answer():
    """An unreachable Redis is a failed probe: exit 1 (not 2), with the reason."""
    result = kiq(f"redis://127.0.0.1:{free_port()}/0", "ping")

    assert result.returncode == 1
    assert "not ok: cannot reach Redis" in result.stdout


def test_ping_a_process_by_identity_local_host_or_pidfile(redis_url, r, start_worker, tmp_path):
    """ping --identity, --local (this host) and --pidfile (written by kiq worker
    --pidfile) all exit 0 while the named worker beats."""
    pidfile = tmp_path / "kiq.pid"
    process = start_worker("--pidfile", str(pidfile))
    identity = wait_until(lambda: identity_of(r, process.pid), timeout=20)

    assert kiq(redis_url, "ping", "--identity", identity).returncode == 0
    assert kiq(redis_url, "ping", "--local").returncode == 0
    assert pidfile.read_text().strip() == str(process.pid)
    assert kiq(redis_url, "ping", "--pidfile", str(pidfile)).returncode == 0

    assert process.stop() == 0
    assert not pidfile.exists()  # removed at a clean exit


def test_ping_exits_1_when_the_heartbeat_is_stale(redis_url, r, worker):
    """A SIGKILLed worker's hash outlives it for a while; ping --max-age sees that its
    last beat is too old and exits 1."""
    process, identity = worker
    process.kill()

    result = wait_until(
        lambda: (
            (res := kiq(redis_url, "ping", "--identity", identity, "--max-age", "1")).returncode
            and res
        ),
        timeout=20,
    )

    assert result.returncode == 1
    assert "has beaten in the last 1s" in result.stdout


def test_ping_exits_1_for_an_unknown_process(redis_url):
    """Naming a process that is not registered fails the probe."""
    result = kiq(redis_url, "ping", "--identity", "nohost:1:abc")

    assert result.returncode == 1
    assert "nohost:1:abc" in result.stdout


# -- quiet / stop ------------------------------------------------------------------------


def test_quiet_a_process_and_wait_until_it_is_quiet(redis_url, r, worker):
    """``kiq quiet IDENTITY --wait`` signals through the signals list and returns 0 once
    the process reports quiet at its next heartbeat; the process keeps running."""
    process, identity = worker

    result = kiq(redis_url, "quiet", identity, "--wait", "20")

    assert result.returncode == 0, result.stderr
    assert r.hget(identity, "quiet") == "true"
    assert process.proc.poll() is None


def test_stop_all_stops_every_process(redis_url, r, start_worker):
    """``kiq stop --all --wait`` shuts every worker down cleanly (exit 0 each)."""
    workers = [start_worker(), start_worker()]
    for process in workers:
        wait_until(lambda p=process: identity_of(r, p.pid), timeout=20)

    result = kiq(redis_url, "stop", "--all", "--wait", "30")

    assert result.returncode == 0, result.stderr
    assert [p.proc.wait(30) for p in workers] == [0, 0]
    assert r.scard("processes") == 0


def test_quiet_an_unknown_identity_exits_1(redis_url, worker):
    """An identity that is not live is reported and the exit code is 1."""
    result = kiq(redis_url, "quiet", "nohost:1:abc")

    assert result.returncode == 1
    assert "no live process nohost:1:abc" in result.stderr


def test_quiet_without_a_target_is_refused(redis_url):
    """Neither identities nor --all/--local: exit 2 with what to give."""
    result = kiq(redis_url, "quiet")

    assert result.returncode == 2
    assert "--all or --local" in result.stderr


# -- mark, log level ---------------------------------------------------------------------


def test_mark_writes_a_deploy_mark(redis_url, r):
    """``kiq mark LABEL`` writes Sidekiq's deploy mark; the same label again within the
    minute is not marked twice."""
    first = kiq(redis_url, "mark", "v1.2")
    second = kiq(redis_url, "mark", "v1.2")

    assert (first.returncode, second.returncode) == (0, 0)
    assert "marked 'v1.2'" in first.stdout
    assert "already marked" in second.stdout
    (key,) = r.keys("*-marks")
    assert list(r.hgetall(key).values()) == ["v1.2"]


def test_worker_log_level_hides_info_lines(r, start_worker):
    """``kiq worker --log-level warning`` logs no INFO lines (no start/done per job)."""
    process = start_worker("--log-level", "warning")
    wait_until(lambda: identity_of(r, process.pid), timeout=20)
    r.lpush("queue:default", wire.dumps({"class": "Record", "args": [1], "jid": "j1"}))
    r.sadd("queues", "default")
    wait_until(lambda: r.llen("test:done") == 1, timeout=20)

    assert process.stop() == 0
    assert " INFO: " not in process.output()


def test_status_functions_print_to_the_stdout_of_the_call_not_of_the_import(config, capsys):
    """``kiq.status`` resolves its default streams when called (they were bound when the
    module was imported, so pytest's capsys and a redirected sys.stdout missed them)."""
    from kiq import status

    assert status.ping(config) == 0
    assert status.status(config, {}) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ok: Redis {config.store.safe_url} answers\n")
    assert "\nProcesses: 0 (0 of 0 busy)\n" in out
