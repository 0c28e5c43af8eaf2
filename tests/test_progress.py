"""Job progress: stored in Redis with a TTL, rate-limited, readable by jid."""

from __future__ import annotations

import redis

import kiq
from kiq.config import Config
from kiq.job import PROGRESS_TTL, read_progress


class Export(kiq.Job, name="ProgressExport"):
    def perform(self, rows: int) -> None:
        for done in range(rows + 1):
            self.progress(100 * done / rows, f"exported {done} of {rows}")


def hset_calls(r: redis.Redis) -> int:
    stats = r.info("commandstats")
    return int(stats.get("cmdstat_hset", {}).get("calls", 0))


def run(jid: str, rows: int) -> None:
    job = Export()
    job.jid = jid
    job.perform(rows)


def test_last_progress_is_readable_by_jid(config: Config) -> None:
    """After the loop the stored progress is the final 100 % and its message."""
    run("a" * 24, 50)
    progress = read_progress(config, "a" * 24)
    assert progress is not None
    assert progress["percent"] == 100.0
    assert progress["message"] == "exported 50 of 50"
    assert progress["class"] == "ProgressExport"


def test_a_tight_loop_is_rate_limited(config: Config, r: redis.Redis) -> None:
    """10,000 calls in a fast loop write only a handful of times (0 %, 100 %, every 0.5 s)."""
    before = hset_calls(r)
    run("b" * 24, 10_000)
    writes = hset_calls(r) - before
    assert 2 <= writes <= 10


def test_progress_expires(config: Config, r: redis.Redis) -> None:
    """The progress hash carries a TTL so finished jobs' progress does not pile up."""
    run("c" * 24, 1)
    ttl = r.ttl("kiq|progress|" + "c" * 24)
    assert 0 < ttl <= PROGRESS_TTL


def test_unknown_jid_has_no_progress(config: Config) -> None:
    """A job that never reported progress reads as None."""
    assert read_progress(config, "d" * 24) is None


def test_percent_is_clamped(config: Config) -> None:
    """Values outside 0..100 are clamped, not stored as given."""
    job = Export()
    job.jid = "e" * 24
    job.progress(250, "over")
    assert read_progress(config, "e" * 24)["percent"] == 100.0  # type: ignore[index]
