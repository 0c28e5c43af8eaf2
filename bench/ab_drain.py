"""Interleaved A/B of two kiq source trees on no-op drains (how engine changes are measured).

    git archive HEAD~1 src | tar -x -C /tmp/kiq-a
    python bench/ab_drain.py /tmp/kiq-a/src src --jobs 20000 --rounds 4
    python bench/ab_drain.py /tmp/kiq-a/src src --log-level error   # per-job lines off

Each round drains --jobs no-op jobs with a fresh `kiq worker -c 10` from each tree, in the
order A B, then B A, and so on, on one private Redis (bench/kiq_bench.py's drain: to the
last ack, worker CPU µs/job from /proc, Redis CPU µs/job from INFO cpu, Redis commands
per job from INFO commandstats); prints every drain and the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from common import BENCH_DIR, RedisServer
from kiq_bench import KiqSystem


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="tree A's src directory (the one with kiq/ in it)")
    parser.add_argument("b", help="tree B's src directory")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--log-level", default=None, help="e.g. error: no per-job lines")
    parser.add_argument("--port", type=int, default=6392)
    args = parser.parse_args(argv)
    trees = {"A": os.path.abspath(args.a), "B": os.path.abspath(args.b)}
    results: dict[str, list[tuple[float, float, float, float]]] = {"A": [], "B": []}
    with RedisServer.private(port=args.port) as server:
        for index in range(args.rounds):
            for tree in ("A", "B") if index % 2 == 0 else ("B", "A"):
                system = KiqSystem(
                    server, log_path=Path(f"/tmp/kiq-bench/ab-{tree}.log"), log_level=args.log_level
                )
                system.env["PYTHONPATH"] = os.pathsep.join((str(BENCH_DIR), trees[tree]))
                metrics = system.drain(args.jobs)
                row = (
                    metrics["drain_acked_per_s"],
                    metrics["cpu_us_per_job"],
                    metrics["redis_cpu_us_per_job"],
                    metrics["redis_cmds_per_job"],
                )
                results[tree].append(row)
                print(f"round {index + 1} {tree}: {row[0]:,.0f} jobs/s, {row[1]:.1f} µs CPU/job, "
                      f"Redis {row[2]:.1f} µs/job, {row[3]:.2f} cmds/job", flush=True)  # fmt: skip
    for tree, rows in results.items():
        rate = statistics.median(r[0] for r in rows)
        cpu = statistics.median(r[1] for r in rows)
        rcpu = statistics.median(r[2] for r in rows)
        cmds = statistics.median(r[3] for r in rows)
        print(f"{tree} ({trees[tree]}): median {rate:,.0f} jobs/s, {cpu:.1f} µs CPU/job, "
              f"Redis {rcpu:.1f} µs/job, {cmds:.2f} cmds/job")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
