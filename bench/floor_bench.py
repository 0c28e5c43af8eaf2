"""The machine's floor: a bare redis-py loop, measured like the job systems (issue 5's table).

Not a job system: one process BRPOPs a list, decodes the JSON and calls a function, one
job per round trip; its client LPUSHes one JSON object per call. Issue 5 lists it to show
what one blocking round trip per job plus ordinary Python costs on the machine, so the
bench measures it in the same run as the others: on a noisy 2-core VM its latency p50
is the lowest any system could show that run (its wake-ups are the same as everyone's).

    python bench/floor_bench.py worker redis://127.0.0.1:6390/7
    python bench/floor_bench.py enqueue redis://... 20000
    python bench/floor_bench.py fill redis://... 20000
    python bench/floor_bench.py latency redis://... 200 0.010 bench:latency
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import redis
from common import ListProbe, Metrics, RedisServer, measure_drain, measure_latency, run_json
from common import worker_process as start_process

QUEUE = "floor:queue"


class FloorSystem:
    """The bare loop behind the bench's System protocol (enqueue, drain, latency)."""

    name = "bare-loop"

    def __init__(self, server: RedisServer, *, log_path: Any, drain_timeout: float) -> None:
        self.server = server
        self.redis = server.client()
        self.log_path = log_path
        self.drain_timeout = drain_timeout

    def _run(self, *argv: str) -> dict[str, float | int | str]:
        return run_json(
            [sys.executable, __file__, argv[0], self.server.url, *argv[1:]],
            env={"PATH": "/usr/bin:/bin"},
            cwd=".",
            timeout=300,
            what=f"floor_bench.py {argv[0]}",
        )

    def _worker(self) -> Any:
        return start_process(
            [sys.executable, __file__, "worker", self.server.url],
            env={"PATH": "/usr/bin:/bin"},
            log_path=self.log_path,
        )

    def enqueue(self, n: int) -> Metrics:
        self.redis.flushdb()
        seconds = float(self._run("enqueue", str(n))["seconds"])
        self.redis.flushdb()
        return {"enqueue_s": seconds, "enqueue_per_s": n / seconds}

    def drain(self, n: int) -> Metrics:
        self.redis.flushdb()
        self._run("fill", str(n))
        with self._worker() as worker:
            metrics = measure_drain(
                worker,
                stats_client=self.redis,
                n=n,
                probe=ListProbe(self.redis, QUEUE),
                timeout=self.drain_timeout,
            )
        self.redis.flushdb()
        return metrics

    def latency(self, count: int, interval: float) -> Metrics:
        self.redis.flushdb()
        with self._worker() as worker:
            metrics = measure_latency(
                self.redis,
                worker.pid,
                lambda jobs, every, key: self._run("latency", str(jobs), str(every), key),
                count,
                interval,
            )
        self.redis.flushdb()
        return metrics

    def describe(self) -> dict[str, str]:
        return {"command": f"python bench/floor_bench.py worker (redis-py {redis.__version__})"}


# -- the processes -------------------------------------------------------------------------


def noop(*args: Any) -> None:
    """The job."""


def worker(url: str) -> None:
    client = redis.Redis.from_url(url)
    while True:
        popped = client.brpop([QUEUE], 2)
        if popped is None:
            continue
        job = json.loads(popped[1])
        if "key" in job:  # a latency job: record now - sent, as every system's job does
            client.rpush(job["key"], repr(time.time() - job["sent"]))
        else:
            noop(*job["args"])


def main(argv: list[str]) -> int:
    command, url, *rest = argv
    if command == "worker":
        worker(url)
        return 0
    client = redis.Redis.from_url(url)
    client.ping()
    if command == "enqueue":
        started = time.perf_counter()
        for i in range(int(rest[0])):
            client.lpush(QUEUE, json.dumps({"args": [i]}))
        print(json.dumps({"seconds": time.perf_counter() - started}))
    elif command == "fill":
        pipe = client.pipeline(transaction=False)
        for i in range(int(rest[0])):
            pipe.lpush(QUEUE, json.dumps({"args": [i]}))
        pipe.execute()
        print(json.dumps({"filled": int(rest[0])}))
    elif command == "latency":
        count, interval, key = int(rest[0]), float(rest[1]), rest[2]
        started = time.monotonic()
        for i in range(count):
            delay = started + i * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            client.lpush(QUEUE, json.dumps({"sent": time.time(), "key": key}))
        print(json.dumps({"sent": count}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
