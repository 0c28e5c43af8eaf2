"""Processes and busy jobs shared by kiq and Sidekiq 6.4 (issue 3, point 4).

Ruby's ``Sidekiq::ProcessSet`` / ``Sidekiq::Workers`` (through api.rb) see a kiq worker
and what it runs, and their ``quiet!`` / ``stop!`` reach it through
``<identity>-signals``; ``kiq.api.ProcessSet`` / ``WorkSet`` see a Sidekiq process.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest

from tests.interop.conftest import Ruby, kiq_identity, wait_for
from tests.support.jobs import Slow
from tests.support.wait import wait_until

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]


def ruby_process(ruby: Ruby, identity: str) -> dict[str, Any] | None:
    return next((p for p in ruby.api()["processes"] if p["identity"] == identity), None)


def test_ruby_process_set_lists_kiq_process(config, r, ruby, start_worker):
    """Sidekiq::ProcessSet shows a kiq worker's hostname, pid, concurrency, queues, busy, beat."""
    worker = start_worker("-q", "critical,2", "-q", "default", "-c", "3")
    identity = kiq_identity(r, worker.pid)

    process = ruby_process(ruby, identity)

    assert process is not None
    assert process["hostname"] == socket.gethostname()
    assert process["pid"] == worker.pid
    assert process["concurrency"] == 3
    assert process["queues"] == ["critical", "default"]
    assert process["busy"] == 0
    assert process["quiet"] == "false"
    assert process["stopping"] is False
    assert time.time() - 10 < process["beat"] <= time.time()
    assert process["started_at"] is not None
    assert process["rss"] > 0


def test_ruby_workers_show_kiq_busy_job(config, r, ruby, start_worker):
    """Sidekiq::Workers lists the job a kiq worker is running, with its queue and payload."""
    worker = start_worker("-q", "default", "-c", "2")
    identity = kiq_identity(r, worker.pid)
    jid = Slow.perform_async(30, "busy")
    wait_until(lambda: r.llen("test:started") == 1, timeout=20.0)

    def busy_in_ruby() -> dict[str, Any] | None:
        snapshot = ruby.api()
        return snapshot if snapshot["workers"] else None

    snapshot = wait_for(busy_in_ruby, timeout=20.0, interval=0.2)

    (work,) = snapshot["workers"]
    assert work["process_id"] == identity
    assert work["queue"] == "default"
    assert work["class"] == "Slow"
    assert work["jid"] == jid
    assert work["args"] == [30, "busy"]
    assert time.time() - 30 < work["run_at"] <= time.time()
    (process,) = snapshot["processes"]
    assert process["busy"] == 1
    assert snapshot["stats"]["workers_size"] == 1


def test_ruby_quiet_quiets_kiq_process(config, r, ruby, start_worker):
    """Process#quiet! makes a kiq worker stop taking jobs and report quiet, but stay alive."""
    worker = start_worker("-q", "default", "-c", "2")
    identity = kiq_identity(r, worker.pid)

    ruby.api("quiet", identity)

    wait_until(
        lambda: (ruby_process(ruby, identity) or {}).get("quiet") == "true",
        timeout=20.0,
        interval=0.2,
    )
    Slow.perform_async(0, "after quiet")
    pushed = time.time()

    # A quiet process fetches nothing: the job is still queued a second (five beats) later.
    wait_until(lambda: float(r.hget(identity, "beat") or 0) > pushed + 1.0, timeout=20.0)
    assert r.llen("queue:default") == 1
    assert r.llen("test:started") == 0
    assert worker.proc.poll() is None


def test_ruby_stop_stops_kiq_process(config, r, ruby, start_worker):
    """Process#stop! makes a kiq worker shut down cleanly and leave the process set."""
    worker = start_worker("-q", "default", "-c", "2")
    identity = kiq_identity(r, worker.pid)

    ruby.api("stop", identity)

    assert worker.proc.wait(15) == 0
    assert identity not in r.smembers("processes")
    assert ruby_process(ruby, identity) is None


def test_kiq_process_set_lists_sidekiq_process(config, r, start_sidekiq):
    """kiq.api.ProcessSet shows a Sidekiq 6.4 process: host, pid, concurrency, queues, quiet."""
    from kiq.api import ProcessSet

    sidekiq = start_sidekiq("ruby", "default", concurrency=4)

    (process,) = [p for p in ProcessSet(config) if p.identity == sidekiq.identity]

    assert process.hostname == socket.gethostname()
    assert process.pid == sidekiq.pid
    assert process.concurrency == 4
    assert process.queues == ["ruby", "default"]
    assert process.busy == 0
    assert process.stopping is False
    assert process.beat is not None


def test_kiq_work_set_shows_sidekiq_busy_job(config, r, ruby, start_sidekiq):
    """kiq.api.WorkSet shows the job a Sidekiq 6.4 process runs (its ``:workers`` hash)."""
    from kiq.api import WorkSet

    sidekiq = start_sidekiq("ruby")
    (jid,) = ruby.push({"op": "push", "class": "RubySlow", "queue": "ruby", "args": [30]})

    def busy() -> list[tuple[str, str, Any]]:
        return list(WorkSet(config))

    ((identity, _tid, work),) = wait_until(busy, timeout=20.0, interval=0.1)

    assert identity == sidekiq.identity
    assert work.queue == "ruby"
    assert work.job.klass == "RubySlow"
    assert work.job.jid == jid
    assert work.job.args == [30]
    assert json.loads(r.hget(identity, "busy")) == 1


def test_kiq_quiet_and_stop_reach_sidekiq_process(config, r, start_sidekiq):
    """kiq.api Process.quiet() quiets a Sidekiq process (one beat later); stop() stops it."""
    from kiq.api import ProcessSet

    sidekiq = start_sidekiq("ruby")
    (process,) = [p for p in ProcessSet(config) if p.identity == sidekiq.identity]

    process.quiet()
    wait_until(lambda: r.hget(sidekiq.identity, "quiet") == "true", timeout=20.0)
    process.stop()

    assert sidekiq.proc.wait(15) == 0
    assert sidekiq.identity not in r.smembers("processes")
