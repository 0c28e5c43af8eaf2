"""Heartbeats and metrics exactly as Sidekiq 6.4, 7.3 and 8.x write them, for tests.

No Ruby 7/8 here (Debian packages 6.4 only): each function writes what that version's
``lib/sidekiq/launcher.rb`` writes (``to_data`` for ``info``, ``heartbeat`` for the
hash; shared/sidekiq-wire.md §1.2), field for field, with the same JSON types:
6.4 and 7.0 write no ``version``; 7.1-8.0.8 write ``version``, ``weights`` and
``embedded``; 8.0.9+ add ``capsules``; 8.1.2+ move ``concurrency`` out of ``info`` into
a hash field. ``expected_metrics8`` builds the Redis state Sidekiq 8's
``metrics/tracking.rb`` + ``metrics/shared.rb`` write for a set of runs.
"""

from __future__ import annotations

import bisect
import json
import os
import time
from datetime import datetime
from typing import Any

from kiq.keys import BUCKETS


def _identity(host: str, pid: int) -> str:
    return f"{host}:{pid}:{os.urandom(6).hex()}"


def info_for(version: str, host: str, pid: int, identity: str) -> dict[str, Any]:
    """``Launcher#to_data`` of Sidekiq ``version`` ("6.4.1", "7.0.0", "7.3.9", "8.0.0",
    "8.0.9", "8.1.7"), for one capsule of 5 threads on ``default`` and ``low``."""
    v = tuple(int(p) for p in version.split(".")[:3])
    info: dict[str, Any] = {
        "hostname": host,
        "started_at": time.time() - 30,
        "pid": pid,
        "tag": "myapp",
        "concurrency": 5,
        "queues": ["default", "low"],
    }
    if v >= (7, 1, 0):
        info["weights"] = [{"default": 0, "low": 0}]
    info["labels"] = []
    info["identity"] = identity
    if v >= (7, 1, 0):
        info["version"] = version
        info["embedded"] = False
    if v >= (8, 0, 9):
        weights = {"default": 0, "low": 0}
        info["capsules"] = {"default": {"concurrency": 5, "mode": "strict", "weights": weights}}
    if v >= (8, 1, 2):
        del info["concurrency"]
    return info


def sidekiq_beat(r: Any, version: str, host: str = "web-1", pid: int = 4321) -> str:
    """One heartbeat of a Sidekiq ``version`` process (SADD processes, HSET, EXPIRE 60);
    returns its identity."""
    identity = _identity(host, pid)
    fields: dict[str, Any] = {
        "info": json.dumps(info_for(version, host, pid, identity), separators=(",", ":")),
        "busy": 0,
        "beat": repr(time.time()),
        "rtt_us": 312,
        "quiet": "false",
        "rss": 81234,
    }
    if tuple(int(p) for p in version.split(".")[:3]) >= (8, 1, 2):
        fields["concurrency"] = 5
    r.sadd("processes", identity)
    r.hset(identity, mapping=fields)
    r.expire(identity, 60)
    return identity


def expected_metrics8(
    at: datetime, runs: dict[str, list[float | None]]
) -> dict[str, tuple[str, Any]]:
    """Key -> (type, value) that Sidekiq 8's ExecutionTracker#flush leaves for ``runs``
    (class -> run times in ms, None for a failure) flushed at ``at`` (UTC).

    tracking.rb: ``nowshort = strftime("%y%m%d|%-H:%M")``, ``nowmid`` = the same minus
    its last character; HINCRBY ``<klass>|ms`` (successes' time), ``|p`` (every run),
    ``|f`` (failures) into ``j|<nowmid>`` (EXPIRE 3 days) and ``j|<nowshort>`` (8 h).
    shared.rb: histogram ``h|<klass>-<%-d-%-H:%-M>``, BITFIELD OVERFLOW SAT INCRBY u16
    #i per bucket (first bound the time is below), EXPIRE 8 h.
    """
    short = f"{at:%y%m%d}|{at.hour}:{at.minute:02d}"
    mid = short[:-1]
    fields: dict[str, int] = {}
    grams: dict[str, list[int]] = {}
    for klass, times in runs.items():
        for ms in times:
            fields[f"{klass}|p"] = fields.get(f"{klass}|p", 0) + 1
            if ms is None:
                fields[f"{klass}|f"] = fields.get(f"{klass}|f", 0) + 1
                continue
            fields[f"{klass}|ms"] = fields.get(f"{klass}|ms", 0) + round(ms)
            gram = grams.setdefault(klass, [0] * (len(BUCKETS) + 1))
            gram[bisect.bisect_right(BUCKETS, ms)] += 1
    state: dict[str, tuple[str, Any]] = {
        f"j|{short}": ("hash", {k: str(v) for k, v in fields.items()}),
        f"j|{mid}": ("hash", {k: str(v) for k, v in fields.items()}),
    }
    for klass, gram in grams.items():
        state[f"h|{klass}-{at.day}-{at.hour}:{at.minute}"] = ("bitfield", gram)
    return state
