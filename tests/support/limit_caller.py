"""One of several OS processes calling rate limiters at once (tests/test_limits.py,
bench/limits_stress.py).

Usage: ``python limit_caller.py REDIS_URL SECONDS THREADS SPEC...``, each SPEC
``kind:name:limit:interval[:points]``. Waits on a start token (BLPOP ``test:go``), then
runs THREADS threads per SPEC that call ``within_limit`` for SECONDS, and appends the
Redis time at which each call got in (``granted_at``) to ``test:calls:<name>``.
"""

from __future__ import annotations

import sys
import threading
import time

import redis

import kiq
from kiq.config import Config


def main() -> None:
    url, seconds, threads = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    config = Config(redis_url=url)
    r = redis.Redis.from_url(url)
    limiters = []
    for spec in sys.argv[4:]:
        kind, name, limit, interval, *points = spec.split(":")
        make = getattr(kiq.Limiter, kind)
        limiter = make(
            name, int(limit), float(interval), wait_timeout=float(interval), config=config
        )
        limiters.append((limiter, int(points[0]) if points else 1))
    r.rpush("test:ready", "1")
    if r.blpop(["test:go"], timeout=60) is None:
        raise SystemExit("no start token within 60 s")
    deadline = time.monotonic() + seconds
    found: dict[str, list[str]] = {limiter.name: [] for limiter, _ in limiters}
    lock = threading.Lock()

    def call(limiter: kiq.Limiter, points: int) -> None:
        while time.monotonic() < deadline:
            try:
                with limiter.within_limit(points=points) as held:
                    at = held.granted_at  # Redis's clock: the decision's own time
            except kiq.OverLimit:
                continue
            with lock:
                found[limiter.name].append(repr(at))

    workers = [
        threading.Thread(target=call, args=pair) for pair in limiters for _ in range(threads)
    ]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    for name, times in found.items():
        if times:
            r.rpush(f"test:calls:{name}", *times)
    r.rpush("test:finished", "1")


if __name__ == "__main__":
    main()
