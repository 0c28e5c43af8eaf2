"""Client side of every peer app: the same three commands, timed the same way.

Runs inside the peer's own virtualenv (no kiq, no bench imports). An app module
defines ``prepare()`` (connect before the clock starts), ``enqueue_one(i)`` (one call
of its own client per job), ``send_latency(sent, key)``, and optionally ``fill(n)``
(a faster untimed push for drains) and ``enqueue_loop(n)`` (for async clients).

    python <app>.py enqueue N            -> {"seconds": ..., "jobs": N, "extra": 1}
    python <app>.py fill N               -> {"jobs": N}
    python <app>.py latency COUNT INTERVAL KEY
"""

from __future__ import annotations

import json
import sys
import time
from types import ModuleType


def enqueue(app: ModuleType, n: int) -> dict[str, object]:
    app.prepare()
    app.enqueue_one(-1)  # warm the code path, as the Ruby and kiq drivers do
    if hasattr(app, "enqueue_loop"):
        seconds = app.enqueue_loop(n)
    else:
        started = time.perf_counter()
        for i in range(n):
            app.enqueue_one(i)
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "jobs": n, "extra": 1}


def fill(app: ModuleType, n: int) -> dict[str, object]:
    app.prepare()
    if hasattr(app, "fill"):
        app.fill(n)
    elif hasattr(app, "enqueue_loop"):
        app.enqueue_loop(n)
    else:
        for i in range(n):
            app.enqueue_one(i)
    return {"jobs": n}


def latency(app: ModuleType, count: int, interval: float, key: str) -> dict[str, object]:
    """Send on an absolute grid so the sender's own time does not stretch the interval."""
    app.prepare()
    started = time.monotonic()
    for i in range(count):
        delay = started + i * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        app.send_latency(time.time(), key)
    return {"sent": count}


def main(app: ModuleType, argv: list[str]) -> int:
    command, *rest = argv
    if command == "enqueue":
        out = enqueue(app, int(rest[0]))
    elif command == "fill":
        out = fill(app, int(rest[0]))
    elif command == "latency":
        out = latency(app, int(rest[0]), float(rest[1]), rest[2])
    else:
        raise SystemExit(f"unknown command {command!r}")
    print(json.dumps(out))
    return 0


def run_as_script(name: str) -> None:
    """Import the app under its module name, so job functions are importable by workers."""
    import importlib

    sys.exit(main(importlib.import_module(name), sys.argv[1:]))
