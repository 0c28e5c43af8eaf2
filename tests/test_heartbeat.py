"""The heartbeat: what a running kiq process writes for Sidekiq's API and Web UI
(shared/sidekiq-wire.md §1.2, §1.3, §7.3), and what it removes when it stops.
"""

from __future__ import annotations

import orjson
import pytest

import kiq
from kiq.launcher import Launcher
from tests.support import jobs
from tests.support.jobs import identity_of
from tests.support.wait import wait_until

INFO_KEYS = {
    "hostname",
    "started_at",
    "pid",
    "tag",
    "concurrency",
    "queues",
    "weights",
    "capsules",
    "labels",
    "identity",
    "version",
    "embedded",
}


@pytest.fixture
def busy_worker(config, r, start_worker):
    """A worker on queues critical (weight 2) and default (weight 1), 3 slots, running
    one Slow job; yields (worker, identity, jid of the Slow job)."""
    jid = jobs.Slow.perform_async(5.0, "busy")
    worker = start_worker("-q", "critical,2", "-q", "default,1", "-c", "3", "-g", "billing")
    identity = wait_until(lambda: identity_of(r, worker.pid))
    wait_until(lambda: r.hget(identity, "busy") == "1")
    yield worker, identity, jid
    worker.kill()


@pytest.mark.slow
def test_process_hash_has_sidekiqs_fields(r, busy_worker):
    """The ``<identity>`` hash has info, concurrency, busy, beat, quiet, rss and rtt_us,
    and expires unless refreshed."""
    _, identity, _ = busy_worker

    fields = r.hgetall(identity)

    assert fields["concurrency"] == "3"
    assert fields["busy"] == "1"
    assert fields["quiet"] == "false"
    assert float(fields["beat"]) == pytest.approx(kiq.payload.now(), abs=5)
    assert "." in fields["beat"]
    assert int(fields["rss"]) > 0
    assert int(fields["rtt_us"]) >= 0
    assert 0 < r.ttl(identity) <= 60


@pytest.mark.slow
def test_process_info_describes_the_process(r, busy_worker):
    """``info`` is JSON with hostname, pid, concurrency, queues, weights, capsules,
    labels, identity, version, ``embedded: false`` and started_at."""
    worker, identity, _ = busy_worker

    info = orjson.loads(r.hget(identity, "info"))

    assert set(info) == INFO_KEYS
    assert info["identity"] == identity
    assert info["hostname"] == identity.rsplit(":", 2)[0]
    assert info["pid"] == worker.pid
    assert info["concurrency"] == 3
    assert info["queues"] == ["critical", "default"]
    assert info["weights"] == [{"critical": 2, "default": 1}]
    assert info["capsules"] == {
        "default": {"concurrency": 3, "mode": "weighted", "weights": {"critical": 2, "default": 1}}
    }
    assert info["tag"] == "billing"
    assert "kiq" in info["labels"]
    assert info["version"] == f"kiq {kiq.__version__}"
    assert info["embedded"] is False
    assert isinstance(info["started_at"], float)
    assert info["started_at"] == pytest.approx(kiq.payload.now(), abs=30)


@pytest.mark.slow
def test_processes_set_has_the_identity(r, busy_worker):
    """The identity is a member of ``processes`` while the process runs."""
    _, identity, _ = busy_worker

    assert identity in r.smembers("processes")


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [":work", ":workers"])
def test_work_hash_shows_the_running_job(r, busy_worker, suffix):
    """``<identity>:work`` (Sidekiq 7/8) and ``:workers`` (6.4) map a thread id to the
    running job: its queue, its payload as a JSON string and run_at in epoch seconds."""
    _, identity, jid = busy_worker

    ((tid, value),) = r.hgetall(identity + suffix).items()

    work = orjson.loads(value)
    assert tid
    assert work["queue"] == "default"
    assert isinstance(work["payload"], str)
    assert orjson.loads(work["payload"])["jid"] == jid
    assert isinstance(work["run_at"], int)
    assert work["run_at"] == pytest.approx(kiq.payload.now(), abs=30)


@pytest.mark.slow
def test_stopping_removes_the_process_and_its_work(r, start_worker):
    """On a clean stop the identity leaves ``processes`` and the work hashes are gone."""
    worker = start_worker()
    identity = wait_until(lambda: identity_of(r, worker.pid))

    assert worker.stop() == 0

    assert identity not in r.smembers("processes")
    assert r.exists(f"{identity}:work", f"{identity}:workers") == 0
    assert r.hget(identity, "quiet") == "true"


def test_a_swept_process_registers_its_queues_again_at_its_next_beat(config, r):
    """If a partition outlasted the heartbeat TTL and another process swept this one
    (dropping its ``kiq|fetchers`` entry), the next beat registers it again, so the
    jobs it fetches afterwards can still be recovered if it dies later."""
    launcher = Launcher(config)
    try:
        launcher.beat()
        r.delete(launcher.identity)
        r.hdel("kiq|fetchers", launcher.identity)

        launcher.beat()

        assert orjson.loads(r.hget("kiq|fetchers", launcher.identity)) == ["default"]
    finally:  # never started: release what the constructor made
        launcher.manager.executor.reaper.stop()
