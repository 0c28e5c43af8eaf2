"""Unique jobs at full size (issue 16's proof; tests/test_unique.py runs 8 x 500 in CI).

8 OS processes (tests/support/unique_pusher.py) push the same unique job 1,250 times
each, all at once: 10,000 concurrent pushes against one lock.

  phase 1  unique_for=600: exactly one push accepted and one job in the queue.
  phase 2  unique_for=WINDOW (0.2 s), no worker: the lock ends only by its TTL, so the
           accepted pushes must be at least one window apart (minus the clock jitter
           between the pushing processes, TOLERANCE) and at most one per window elapsed.

Usage::

    PYTHONPATH=src python bench/unique_stress.py
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import orjson
from common import RedisServer

PROCESSES = 8
PUSHES = 1250  # per process: 10,000 in all
WINDOW = 0.2  # seconds, phase 2's unique_for
TOLERANCE = 0.02  # seconds: time.time() is read after the push returns, in 8 processes
PUSHER = Path(__file__).resolve().parents[1] / "tests" / "support" / "unique_pusher.py"


def run(server: RedisServer, unique_for: float) -> list[tuple[str, float]]:
    r = server.client()
    r.delete("test:accepted", "test:finished", "test:go")
    procs = [
        subprocess.Popen([sys.executable, str(PUSHER), server.url, str(PUSHES), str(unique_for)])
        for _ in range(PROCESSES)
    ]
    r.rpush("test:go", *["go"] * PROCESSES)
    for proc in procs:
        if proc.wait(600) != 0:
            raise SystemExit(f"a pusher failed with exit code {proc.returncode}")
    accepted = [tuple(json.loads(item)) for item in r.lrange("test:accepted", 0, -1)]
    return sorted(accepted, key=lambda pair: pair[1])  # type: ignore[arg-type, return-value]


def main() -> None:
    with RedisServer.private(port=6396) as server:
        r = server.client()
        r.flushdb()
        accepted = run(server, 600)
        queued = [orjson.loads(raw)["jid"] for raw in r.lrange("queue:default", 0, -1)]
        phase1 = {
            "pushes": PROCESSES * PUSHES,
            "accepted": len(accepted),
            "queued": len(queued),
            "ok": len(accepted) == 1 and queued == [accepted[0][0]],
        }

        r.flushdb()
        accepted = run(server, WINDOW)
        times = [at for _, at in accepted]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        elapsed = times[-1] - times[0] if times else 0.0
        phase2 = {
            "pushes": PROCESSES * PUSHES,
            "window_s": WINDOW,
            "elapsed_s": round(elapsed, 3),
            "accepted": len(accepted),
            "windows_elapsed": int(elapsed / WINDOW) + 1,
            "smallest_gap_s": round(min(gaps), 4) if gaps else None,
            "queued": r.llen("queue:default"),
        }
        phase2["ok"] = (
            phase2["queued"] == len(accepted)
            and len(accepted) <= phase2["windows_elapsed"]
            and all(gap >= WINDOW - TOLERANCE for gap in gaps)
        )
    print(json.dumps({"one_window": phase1, "ttl_windows": phase2}))
    if not (phase1["ok"] and phase2["ok"]):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
