"""A real Sidekiq 6.4 process beside a Sidekiq 8 heartbeat: kiq writes float seconds.

Debian packages Sidekiq 6.4 only, so the 7.x/8.x processes are hashes written as
their launchers write them (tests/support/sidekiq_versions.py); this file checks that
builder against a real 6.4 heartbeat and that kiq's choice (kiq.peers) sees the real
process (issue 15).
"""

from __future__ import annotations

import json
import socket

import orjson
import pytest

from kiq import peers
from tests.support import jobs
from tests.support.sidekiq_versions import info_for, sidekiq_beat

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]


def test_a_live_sidekiq_6_4_keeps_kiq_on_float_seconds(config, r, start_sidekiq, caplog):
    sidekiq_beat(r, "8.1.7", host="new-box")
    sidekiq = start_sidekiq("ruby")

    with caplog.at_level("INFO", logger="kiq"):
        formats = peers.refresh(config)
    jobs.Record.perform_async("x")

    assert formats.ms is False
    assert f"at {socket.gethostname()}:{sidekiq.pid} reads only seconds" in formats.reason
    assert formats.reason in caplog.text
    assert isinstance(orjson.loads(r.lpop("queue:default"))["created_at"], float)


def test_the_6_4_heartbeat_builder_matches_a_real_6_4_process(config, r, start_sidekiq):
    sidekiq = start_sidekiq("ruby")
    real = r.hgetall(sidekiq.identity)
    built_identity = sidekiq_beat(r, "6.4.1")
    built = r.hgetall(built_identity)

    assert set(built) == set(real)
    real_info, built_info = json.loads(real["info"]), json.loads(built["info"])
    assert set(built_info) == set(real_info)
    assert {k: type(v) for k, v in built_info.items()} == {k: type(v) for k, v in real_info.items()}
    assert set(info_for("6.4.1", "h", 1, "h:1:x")) == set(real_info)
