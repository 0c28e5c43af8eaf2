"""Interleaved A/B of two kiq source trees on io drains (async capsule of 1,000).

    git archive HEAD~1 src | tar -x -C /tmp/kiq-a
    python bench/ab_io.py /tmp/kiq-a/src src --kind sleep --jobs 20000 --rounds 3

Each round drains --jobs 50 ms jobs (bench/io_bench.py's kiq worker and job, `--kind`
sleep or http) with a fresh worker from each tree, in the order A B, then B A, and so
on, on one private Redis; prints every drain (jobs/s, worker and Redis CPU µs/job) and
the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from common import RedisServer
from io_bench import APPS, SPECS, IoSystem, delayed_server


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="tree A's src directory (the one with kiq/ in it)")
    parser.add_argument("b", help="tree B's src directory")
    parser.add_argument("--kind", default="sleep", choices=("sleep", "http"))
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=6393)
    parser.add_argument("--http-port", type=int, default=8093)
    args = parser.parse_args(argv)
    trees = {"A": os.path.abspath(args.a), "B": os.path.abspath(args.b)}
    rows: dict[str, list[tuple[float, float, float]]] = {"A": [], "B": []}
    url = f"http://127.0.0.1:{args.http_port}/"
    with RedisServer.private(port=args.port) as server, delayed_server(args.http_port):
        for index in range(args.rounds):
            for tree in ("A", "B") if index % 2 == 0 else ("B", "A"):
                system = IoSystem(
                    SPECS["kiq"], server, url=url, drain_timeout=120.0,
                    log_path=Path(f"/tmp/kiq-bench/ab-io-{tree}.log"),
                )  # fmt: skip
                system.env["PYTHONPATH"] = os.pathsep.join((str(APPS), trees[tree]))
                m = system.drain(args.kind, args.jobs)
                row = (m["drain_acked_per_s"], m["cpu_us_per_job"], m["redis_cpu_us_per_job"])
                rows[tree].append(row)
                print(f"round {index + 1} {tree}: {row[0]:,.0f} jobs/s, {row[1]:.1f} µs CPU/job, "
                      f"Redis {row[2]:.1f} µs/job", flush=True)  # fmt: skip
    for tree, got in rows.items():
        med = [statistics.median(r[i] for r in got) for i in range(3)]
        print(f"{tree} ({trees[tree]}): median {med[0]:,.0f} jobs/s, {med[1]:.1f} µs CPU/job, "
              f"Redis {med[2]:.1f} µs/job")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
