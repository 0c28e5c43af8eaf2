"""The idle-RSS section of bench/run.py (issue 14): where a thread-only worker's memory goes.

Two measurements, each in fresh processes:

  layers   RSS of a fresh interpreter after importing, cumulatively, what a thread-only
           `kiq worker` loads: nothing, asyncio (which loads ssl), redis-py with the
           OpenTelemetry SDK kept out, redis-py as installed (it imports the OTel SDK
           when present, and always `redis.asyncio`: redis/__init__.py's first line),
           then kiq, then kiq.cli + kiq.launcher. Each row is the median of 3 processes.
  workers  the idle RSS of a started worker (registered, 2 s idle) of kiq (`-c 10`, no
           capsule), the bare redis-py loop (bench/floor_bench.py) and Sidekiq 6.4 with
           and without YJIT, medians of --runs.

Plus the 12 modules with the most self import time (`python -X importtime`).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from common import BENCH_DIR, Metrics, RedisServer, rss_kb, wait_for
from floor_bench import FloorSystem
from kiq_bench import KiqSystem
from sidekiq_bench import SidekiqSystem

# What each layer imports, cumulatively; "-otel" keeps opentelemetry out (a finder that
# refuses it), to show what redis-py costs without it.
LAYERS: list[tuple[str, str, bool]] = [
    ("interpreter", "", True),
    ("+ asyncio (and ssl)", "asyncio", True),
    ("+ redis-py, OpenTelemetry SDK absent", "asyncio,redis", True),
    ("+ redis-py as installed", "asyncio,redis", False),
    ("+ kiq", "asyncio,redis,kiq", False),
    ("+ kiq.cli, kiq.launcher (a worker's imports)", "asyncio,redis,kiq,kiq.cli,kiq.launcher",
     False),
]  # fmt: skip

PROBE = r"""
import importlib.abc, sys
if sys.argv[2] == "block":
    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "opentelemetry" or name.startswith("opentelemetry."):
                raise ImportError("kept out by the bench")
    sys.meta_path.insert(0, Refuse())
for name in filter(None, sys.argv[1].split(",")):
    __import__(name)
for line in open("/proc/self/status"):
    if line.startswith("VmRSS:"):
        print(line.split()[1], len(sys.modules))
"""


def layer_rss(env: dict[str, str], modules: str, block_otel: bool) -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, modules, "block" if block_otel else "allow"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    kb, count = out.stdout.split()
    return int(kb), int(count)


def layers(env: dict[str, str], samples: int = 3) -> list[dict[str, object]]:
    rows = []
    for label, modules, block in LAYERS:
        taken = [layer_rss(env, modules, block) for _ in range(samples)]
        rows.append(
            {
                "layer": label,
                "rss_kb": statistics.median(kb for kb, _ in taken),
                "modules": taken[0][1],
            }
        )
    return rows


def import_times(env: dict[str, str], top: int = 12) -> list[dict[str, object]]:
    """The modules with the most self time importing a worker's modules (µs)."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import kiq, kiq.cli, kiq.launcher"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    rows = []
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative, name = (part.strip() for part in line[12:].split("|"))
        rows.append({"module": name, "self_us": int(self_us), "cumulative_us": int(cumulative)})
    rows.sort(key=lambda r: -int(r["self_us"]))  # type: ignore[call-overload]
    return rows[:top]


def idle_rss(ready: Callable[[], bool], pid: int) -> int:
    wait_for(ready, timeout=30, what="worker boot")
    time.sleep(2.0)
    return rss_kb(pid)


def run_idle(
    server: RedisServer,
    *,
    runs: int,
    log_dir: Path,
    phase: Callable[[str, list[str], Callable[[], Metrics]], Metrics],
    errors: list[str],
) -> dict[str, object]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(BENCH_DIR), os.environ.get("PYTHONPATH", "")) if p
    )
    print("\n== idle: import layers", flush=True)
    section: dict[str, object] = {"layers": layers(env), "imports": import_times(env)}
    base = server.url.rsplit("/", 1)[0]
    own = RedisServer(f"{base}/0")
    kiq = KiqSystem(own, log_path=log_dir / "kiq-idle.log")
    floor = FloorSystem(own, log_path=log_dir / "floor-idle.log", drain_timeout=30.0)
    sidekiq = SidekiqSystem(own, log_path=log_dir / "sidekiq-idle.log")
    yjit = SidekiqSystem(own, log_path=log_dir / "sidekiq-yjit-idle.log", yjit=True)
    client = own.client()

    def measure(system: object) -> Callable[[], Metrics]:
        def step() -> Metrics:
            client.flushdb()
            if isinstance(system, KiqSystem):
                cm, ready = system.worker(), lambda: client.hlen("kiq|fetchers") > 0
            elif isinstance(system, SidekiqSystem):
                cm, ready = system._sidekiq(), lambda: client.scard("processes") > 0
            else:
                assert isinstance(system, FloorSystem)
                cm, ready = system._worker(), lambda: True
            with cm as worker:
                kb = idle_rss(ready, worker.pid)
            client.flushdb()
            return {"idle_rss_kb": kb}

        return step

    runs_out: list[dict[str, Metrics]] = []
    for index in range(runs):
        print(f"\n== idle, run {index + 1}/{runs}", flush=True)
        runs_out.append(
            {
                s.name: phase(f"{s.name} idle", errors, measure(s))
                for s in (kiq, floor, sidekiq, yjit)
            }
        )
    section["runs"] = runs_out
    return section


def render(section: dict[str, object]) -> list[str]:
    layers_: list[dict[str, object]] = section["layers"]  # type: ignore[assignment]
    runs: list[dict[str, Metrics]] = section.get("runs", [])  # type: ignore[assignment]
    lines = [
        "### Idle RSS: what a thread-only worker loads",
        "",
        "| layer (cumulative imports, fresh interpreter) | RSS MB | + MB | modules |",
        "|---|---:|---:|---:|",
    ]
    previous = None
    for row in layers_:
        mb = float(row["rss_kb"]) / 1024  # type: ignore[arg-type]
        delta = "" if previous is None else f"{mb - previous:+.1f}"
        lines.append(f"| {row['layer']} | {mb:.1f} | {delta} | {row['modules']} |")
        previous = mb
    if runs:
        names = list(runs[0])
        lines += ["", "| worker, started and idle 2 s | idle RSS MB (median) |", "|---|---:|"]
        for name in names:
            values = [r[name]["idle_rss_kb"] for r in runs if "idle_rss_kb" in r.get(name, {})]
            if values:
                lines.append(f"| {name} | {statistics.median(values) / 1024:.1f} |")
    imports: list[dict[str, object]] = section["imports"]  # type: ignore[assignment]
    lines += ["", "Most self import time (`python -X importtime -c 'import kiq, kiq.cli, "
              "kiq.launcher'`, one process, µs): " + ", ".join(
                  f"{r['module']} {r['self_us']:,}" for r in imports) + ".", ""]  # fmt: skip
    return lines
