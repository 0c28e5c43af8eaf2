"""Redis Cluster bench (issue 19): one Redis versus a local 3+3 cluster, and failover.

At the issue's sizes: 20,000 jobs over 8 queues plus one 8-partition queue, 4 worker
processes (concurrency 10 each), on loopback, all on this machine. Each job is
``Tally`` (tests/support/jobs.py): one SADD of its index into a separate record Redis,
so the measured Redis serves only kiq and a lost job is an index missing from the set.

Measured, per run:
  * jobs/s of the drain (first job done to last), one Redis versus the cluster;
  * Redis CPU (used_cpu_sys + used_cpu_user) per job, per primary (and in total);
  * the cost of ``wait_replicas: 1``: single-push latency (µs) and the drain's jobs/s;
  * failover: SIGKILL the primary of ``queue:{q0}`` at ~30% of the drain while a pusher
    adds jobs, with and without ``wait_replicas``; jobs pushed (the push returned) but
    never run are counted as lost.

    python bench/cluster_bench.py [--jobs 20000] [--out bench/results/cluster.json]

Bounded: every wait has a deadline (the whole run takes ~3-5 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

import redis  # noqa: E402

import kiq  # noqa: E402
from kiq.config import Config  # noqa: E402
from kiq.keys import ClusterKeys  # noqa: E402
from tests.support.cluster import LocalCluster  # noqa: E402
from tests.support.servers import RedisServer, Worker  # noqa: E402

QUEUES = [f"q{i}" for i in range(8)] + ["hot"]
PARTITIONS = {"hot": 8}
WORKERS = 4
CONCURRENCY = 10
DRAIN_TIMEOUT = 180.0


def cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def settings(wait: int, cluster: bool) -> str:
    text = f":concurrency: {CONCURRENCY}\n"
    if cluster:
        text += ":partitions:\n  hot: 8\n"
    if wait:
        text += f":wait_replicas: {wait}\n"
    return text


class Run:
    """One drain: push ``n`` Tally jobs, start the workers, time the drain."""

    def __init__(self, folder: Path, url: str, record: RedisServer, primaries: list[Any]) -> None:
        self.folder = folder
        self.url = url
        self.record = record.client()
        self.primaries = primaries  # admin clients of each primary (for INFO cpu)

    def config(self, wait: int) -> Config:
        cluster = self.url.startswith("redis+cluster")
        return Config(
            redis_url=self.url,
            partitions=PARTITIONS if cluster else {},
            wait_replicas=wait,
        )

    def fill(self, config: Config, n: int, offset: int = 0) -> None:
        client = kiq.Client(config)
        per = {q: [] for q in QUEUES}  # type: dict[str, list[list[int]]]
        for i in range(n):
            per[QUEUES[i % len(QUEUES)]].append([offset + i])
        for queue, args in per.items():
            client.push_bulk({"class": "Tally", "queue": queue, "args": args})

    def push_latency(self, config: Config, n: int = 2000) -> float:
        """Median µs of one perform_async-style push, one at a time."""
        client = kiq.Client(config)
        times = []
        for i in range(n):
            started = time.perf_counter()
            client.push({"class": "Tally", "queue": QUEUES[i % len(QUEUES)], "args": [-1 - i]})
            times.append(time.perf_counter() - started)
        times.sort()
        return times[len(times) // 2] * 1e6

    def workers(self, wait: int, name: str) -> list[Worker]:
        args = [a for q in QUEUES for a in ("-q", q)]
        cluster = self.url.startswith("redis+cluster")
        return [
            Worker(
                self.folder,
                self.url,
                *args,
                record_url=f"redis://127.0.0.1:{self.record.connection_pool.connection_kwargs['port']}/0",
                config_text=settings(wait, cluster),
                name=f"{name}-w{i}",
            )
            for i in range(WORKERS)
        ]

    def done(self) -> int:
        return int(self.record.scard("test:tally"))

    def drain(self, n: int, wait: int, name: str, kill: Any = None) -> dict[str, Any]:
        config = self.config(wait)
        config.store.flushdb()
        self.record.flushall()
        result: dict[str, Any] = {"run": name, "jobs": n, "wait_replicas": wait}
        result["push_p50_us"] = round(self.push_latency(config), 1)
        config.store.flushdb()
        self.fill(config, n)
        before = [cpu(p) for p in self.primaries]
        workers = self.workers(wait, name)
        pusher: Pusher | None = None
        try:
            deadline = time.monotonic() + DRAIN_TIMEOUT
            while self.done() == 0 and time.monotonic() < deadline:
                time.sleep(0.005)
            started = time.monotonic()
            if kill is not None:
                while self.done() < n * 0.3 and time.monotonic() < deadline:
                    time.sleep(0.005)
                pusher = Pusher(config, offset=n)
                pusher.thread.start()
                time.sleep(0.3)  # pushes in flight when the primary dies
                result["failover_s"] = kill()
                time.sleep(1.0)
                pusher.stop.set()
                pusher.thread.join(30)
            target = n + (len(pusher.pushed) if pusher else 0)
            while self.done() < target and time.monotonic() < deadline:
                time.sleep(0.005)
            # The last run can only be timed once everything is in: a lost job never is.
            elapsed = time.monotonic() - started
            if pusher is not None:
                settle = time.monotonic() + 10
                while self.done() < target and time.monotonic() < settle:
                    time.sleep(0.05)
                have = {int(x) for x in self.record.smembers("test:tally")}
                wanted = set(range(n)) | set(pusher.pushed)
                lost = sorted(wanted - have)
                result.update(
                    live_pushed=len(pusher.pushed),
                    push_errors=pusher.errors,
                    lost=len(lost),
                    lost_sample=lost[:10],
                )
            after = [cpu(p) for p in self.primaries if _alive(p)]
        finally:
            for worker in workers:
                worker.kill()
            config.close()
        count = self.done()
        result["done"] = count
        result["seconds"] = round(elapsed, 3)
        result["jobs_per_s"] = round(count / elapsed, 1)
        if kill is None:
            deltas = [b - a for a, b in zip(before, after, strict=True)]
            result["redis_cpu_us_per_job_per_primary"] = [round(d / n * 1e6, 2) for d in deltas]
            result["redis_cpu_us_per_job_total"] = round(sum(deltas) / n * 1e6, 2)
        return result


def _alive(client: Any) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


class Pusher:
    def __init__(self, config: Config, offset: int) -> None:
        self.client = kiq.Client(config)
        self.offset = offset
        self.pushed: list[int] = []
        self.errors = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = self.offset
        while not self.stop.is_set():
            try:
                self.client.push({"class": "Tally", "queue": QUEUES[i % len(QUEUES)], "args": [i]})
                self.pushed.append(i)
                i += 1
            except Exception:
                self.errors += 1
                self.stop.wait(0.02)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "cluster.json"))
    parser.add_argument("--skip-failover", action="store_true")
    opts = parser.parse_args()
    n = opts.jobs
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="kiq-cluster-bench-") as tmp:
        folder = Path(tmp)
        with (
            RedisServer(folder, name="record") as record,
            RedisServer(folder, name="single") as single,
        ):
            run = Run(folder, single.url(), record, [single.client()])
            results.append(run.drain(n, 0, "single"))
            print(json.dumps(results[-1]), flush=True)
            with LocalCluster(folder / "cluster") as cluster:
                primaries = [s.client() for s in cluster.primaries()]
                run = Run(folder, cluster.url, record, primaries)
                results.append(run.drain(n, 0, "cluster"))
                print(json.dumps(results[-1]), flush=True)
                results.append(run.drain(n, 1, "cluster-wait1"))
                print(json.dumps(results[-1]), flush=True)
            if not opts.skip_failover:
                for wait in (0, 1):
                    with LocalCluster(folder / f"failover{wait}") as cluster:
                        primaries = [s.client() for s in cluster.primaries()]
                        run = Run(folder, cluster.url, record, primaries)
                        key = ClusterKeys(partitions=(("hot", 8),)).queue("q0")

                        def kill(cluster: LocalCluster = cluster, key: str = key) -> float:
                            victim = cluster.primary_of(key)
                            started = time.monotonic()
                            cluster.kill(victim)
                            cluster.wait_promoted(victim, key)
                            took = time.monotonic() - started
                            victim.start()  # rejoins as a replica
                            return round(took, 2)

                        results.append(run.drain(n, wait, f"failover-wait{wait}", kill=kill))
                        print(json.dumps(results[-1]), flush=True)
    Path(opts.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
