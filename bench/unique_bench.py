"""What a unique push costs next to a plain one (issue 16: benchmark, not a timed test).

Pushes N jobs one call at a time, in this process, on a private redis-server:

  plain     ``Record.perform_async(i)``: SADD + LPUSH, one packed write
  unique    ``UniqueJob.perform_async(i)`` (``unique_for=600``, every lock free): one
            EVALSHA of unique_push.lua (SET NX PX + SADD + LPUSH)
  refused   the same push again with its lock held: the script answers 0, nothing written

and prints µs per push, Redis round trips per push, and the server's own µs per
command (INFO commandstats: EVALSHA vs LPUSH + SADD). Round trips are counted as the
socket writes the process makes (``socket.send``/``sendall`` wrapped while counting):
every round trip is one write of the packed request, and nothing else in the loop
writes. The timed loops run with the counter off, so it costs them nothing.

Usage::

    PYTHONPATH=src python bench/unique_bench.py [N]       # default 20,000
"""

from __future__ import annotations

import json
import socket
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from common import RedisServer

import kiq
from kiq.config import Config

ROUNDS = 5


class Plain(kiq.Job, name="bench.Plain"):
    def perform(self, i: int) -> None: ...


class UniqueJob(kiq.Job, name="bench.UniqueJob", unique_for=600):
    def perform(self, i: int) -> None: ...


def count_writes(push: Callable[[int], Any], args: range) -> int:
    """Socket writes made by ``push(i)`` for every ``i`` in ``args``."""
    writes = 0
    originals = socket.socket.send, socket.socket.sendall

    def send(sock: socket.socket, data: Any, *rest: Any) -> Any:
        nonlocal writes
        writes += 1
        return originals[0](sock, data, *rest)

    def sendall(sock: socket.socket, data: Any, *rest: Any) -> Any:
        nonlocal writes
        writes += 1
        return originals[1](sock, data, *rest)

    socket.socket.send, socket.socket.sendall = send, sendall  # type: ignore[method-assign]
    try:
        for i in args:
            push(i)
    finally:
        socket.socket.send, socket.socket.sendall = originals  # type: ignore[method-assign]
    return writes


def measure(push: Callable[[int], Any], n: int, first: int) -> dict[str, float]:
    """Time ``n`` pushes of ``first..first+n``, then count the writes of 1,000 more."""
    for i in range(500):  # warm: scripts loaded, lane connected, caches hot
        push(first - 1 - i)
    started = time.perf_counter()
    for i in range(first, first + n):
        push(i)
    elapsed = time.perf_counter() - started
    sample = range(first + n, first + n + 1000)
    return {
        "us_per_push": round(elapsed / n * 1e6, 2),
        "round_trips_per_push": round(count_writes(push, sample) / len(sample), 3),
    }


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    with RedisServer.private(port=6397) as server:
        config = Config(redis_url=server.url)
        kiq.config._default = config  # perform_async pushes through the default Config
        config.store.flushdb()
        # Rounds alternate so that a noisy machine (other processes, CPU frequency)
        # weighs on every kind alike; the median round of each kind is reported.
        rounds: dict[str, list[dict[str, float]]] = {"plain": [], "unique": [], "refused": []}
        size = max(1, n // ROUNDS)
        for index in range(ROUNDS):
            first = index * (size + 2000)  # fresh arguments: every unique lock free
            rounds["plain"].append(measure(Plain.perform_async, size, first))
            rounds["unique"].append(measure(UniqueJob.perform_async, size, first))
            rounds["refused"].append(measure(UniqueJob.perform_async, size, first))
        results: dict[str, Any] = {"n": size * ROUNDS, "rounds": ROUNDS}
        for kind, taken in rounds.items():
            results[kind] = {
                "us_per_push": statistics.median(t["us_per_push"] for t in taken),
                "round_trips_per_push": statistics.median(t["round_trips_per_push"] for t in taken),
            }
        # Redis's own time per command (INFO commandstats): what the server spends on
        # a unique push's script next to a plain push's SADD + LPUSH, whatever the
        # client machine's load.
        stats = server.client().info("commandstats")
        per_call = {
            name: stats.get(f"cmdstat_{name}", {}).get("usec_per_call")
            for name in ("evalsha", "lpush", "sadd")
        }
        results["redis_usec_per_call"] = per_call
        config.close()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
