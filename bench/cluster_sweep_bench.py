"""The cluster batch outbox sweep's cost (kiq.store.cluster_batches.batch_sweep).

On a local 3+3 cluster, per sweep call (one poller tick): an idle tick (nothing
indexed), a tick over N families whose pushes were delivered by their writers (the
common case: each is sealed and unindexed once), and ticks over N families whose
writers died after step 1 (delivered, then sealed). Figures: the call's wall time
and the Redis CPU it cost (INFO commandstats usec, summed over the primaries), per
tick and per family; and a one-job ``jobs()`` block's wall time (open, push, close).

    python bench/cluster_sweep_bench.py [--families 1000] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

import kiq  # noqa: E402
from kiq import payload as wire  # noqa: E402
from kiq.config import Config  # noqa: E402
from tests.support.cluster import LocalCluster  # noqa: E402

QUEUES = ["q1", "q2", "q3"]


def redis_usec(cluster: LocalCluster) -> float:
    total = 0.0
    for server in cluster.primaries():
        stats = server.client().info("commandstats")
        total += sum(float(v["usec"]) for v in stats.values())
    return total


def reset(cluster: LocalCluster) -> None:
    for server in cluster.primaries():
        server.client().config_resetstat()


def measure(cluster: LocalCluster, fn: Any) -> tuple[float, float]:
    """(wall µs, Redis CPU µs) of fn(), less the measurement's own (INFO, RESETSTAT)."""
    reset(cluster)
    start = time.perf_counter()
    fn()
    wall = (time.perf_counter() - start) * 1e6
    return wall, redis_usec(cluster) - BASE[0]


BASE = [0.0]


def stranded(config: Config, bid: str, jobs: int) -> None:
    """A batch opened and pushed to by a writer that died after step 1."""
    store, k = config.store, config.keys
    store.batch_open(bid, "t", 600, wire.now(), "", {"description": "bench"})
    args: list[Any] = ["push", 600, "0", repr(store._stamp(bid)), 0]
    for i in range(jobs):
        jid = f"{bid}{i:08x}"[-24:]
        raw = wire.dumps({"class": "X", "queue": QUEUES[i % 3], "jid": jid, "bid": bid})
        args += (jid, QUEUES[i % 3], "", raw)
    keys = [k.batch(bid), k.batch(bid, "jids"), k.batch_outbox(bid), k.batch_outbox_seal(bid)]
    store._run_batch_script("cluster_batch_add", keys, args)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--families", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    opts = parser.parse_args()
    n = opts.families
    rows: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as folder, LocalCluster(Path(folder)) as cluster:
        config = Config(redis_url=cluster.url)
        kiq.config._default = config
        store = config.store
        BASE[0] = statistics.median(measure(cluster, lambda: None)[1] for _ in range(50))
        for run in range(opts.runs):
            for server in cluster.primaries():
                server.client().flushall()
            store._stamps.clear()
            idle = [
                measure(cluster, lambda: store.batch_sweep(wire.now(), 30.0)) for _ in range(200)
            ]
            rows.setdefault("idle tick", []).append(
                (statistics.median(w for w, _ in idle), statistics.median(c for _, c in idle))
            )
            blocks = []
            for _ in range(200):
                batch = kiq.Batch(description="b", config=config)

                def block(batch: kiq.Batch = batch) -> None:
                    with batch.jobs():
                        kiq.client.Client(config).push({"class": "X", "queue": "q1", "args": []})

                blocks.append(measure(cluster, block))
            rows.setdefault("jobs() block, 1 job", []).append(
                (statistics.median(w for w, _ in blocks), statistics.median(c for _, c in blocks))
            )
            for server in cluster.primaries():
                server.client().flushall()
            for i in range(n):  # delivered by their writers: only their stamps are left
                store.batch_open(f"ok{run}x{i:06d}", "t", 600, wire.now(), "", {"d": "x"})
            later = wire.now() + 60
            rows.setdefault(f"{n} families, outboxes empty (seal+unindex)", []).append(
                measure(cluster, lambda later=later: store.batch_sweep(later, 30.0))
            )
            for i in range(n):
                stranded(config, f"dead{run}x{i:06d}", 3)
            later = wire.now() + 60
            rows.setdefault(f"{n} families, 3 stranded jobs each (deliver)", []).append(
                measure(cluster, lambda later=later: store.batch_sweep(later, 30.0))
            )
            rows.setdefault(f"{n} families, delivered: the next tick (seal+unindex)", []).append(
                measure(cluster, lambda later=later: store.batch_sweep(later, 30.0))
            )
        config.close()
    print(f"{'case':58} {'wall µs':>10} {'Redis µs':>10}  (median of {opts.runs} runs)")
    for name, values in rows.items():
        wall = statistics.median(w for w, _ in values)
        cpu = statistics.median(c for _, c in values)
        print(f"{name:58} {wall:10.0f} {cpu:10.0f}")


if __name__ == "__main__":
    main()
