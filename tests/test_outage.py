"""Redis outages (issue 4 §3): a worker outlives a Redis restart and a READONLY failover
window, logs each outage once, idles cheaply, loses no job; a client fails fast with a
clear error instead of hanging.

Each test runs its own redis-server (tests/support/servers.py): stopping the shared one
would break everyone else's tests.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import kiq
from kiq.config import Config
from tests.support.servers import RedisServer, Worker, free_port
from tests.support.wait import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

PASSWORD = "hunter2-outage"
OUTAGE = 8.0  # seconds Redis is away: long enough for every loop to notice and back off
CPU_SHARE = 0.10  # of one core, at most, while the worker waits for Redis
CLIENT_DEADLINE = 11.0  # seconds: connect timeout 5 s + command timeout 5 s, plus slack


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server with a password and an AOF, so a restart keeps the queues."""
    with RedisServer(
        tmp_path, ["appendonly yes", f"requirepass {PASSWORD}"], admin={"password": PASSWORD}
    ) as srv:
        yield srv


@pytest.fixture
def worker(tmp_path: Path, server: RedisServer) -> Iterator[Worker]:
    url = server.url(password=PASSWORD)
    proc = Worker(tmp_path, url, "-c", "5")
    client = server.client()
    wait_until(lambda: client.scard("processes") == 1, timeout=15)
    yield proc
    proc.kill()


def push(server: RedisServer, job: str, *args: object) -> str:
    config = Config(redis_url=server.url(password=PASSWORD))
    try:
        jid = kiq.Client(config).push({"class": job, "args": list(args)})
    finally:
        config.close()
    assert jid is not None
    return jid


def jids(server: RedisServer, key: str) -> list[str]:
    return [json.loads(item)["jid"] for item in server.client().lrange(key, 0, -1)]


def outage_lines(worker: Worker) -> tuple[list[str], list[float]]:
    """The "unreachable" lines and the downtimes of the "back" lines in the worker's log."""
    log = worker.output()
    down = [line for line in log.splitlines() if "Redis is unreachable" in line]
    back = [float(m) for m in re.findall(r"Redis is back at \S+ after ([\d.]+) s downtime", log)]
    return down, back


def settled(server: RedisServer) -> bool:
    """Nothing queued, in progress, scheduled or retried: every job was acknowledged."""
    client = server.client()
    keys: list[bytes] = client.keys("*")  # type: ignore[assignment]  # bytes client
    pending = [k for k in keys if k.startswith((b"queue:", b"kiq|inprogress|"))]
    return not pending and client.zcard("retry") == 0


def run_through_outage(
    server: RedisServer,
    worker: Worker,
    go_away: Callable[[], object],
    come_back: Callable[[], object],
) -> float:
    """Jobs before, one running across the outage, jobs after; return the CPU share used."""
    before = push(server, "Record", "before")
    wait_until(lambda: before in jids(server, "test:done"), timeout=10)
    across = push(server, "Slow", OUTAGE + 3, "across")
    wait_until(lambda: across in jids(server, "test:started"), timeout=10)

    cpu, started = worker.cpu_seconds(), time.monotonic()
    go_away()
    wait_until(lambda: outage_lines(worker)[0], timeout=10)
    time.sleep(max(0.0, OUTAGE - (time.monotonic() - started)))  # the outage itself
    share = (worker.cpu_seconds() - cpu) / (time.monotonic() - started)
    come_back()

    after = push(server, "Record", "after")
    wait_until(lambda: {before, across, after} <= set(jids(server, "test:done")), timeout=20)
    wait_until(lambda: settled(server), timeout=10)
    assert sorted(jids(server, "test:done")) == sorted([before, across, after])  # once each
    assert jids(server, "test:started") == [across]
    return share


def test_worker_survives_a_redis_restart(server, worker):
    """Redis stopped for ~8 s and started again on the same port: the worker logs one
    "unreachable" and one "back after N s downtime" line, idles at a small fraction of a
    core, and runs every job exactly once, the one running across the outage included."""
    share = run_through_outage(server, worker, server.stop, server.start)

    down, back = outage_lines(worker)
    assert len(down) == 1, worker.output()
    assert len(back) == 1, worker.output()
    assert back[0] >= OUTAGE - 1
    assert share < CPU_SHARE
    assert worker.proc.poll() is None


def test_worker_survives_a_readonly_failover_window(server, worker):
    """The server made a replica of a primary that does not exist (every write answers
    READONLY, blocked BLMOVEs are ended with UNBLOCKED), then promoted back: one outage
    logged, no spinning, no job lost or run twice."""
    client = server.client()
    share = run_through_outage(
        server,
        worker,
        lambda: client.replicaof("127.0.0.1", free_port()),
        lambda: client.replicaof("NO", "ONE"),
    )

    down, back = outage_lines(worker)
    assert len(down) == 1, worker.output()
    assert len(back) == 1, worker.output()
    assert share < CPU_SHARE
    assert worker.proc.poll() is None


def test_worker_log_never_shows_the_password(server, worker):
    """The worker names its Redis URL at start and in outage lines, always redacted."""
    server.stop()
    wait_until(lambda: outage_lines(worker)[0], timeout=10)
    server.start()
    wait_until(lambda: outage_lines(worker)[1], timeout=15)

    log = worker.output()
    assert f"redis://:***@127.0.0.1:{server.port}/0" in log
    assert PASSWORD not in log


@pytest.mark.parametrize("how", ["stopped", "frozen"])
def test_client_push_fails_fast_with_the_redacted_url(server, how):
    """With Redis stopped (connection refused) or frozen (SIGSTOP: connects, never
    answers), a push raises RedisUnavailable naming the URL without its password and
    the timeouts, within connect + command timeout instead of hanging."""
    if how == "stopped":
        server.stop()
    else:
        server.proc.send_signal(signal.SIGSTOP)
    config = Config(redis_url=server.url(password=PASSWORD))
    started = time.monotonic()
    try:
        with pytest.raises(kiq.RedisUnavailable) as raised:
            kiq.Client(config).push({"class": "Record", "args": []})
    finally:
        elapsed = time.monotonic() - started
        config.close()
        if how == "frozen":
            server.proc.send_signal(signal.SIGCONT)

    message = str(raised.value)
    assert elapsed < CLIENT_DEADLINE
    assert f"redis://:***@127.0.0.1:{server.port}/0" in message
    assert "connect timeout 5s, command timeout 5s" in message
    assert PASSWORD not in message
    assert PASSWORD not in repr(raised.value.__cause__)


def test_client_push_to_a_readonly_replica_says_so(server):
    """A push answered READONLY (a demoted primary) raises RedisUnavailable that names
    the URL and says what READONLY means, not a bare redis-py ResponseError."""
    server.client().replicaof("127.0.0.1", free_port())
    config = Config(redis_url=server.url(password=PASSWORD))
    try:
        with pytest.raises(kiq.RedisUnavailable, match="read-only replica") as raised:
            kiq.Client(config).push({"class": "Record", "args": []})
    finally:
        config.close()

    assert f"redis://:***@127.0.0.1:{server.port}/0" in str(raised.value)


def test_back_line_reports_the_real_downtime(tmp_path, server):
    """Redis away for ~6 s: the "back" line says about 6 s, not the time until a loop
    happened to notice (a waiter blocks 2 s, a beat waits its interval: 10 s was
    logged for a 6 s outage, issue 12)."""
    worker = Worker(tmp_path, server.url(password=PASSWORD), config_text=":heartbeat_interval: 5\n")
    try:
        wait_until(lambda: server.client().scard("processes") == 1, timeout=15)
        started = time.monotonic()
        server.stop()
        wait_until(lambda: outage_lines(worker)[0], timeout=10)
        wait_until(lambda: time.monotonic() - started > 6, timeout=10, interval=0.1)
        server.start()
        downtime = time.monotonic() - started

        (back,) = wait_until(lambda: outage_lines(worker)[1], timeout=20)
        # The loops retry every second: the first command that succeeds is sent within
        # 1 s of the restart.
        assert downtime - 1.5 <= back <= downtime + 1.2, (back, downtime)
    finally:
        worker.kill()
