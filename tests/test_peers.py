"""The timestamp format is chosen from the live processes' versions (issue 15 point 3).

Real Redis; the Sidekiq processes are heartbeat hashes written exactly as each
version's launcher writes them (tests/support/sidekiq_versions.py). What must hold:
integer ms only when every live Sidekiq reads them and one is Sidekiq 8; float seconds
whenever a 6.4/7.x process is live; the choice is logged once per change with its
reason; an explicit format wins with a warning; a worker re-reads at every beat, a
client-only process at its first push and then in the background.
"""

from __future__ import annotations

import logging
import time

import orjson
import pytest

from kiq import peers
from kiq.client import Client
from kiq.config import Config
from kiq.launcher import Launcher
from tests.support import jobs
from tests.support.sidekiq_versions import sidekiq_beat
from tests.support.wait import wait_until


@pytest.fixture
def launcher(config):
    """A Launcher that only beats (never started); what its constructor made is released."""
    launcher = Launcher(config)
    yield launcher
    launcher.manager.executor.reaper.stop()


def pushed_created_at(r) -> object:
    jobs.Record.perform_async("x")
    raw = r.lpop("queue:default")
    payload = orjson.loads(raw)
    assert type(payload["created_at"]) is type(payload["enqueued_at"])
    return payload["created_at"]


@pytest.mark.parametrize(
    "versions",
    [["8.0.0"], ["8.0.0", "8.1.7"], ["8.0.9", "8.1.1", "8.1.7"]],
    ids=["8.0", "8.0+8.1.7", "three-8.x"],
)
def test_only_sidekiq_8_processes_get_integer_milliseconds(config, r, versions):
    for i, version in enumerate(versions):
        sidekiq_beat(r, version, pid=100 + i)

    assert isinstance(pushed_created_at(r), int)


@pytest.mark.parametrize("old", ["6.4.1", "7.0.0", "7.3.9"])
def test_one_older_sidekiq_keeps_float_seconds_and_is_named(config, r, old, caplog):
    sidekiq_beat(r, "8.1.7", host="new", pid=1)
    sidekiq_beat(r, old, host="old-host", pid=64)

    with caplog.at_level(logging.INFO, logger="kiq"):
        created_at = pushed_created_at(r)

    assert isinstance(created_at, float)
    (line,) = [rec.getMessage() for rec in caplog.records if "timestamps" in rec.getMessage()]
    assert line.startswith("writing float-second timestamps: Sidekiq ")
    assert "at old-host:64 reads only seconds" in line
    if old != "6.4.1" and old != "7.0.0":
        assert f"Sidekiq {old} at old-host:64" in line


def test_no_sidekiq_or_only_kiq_processes_write_float_seconds(config, r, launcher):
    assert isinstance(pushed_created_at(r), float)  # nobody there at all
    launcher.beat()  # a kiq worker's own heartbeat ("version": "kiq X")

    assert peers.read_peers(config.store)[0].kind == "kiq"
    assert peers.refresh(config).ms is False
    assert "no live Sidekiq 8 process" in peers.refresh(config).reason


def test_an_expired_process_hash_does_not_count(config, r):
    sidekiq_beat(r, "8.1.7")
    stale = sidekiq_beat(r, "6.4.1", host="gone")
    r.delete(stale)  # expired; still a member of `processes` until someone prunes it

    assert peers.refresh(config).ms is True


def test_an_unreadable_info_counts_as_a_seconds_reader(config, r):
    sidekiq_beat(r, "8.1.7")
    r.sadd("processes", "odd:1:abc")
    r.hset("odd:1:abc", mapping={"info": "not json", "beat": "1"})

    formats = peers.refresh(config)

    assert formats.ms is False
    assert "unreadable heartbeat" in formats.reason


def test_the_choice_is_logged_once_and_again_when_it_changes(config, r, caplog):
    sidekiq_beat(r, "8.0.0", pid=1)
    sidekiq_beat(r, "8.1.7", pid=2)
    sidekiq_beat(r, "8.1.2", pid=3)
    with caplog.at_level(logging.INFO, logger="kiq"):
        for _ in range(3):
            peers.refresh(config)
        sidekiq_beat(r, "6.4.1", host="legacy", pid=9)
        peers.refresh(config)
        peers.refresh(config)

    lines = [rec.getMessage() for rec in caplog.records if "timestamps" in rec.getMessage()]
    assert lines == [
        "writing Sidekiq 8 millisecond timestamps: all 3 live Sidekiq processes are Sidekiq >= 8.0",
        "writing float-second timestamps: Sidekiq 6.4-7.0 (no version in its heartbeat) "
        "at legacy:9 reads only seconds",
    ]


def test_explicit_ms_wins_with_a_warning_naming_the_reader(config, r, caplog):
    config.timestamp_format = "ms"
    sidekiq_beat(r, "7.3.9", host="rails", pid=7)

    with caplog.at_level(logging.INFO, logger="kiq"):
        created_at = pushed_created_at(r)

    assert isinstance(created_at, int)
    warnings = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    assert warnings == [
        "timestamp_format: ms is set, but Sidekiq 7.3.9 at rails:7 reads only seconds and "
        "will misread created_at/enqueued_at/failed_at; use timestamp_format: auto"
    ]


def test_explicit_float_wins_over_an_all_sidekiq_8_redis(config, r):
    config.timestamp_format = "float"
    sidekiq_beat(r, "8.1.7")

    assert isinstance(pushed_created_at(r), float)


def test_a_worker_rereads_the_versions_at_every_beat(config, r, launcher):
    sidekiq_beat(r, "8.1.7")
    launcher.beat()
    assert isinstance(pushed_created_at(r), int)

    sidekiq_beat(r, "7.3.9", host="late")  # a 7.3 process starts
    launcher.beat()

    assert isinstance(pushed_created_at(r), float)


def test_a_client_only_process_reads_at_first_push_then_in_the_background(config, r, monkeypatch):
    sidekiq_beat(r, "8.1.7")
    assert isinstance(pushed_created_at(r), int)  # the first push read the processes
    sidekiq_beat(r, "6.4.1", host="late")

    assert isinstance(pushed_created_at(r), int)  # fresh choice: no read on the push path
    monkeypatch.setattr(peers, "REFRESH_AFTER", 0.0)
    peers._state(config.store).stale_after = 0.0  # as if REFRESH_AFTER had passed

    pushed_created_at(r)  # still the cached choice, and starts the background read
    wait_until(lambda: peers.formats(config).ms is False)
    assert isinstance(pushed_created_at(r), float)


def test_a_redis_error_at_the_first_read_writes_seconds(redis_url):
    config = Config(redis_url="redis://127.0.0.1:1/0")  # nothing listens on port 1

    assert peers.formats(config).ms is False
    assert peers.formats(config) is peers.SECONDS  # cached: the push reports the outage
    config.close()


def test_parse_peer_reads_every_versions_info():
    assert peers.parse_peer("h:1:n", b'{"hostname":"h","pid":1}').version is None
    assert peers.parse_peer("h:1:n", b'{"version":"7.3.9"}').version == (7, 3, 9)
    assert peers.parse_peer("h:1:n", b'{"version":"8.0.0.beta1"}').reads_ms is True
    assert peers.parse_peer("h:1:n", b'{"version":"kiq 1.0"}').kind == "kiq"
    assert peers.parse_peer("h:1:n", None) is None
    assert peers.parse_peer("h:1:n", b"[]").kind == "unknown"


def test_one_payload_never_mixes_milliseconds_and_seconds(config, r):
    """enqueued_at follows the payload's created_at even when the choice is another one
    by the time the job is written (a background refresh between the two stamps: the
    CI saw a created_at in ms beside an enqueued_at in seconds)."""
    config.timestamp_format = "float"
    jid = Client(config).push({"class": "Mixed", "args": [], "created_at": 1796419011775})

    (raw,) = r.lrange("queue:default", 0, -1)
    payload = orjson.loads(raw)
    assert payload["jid"] == jid
    assert type(payload["enqueued_at"]) is int
    assert abs(payload["enqueued_at"] / 1000 - time.time()) < 60
