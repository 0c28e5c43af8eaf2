"""The mixed-capsules section of bench/run.py (issue 14): no head-of-line blocking.

One ``kiq worker`` with two capsules, Sidekiq 7's model, in two layouts::

    one process:  kiq worker -r bench/kiq_jobs.py -r bench/io_apps/kiq_io.py \\
                      -c 10 -q default -g io:io:1000:async
    own process:  ... -g io:io:1000:async:1   (the async capsule in a process of its own)

the default thread capsule of 10 drains no-op jobs (queue "default") at full speed while
the async capsule of 1,000 runs 50 ms ``asyncio.sleep`` jobs (queue "io"). In one process
both share one GIL; with ``:1`` the supervisor runs each in its own child. Per layout,
three drains, each from a fresh worker of that same command:

  thread solo   n no-op jobs queued, nothing in "io"
  async solo    n 50 ms jobs queued, nothing in "default"
  mixed         both queued at once

A capsule's rate is its jobs done (queued + in progress gone) over the time from its first
job taken to its queue empty; in the mixed drain the window ends when the first of the two
queues empties, so both rates are taken while both capsules are busy. Target: each
capsule's mixed rate within 15% of its solo rate, in the same run.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from common import BENCH_DIR, Metrics, RedisServer, run_json, tree_cpu_seconds, worker_process
from io_bench import APPS, kiq_venv
from kiq_bench import JOBS_FILE, KiqProbe

# The capsule spellings of the capsule work (issue 14 point 1); -g is the CLI's.
LAYOUTS: dict[str, list[str]] = {
    "one process": ["-c", "10", "-q", "default", "-g", "io:io:1000:async"],
    "own process": ["-c", "10", "-q", "default", "-g", "io:io:1000:async:1"],
}
POLL = 0.01


class MixedKiq:
    """kiq with a thread capsule and an async capsule, on one Redis database."""

    name = "kiq capsules"

    def __init__(
        self, server: RedisServer, *, layout: str, log_path: Path, timeout: float = 60.0
    ) -> None:
        self.layout = layout
        self.server = server
        self.redis = server.client()
        self.log_path = log_path
        self.timeout = timeout
        self.venv = kiq_venv()
        self.workdir = Path("/tmp") / "kiq-bench" / "mixed-cwd"
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KIQ_", "REDIS_"))}
        env["KIQ_REDIS_URL"] = env["BENCH_REDIS_URL"] = server.url
        env["BENCH_IO_URL"] = "http://127.0.0.1:1/"  # unused: the io jobs here sleep
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(BENCH_DIR), str(APPS), os.environ.get("PYTHONPATH", "")) if p
        )
        self.env = env

    def argv(self) -> list[str]:
        python = str(self.venv / "bin" / "python")
        apps = ["-r", str(JOBS_FILE), "-r", str(APPS / "kiq_io.py")]
        return [python, "-m", "kiq.cli", "worker", *apps, *LAYOUTS[self.layout]]

    def describe(self) -> dict[str, str]:
        return {"command": " ".join(self.argv())}

    def drain(self, noop: int, io: int) -> Metrics:
        """Queue `noop` no-op and `io` 50 ms jobs, start the worker, time each capsule."""
        self.redis.flushdb()
        if noop:
            self._client([sys.executable, str(JOBS_FILE), "fill", "bench.Noop", str(noop)])
        if io:
            self._client([str(self.venv / "bin" / "python"), str(APPS / "kiq_io.py"),
                          "fill", "sleep", str(io)])  # fmt: skip
        probes = {"thread": (KiqProbe(self.redis, "default"), noop),
                  "async": (KiqProbe(self.redis, "io"), io)}  # fmt: skip
        active = {k: v for k, v in probes.items() if v[1]}
        with worker_process(self.argv(), env=self.env, log_path=self.log_path,
                            cwd=self.workdir) as worker:  # fmt: skip
            metrics = watch(
                active,
                alive=lambda: worker.poll() is None,
                timeout=self.timeout,
                cpu=lambda: tree_cpu_seconds(worker.pid),
            )
        self.redis.flushdb()
        return metrics

    def _client(self, argv: list[str]) -> None:
        run_json(argv, env=self.env, cwd=self.workdir, timeout=300, what=argv[-3])


def watch(
    probes: dict[str, tuple[KiqProbe, int]],
    *,
    alive: Callable[[], bool],
    timeout: float,
    cpu: Callable[[], float],
) -> Metrics:
    """Each capsule's jobs/s from its first take to the first queue of them emptying,
    and the worker's CPU over that window (% of one core: one GIL is the ceiling)."""
    first: dict[str, float] = {}
    cpu_start = 0.0
    began = time.monotonic()
    while True:
        now = time.monotonic()
        state = {name: probe() for name, (probe, _) in probes.items()}
        for name, (queued, _) in state.items():
            if name not in first and queued < probes[name][1]:
                first[name] = now
                if len(first) == 1:
                    cpu_start = cpu()
        if any(queued == 0 for queued, _ in state.values()) and len(first) == len(probes):
            break
        if now - began > timeout:
            raise TimeoutError(f"capsules still busy after {timeout:.0f}s: {state}")
        if not alive():
            raise RuntimeError(f"worker exited with {state}")
        time.sleep(POLL)
    metrics: Metrics = {"cpu_pct": 100 * (cpu() - cpu_start) / (now - min(first.values()))}
    for name, (queued, inflight) in state.items():
        total = probes[name][1]
        done = total - queued - inflight
        seconds = now - first[name]
        metrics[f"{name}_jobs"] = done
        metrics[f"{name}_per_s"] = done / seconds if seconds > 0 else float("nan")
    return metrics


def run_mixed(
    server: RedisServer,
    *,
    noop: int,
    io: int,
    runs: int,
    log_dir: Path,
    phase: Callable[[str, list[str], Callable[[], Metrics]], Metrics],
    errors: list[str],
    layouts: tuple[str, ...] = tuple(LAYOUTS),
) -> dict[str, object]:
    done: dict[str, object] = {}
    for layout in layouts:
        log_path = log_dir / f"kiq-mixed-{layout.replace(' ', '-')}.log"
        kiq = MixedKiq(server, layout=layout, log_path=log_path)
        done[layout] = _run_layout(
            kiq, noop, io, runs, lambda label, step: phase(label, errors, step)
        )
    return {"layouts": done, "noop": noop, "io": io}


def _run_layout(
    kiq: MixedKiq,
    noop: int,
    io: int,
    runs: int,
    phase: Callable[[str, Callable[[], Metrics]], Metrics],
) -> dict[str, object]:
    layout = kiq.layout
    steps: list[tuple[str, Callable[[], Metrics]]] = [
        ("thread solo", lambda: kiq.drain(noop, 0)),
        ("async solo", lambda: kiq.drain(0, io)),
        ("mixed", lambda: kiq.drain(noop, io)),
    ]
    out: list[dict[str, Metrics]] = []
    for index in range(runs):
        print(f"\n== mixed capsules ({layout}), run {index + 1}/{runs}", flush=True)
        k = index % len(steps)
        run = {
            label: phase(f"kiq {layout} {label}", step) for label, step in [*steps[k:], *steps[:k]]
        }
        mixed = run.get("mixed", {})
        for capsule, solo in (("thread", "thread solo"), ("async", "async solo")):
            base = run.get(solo, {}).get(f"{capsule}_per_s")
            if base and mixed.get(f"{capsule}_per_s"):
                mixed[f"{capsule}_of_solo"] = mixed[f"{capsule}_per_s"] / base
        out.append(run)
    return {"runs": out, "command": " ".join(kiq.argv())}


def render(section: dict[str, object]) -> list[str]:
    layouts: dict[str, dict[str, object]] = section["layouts"]  # type: ignore[assignment]
    lines: list[str] = []
    for layout, result in layouts.items():
        lines += _render_layout(layout, result, int(section["noop"]), int(section["io"]))  # type: ignore[call-overload]
    return lines


def _render_layout(layout: str, result: dict[str, object], noop: int, io: int) -> list[str]:
    import statistics

    runs: list[dict[str, Metrics]] = result["runs"]  # type: ignore[assignment]

    def med(label: str, key: str) -> float | None:
        values = [r[label][key] for r in runs if key in r.get(label, {})]
        return statistics.median(values) if values else None

    def fmt(value: float | None, digits: int = 0) -> str:
        return "\N{EN DASH}" if value is None else f"{value:,.{digits}f}"

    lines = [
        f"### Mixed capsules, {layout}: a thread capsule of 10 (no-op jobs) beside an async "
        f"capsule of 1,000 (50 ms sleeps) ({len(runs)} runs, medians)",
        "",
        f"`{result['command']}`; {noop:,} no-op and {io:,} async jobs per drain. Worker CPU "
        f"is the whole process tree's, in % of one core.",
        "",
        "| capsule | solo jobs/s | mixed jobs/s | mixed / solo (same run) | within 15% "
        "| worker CPU % solo | worker CPU % mixed |",
        "|---|---:|---:|---:|:---:|---:|---:|",
    ]
    for capsule, solo in (("thread", "thread solo"), ("async", "async solo")):
        ratio = med("mixed", f"{capsule}_of_solo")
        holds = "\N{EN DASH}" if ratio is None else ("yes" if ratio >= 0.85 else "**no**")
        lines.append(
            f"| {capsule} | {fmt(med(solo, f'{capsule}_per_s'))} | "
            f"{fmt(med('mixed', f'{capsule}_per_s'))} | {fmt(ratio, 2)} | {holds} | "
            f"{fmt(med(solo, 'cpu_pct'))} | {fmt(med('mixed', 'cpu_pct'))} |"
        )
    return [*lines, ""]
