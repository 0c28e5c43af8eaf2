"""kiq reads the process hashes and iteration state Sidekiq 6.4 to 8.1 write (issue 15).

Real Redis; the hashes are written as each version's launcher writes them
(tests/support/sidekiq_versions.py), the ``it-<jid>`` hash as Sidekiq 7.3+'s
``job/iterable.rb`` flushes it (``ex`` int, ``c`` JSON, ``rt`` float seconds) and
``cancel!`` flags it (HSETNX ``cancelled`` epoch seconds, EXPIRE 30 days NX).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import orjson
import pytest

from kiq.api import ProcessSet, iterations
from kiq.config import Config
from kiq.launcher import Launcher
from tests.support.sidekiq_versions import sidekiq_beat

VERSIONS = ["6.4.1", "7.0.0", "7.3.9", "8.0.0", "8.0.9", "8.1.2", "8.1.7"]


@pytest.mark.parametrize("version", VERSIONS)
def test_process_set_reads_each_versions_heartbeat(config, r, version):
    identity = sidekiq_beat(r, version, host="web-3", pid=77)

    (process,) = ProcessSet(config)

    assert process.identity == identity
    assert (process.hostname, process.pid) == ("web-3", 77)
    assert process.concurrency == 5  # info (<= 8.1.1) or the hash field (8.1.2+)
    assert process.queues == ["default", "low"]
    assert process.version == (None if version in ("6.4.1", "7.0.0") else version)
    assert process.rtt_us == 312
    assert process.stopping is False


@pytest.mark.parametrize(
    ("queues", "mode"),
    [
        ([("a", 0), ("b", 0)], "strict"),
        ([("a", 1), ("b", 1)], "random"),
        ([("a", 3), ("b", 1)], "weighted"),
    ],
)
def test_kiq_names_its_capsule_mode_as_sidekiq_does(redis_url, queues, mode):
    """Capsule#queues=: every weight 0 is strict, every weight 1 random, else weighted."""
    config = Config(redis_url=redis_url, queues=queues)
    launcher = Launcher(config)
    try:
        info = orjson.loads(launcher._info)
    finally:
        launcher.manager.executor.reaper.stop()
        config.close()

    assert info["capsules"]["default"]["mode"] == mode
    assert info["weights"] == [dict(queues)]
    assert info["concurrency"] == config.concurrency  # for readers up to 8.1.1


def test_iteration_state_as_sidekiq_writes_it(config, r):
    jid = "b4a577edbccf1d805744efa9"
    # flush_state: HSET it-<jid> ex, c (dump_json of the cursor), rt; EXPIRE 30 days NX
    r.hset(f"it-{jid}", mapping={"ex": 3, "c": json.dumps([1042, "b"]), "rt": 12.5})
    r.expire(f"it-{jid}", 30 * 86400, nx=True)
    # cancel!: HSETNX cancelled Time.now.to_i
    cancelled = int(time.time())
    r.hsetnx(f"it-{jid}", "cancelled", cancelled)

    found = iterations([jid, "nothere"], config)

    assert list(found) == [jid]
    state = found[jid]
    assert (state.executions, state.cursor, state.runtime) == (3, [1042, "b"], 12.5)
    assert state.cancelled is True
    assert state.cancelled_at == datetime.fromtimestamp(cancelled, UTC)


def test_iteration_state_without_cancel_or_cursor(config, r):
    r.hset("it-j1", mapping={"ex": 1, "c": "null", "rt": 0.25})

    state = iterations(["j1"], config)["j1"]

    assert (state.cursor, state.cancelled, state.cancelled_at) == (None, False, None)
