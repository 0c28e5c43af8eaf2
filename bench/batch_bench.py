"""What batch membership costs a job, next to a plain one (issue 17's bench).

On a private redis-server, in this process:

  push        ``Plain.perform_async(i)`` (SADD + LPUSH, one packed write) against the
              same push inside an open ``Batch.jobs()`` block (one EVALSHA of
              batch_push.lua: SADD jids + LPUSH + SADD queues + HINCRBY x2 + EXPIRE x2)
  worker      the two calls the executor adds around a batch job: ``batch.admit``
              (HMGET + SISMEMBER, one pipelined round trip) before perform, and
              ``batch.record`` (one EVALSHA of batch_update.lua) before the ack
  end to end  N plain jobs and N batch jobs through a Launcher (concurrency 10):
              wall time from the first fetch to the last job done, per job

and prints µs and Redis round trips per job for each, as JSON. Round trips are counted
as socket writes (bench/unique_bench.py's ``count_writes``); the server's own µs per
command come from INFO commandstats.

Usage::

    PYTHONPATH=src python bench/batch_bench.py [N]        # default 10,000
"""

from __future__ import annotations

import json
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import RedisServer
from unique_bench import count_writes

import kiq
from kiq import batch as kiq_batch
from kiq.config import Config
from kiq.launcher import Launcher

ROUNDS = 3
done = 0
done_lock = threading.Lock()


class Plain(kiq.Job, name="bench.BatchPlain"):
    def perform(self, i: int) -> None:
        global done
        with done_lock:
            done += 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def timed(call: Callable[[int], Any], n: int, first: int) -> dict[str, float]:
    for i in range(200):
        call(first - 1 - i)
    started = time.perf_counter()
    for i in range(first, first + n):
        call(i)
    elapsed = time.perf_counter() - started
    sample = range(first + n, first + n + 500)
    return {
        "us": round(elapsed / n * 1e6, 2),
        "round_trips": round(count_writes(call, sample) / len(sample), 3),
    }


def median(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


def pushes(config: Config, n: int) -> dict[str, Any]:
    plain, batched = [], []
    for index in range(ROUNDS):
        first = index * (n + 1000)
        plain.append(timed(Plain.perform_async, n, first))
        batch = kiq.Batch(description="bench", config=config)
        with batch.jobs():
            batched.append(timed(Plain.perform_async, n, first))
        config.store.flushdb()
    return {"plain": median(plain), "in_batch": median(batched)}


def worker_calls(config: Config, n: int) -> dict[str, Any]:
    """admit + record for n members of one batch (what the executor adds per job)."""
    batch = kiq.Batch(description="bench", config=config)
    with batch.jobs():
        jids = Plain.perform_bulk([[i] for i in range(n + 1400)])
    payloads = [{"bid": batch.bid, "jid": jid} for jid in jids]

    def admit(i: int) -> None:
        kiq_batch.admit(config, payloads[i])

    def record(i: int) -> None:
        kiq_batch.record(config, payloads[i], "success", "null")

    # admit first over every member (all still pending), then record each once
    result = {"admit": timed(admit, n, 200), "record": timed(record, n, 200)}
    config.store.flushdb()
    return result


def end_to_end(config: Config, server: RedisServer, n: int, in_batch: bool) -> tuple[float, float]:
    """(µs per job from the worker's start to the last job done, Redis commands per job:
    INFO's total_commands_processed over the run, heartbeats included), n jobs queued."""
    global done
    done = 0
    if in_batch:
        batch = kiq.Batch(description="bench", config=config)
        with batch.jobs():
            Plain.perform_bulk([[i] for i in range(n)])
    else:
        Plain.perform_bulk([[i] for i in range(n)])
    admin = server.client()
    before = int(admin.info("stats")["total_commands_processed"])
    launcher = Launcher(config)
    started = time.perf_counter()
    launcher.start()
    while done < n:
        time.sleep(0.005)
    elapsed = time.perf_counter() - started
    commands = int(admin.info("stats")["total_commands_processed"]) - before - 1
    launcher.stop()
    config.store.flushdb()
    return round(elapsed / n * 1e6, 1), round(commands / n, 2)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    with RedisServer.private(port=free_port()) as server:
        config = Config(redis_url=server.url, concurrency=10, heartbeat_interval=1.0)
        kiq.config._default = config
        config.store.flushdb()
        results: dict[str, Any] = {"n": n, "rounds": ROUNDS}
        results["push"] = pushes(config, n)
        results["worker_extra_per_batch_job"] = worker_calls(config, n)
        plain = [end_to_end(config, server, n, False) for _ in range(ROUNDS)]
        batched = [end_to_end(config, server, n, True) for _ in range(ROUNDS)]
        results["end_to_end_us_per_job"] = {
            "plain": statistics.median(us for us, _ in plain),
            "in_batch": statistics.median(us for us, _ in batched),
        }
        results["end_to_end_redis_commands_per_job"] = {
            "plain": statistics.median(c for _, c in plain),
            "in_batch": statistics.median(c for _, c in batched),
        }
        results["load_average"] = Path("/proc/loadavg").read_text().split()[:3]
        stats = server.client().info("commandstats")
        results["redis_usec_per_call"] = {
            name: stats.get(f"cmdstat_{name}", {}).get("usec_per_call")
            for name in ("evalsha", "lpush", "sadd", "hmget", "sismember")
        }
        config.close()
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
