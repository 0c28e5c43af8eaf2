"""Sidekiq 8's metric keys: kiq writes them when a Sidekiq 8 shares the Redis (issue 15).

The expected Redis state is built from Sidekiq 8's own format (metrics/tracking.rb and
metrics/shared.rb, in tests/support/sidekiq_versions.py), and compared with what one
kiq flush leaves: the same keys, fields, histogram counters and TTLs. Sidekiq 7's
layout is written while a 7.x process is live, both when 7 and 8 share the Redis, and
kiq.api.Metrics reads either (or both, without counting a run twice).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from kiq import peers
from kiq.api import Metrics as MetricsQuery
from kiq.keys import BUCKETS, METRICS_MID_TTL, METRICS_TTL
from kiq.metrics import Metrics
from tests.support.sidekiq_versions import expected_metrics8, sidekiq_beat

AT = datetime(2025, 2, 14, 8, 3, 30, tzinfo=UTC)  # minute 3: Sidekiq 8 pads it ("8:03")
RUNS: dict[str, list[float | None]] = {
    "HardJob": [12.0, 250.0, 250.4, None, 400_000.0],
    "Mailer": [None, None],
}


def flush(config: Any) -> None:
    metrics = Metrics()
    for klass, times in RUNS.items():
        for ms in times:
            metrics.record(klass, ms)
    metrics.flush(config, now=AT)


def metric_state(r: Any) -> dict[str, tuple[str, Any]]:
    """Every metrics key in Redis: hashes by content, histograms by their 26 counters."""
    state: dict[str, tuple[str, Any]] = {}
    for key in r.scan_iter("*"):
        if key.startswith("j|"):
            state[key] = ("hash", r.hgetall(key))
        elif key.startswith("h|") or "-14-08:" in key:
            gets: list[Any] = []
            for i in range(len(BUCKETS) + 1):
                gets += ["GET", "u16", f"#{i}"]
            state[key] = ("bitfield", r.execute_command("BITFIELD_RO", key, *gets))
    return state


def test_with_sidekiq_8_a_flush_leaves_what_sidekiq_8_writes(config, r):
    sidekiq_beat(r, "8.1.7")
    peers.refresh(config)

    flush(config)

    assert metric_state(r) == expected_metrics8(AT, RUNS)
    assert 0 < r.ttl("j|250214|8:03") <= METRICS_TTL
    assert METRICS_TTL < r.ttl("j|250214|8:0") <= METRICS_MID_TTL
    assert 0 < r.ttl("h|HardJob-14-8:3") <= METRICS_TTL


def test_with_sidekiq_7_only_its_keys_are_written(config, r):
    sidekiq_beat(r, "7.3.9")
    peers.refresh(config)

    flush(config)

    keys = set(metric_state(r))
    assert keys == {"j|20250214|8:3", "HardJob-14-08:3"}


def test_with_7_and_8_sharing_both_layouts_are_written_and_read_once(config, r):
    sidekiq_beat(r, "7.3.9", pid=7)
    sidekiq_beat(r, "8.1.7", pid=8)
    peers.refresh(config)

    flush(config)

    keys = set(metric_state(r))
    assert set(expected_metrics8(AT, RUNS)) <= keys
    assert {"j|20250214|8:3", "HardJob-14-08:3"} <= keys
    (hard, mailer) = sorted(MetricsQuery(config, now=AT).top_jobs(60).jobs, key=lambda j: j.klass)
    assert (hard.processed, hard.failed, hard.total_ms) == (5, 1, 12 + 250 + 250 + 400_000)
    assert (mailer.processed, mailer.failed) == (2, 2)
    histogram = MetricsQuery(config, now=AT).for_job("HardJob", 60)
    assert sum(histogram.counts) == 4


def test_kiq_reads_what_sidekiq_8_wrote(config, r):
    """No kiq flush at all: the keys as Sidekiq 8 writes them, read by kiq.api.Metrics."""
    for key, (kind, value) in expected_metrics8(AT, RUNS).items():
        if kind == "hash":
            r.hset(key, mapping=value)
        else:
            args: list[Any] = ["OVERFLOW", "SAT"]
            for i, n in enumerate(value):
                args += ["INCRBY", "u16", f"#{i}", n] if n else []
            r.execute_command("BITFIELD", key, *args)

    query = MetricsQuery(config, now=AT)
    jobs = {job.klass: job for job in query.top_jobs(60).jobs}
    histogram = query.for_job("HardJob", 60)

    assert (jobs["HardJob"].processed, jobs["HardJob"].failed) == (5, 1)
    assert jobs["HardJob"].total_ms == 12 + 250 + 250 + 400_000
    assert histogram.counts == expected_metrics8(AT, RUNS)["h|HardJob-14-8:3"][1]


@pytest.mark.parametrize(
    ("at", "minute", "mid", "gram"),
    [
        (datetime(2025, 2, 14, 8, 43, tzinfo=UTC), "j|250214|8:43", "j|250214|8:4", "h|J-14-8:43"),
        (datetime(2025, 2, 4, 0, 0, tzinfo=UTC), "j|250204|0:00", "j|250204|0:0", "h|J-4-0:0"),
        (
            datetime(2030, 12, 31, 23, 59, tzinfo=UTC),
            "j|301231|23:59",
            "j|301231|23:5",
            "h|J-31-23:59",
        ),
    ],
)
def test_sidekiq_8_key_names(config, at, minute, mid, gram):
    """strftime("%y%m%d|%-H:%M"), the same less its last character, and "%-d-%-H:%-M"."""
    keys = config.keys
    assert (keys.metric_bucket8(at), keys.metric_bucket8_mid(at)) == (minute, mid)
    assert keys.histogram8("J", at) == gram
