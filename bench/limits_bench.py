"""What a concurrent-limiter acquire/release costs next to a plain push (issue 16:
benchmark, not a timed test).

In this process, on a private redis-server, N calls one at a time:

  plain      ``Plain.perform_async(i)``: SADD + LPUSH, one packed write
  limited    ``with LIMIT.within_limit(): pass`` on a free concurrent limiter of 5:
             one EVALSHA of limit.lua (try) + one of limit_release.lua (release)
  bucket     ``with BUCKET.within_limit(): pass`` on a bucket that never fills: one
             EVALSHA (a rate limiter has nothing to release)

and prints µs per call, Redis round trips per call (socket writes, counted as in
bench/unique_bench.py), and the server's own µs per EVALSHA (INFO commandstats).

Usage::

    PYTHONPATH=src python bench/limits_bench.py [N]       # default 20,000
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from common import RedisServer
from unique_bench import count_writes

import kiq
from kiq.config import Config

ROUNDS = 5


class Plain(kiq.Job, name="bench.Plain"):
    def perform(self, i: int) -> None: ...


def measure(call: Callable[[int], Any], n: int) -> dict[str, float]:
    for i in range(500):  # warm: scripts loaded, lane connected
        call(i)
    started = time.perf_counter()
    for i in range(n):
        call(i)
    elapsed = time.perf_counter() - started
    return {
        "us_per_call": round(elapsed / n * 1e6, 2),
        "round_trips_per_call": round(count_writes(call, range(1000)) / 1000, 3),
    }


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    with RedisServer.private(port=6396) as server:
        config = Config(redis_url=server.url)
        kiq.config._default = config
        config.store.flushdb()
        limiter = kiq.Limiter.concurrent("bench-erp", 5, config=config)
        bucket = kiq.Limiter.bucket("bench-sms", 10**9, "day", config=config)

        def limited(i: int) -> None:
            with limiter.within_limit():
                pass

        def bucketed(i: int) -> None:
            with bucket.within_limit():
                pass

        kinds: dict[str, Callable[[int], Any]] = {
            "plain": Plain.perform_async,
            "limited": limited,
            "bucket": bucketed,
        }
        rounds: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
        size = max(1, n // ROUNDS)
        for _ in range(ROUNDS):  # alternate, so machine noise weighs on each kind alike
            for kind, call in kinds.items():
                rounds[kind].append(measure(call, size))
        results: dict[str, Any] = {"n": size * ROUNDS, "rounds": ROUNDS}
        for kind, taken in rounds.items():
            results[kind] = {
                key: statistics.median(t[key] for t in taken)
                for key in ("us_per_call", "round_trips_per_call")
            }
        stats = server.client().info("commandstats")
        results["redis_usec_per_call"] = {
            name: stats.get(f"cmdstat_{name}", {}).get("usec_per_call")
            for name in ("evalsha", "lpush", "sadd")
        }
        config.close()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
