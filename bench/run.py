"""The benchmark suite of issue 5: kiq against Ruby Sidekiq 6.4 and the Python peers.

    python bench/run.py                                # default: ~12 minutes, see below
    python bench/run.py --systems kiq,sidekiq --runs 1 -n 5000 --sections main
    python bench/run.py --latency-ms 1 --sections link
    python bench/run.py --soak 1000000 --sections soak
    python bench/run.py --sections profile             # py-spy of a kiq drain

Sections (``--sections``, default ``main,link,scale,mix,io,mixed,idle``):
  main     every system in --systems: enqueue (one call per job; perform_bulk; kiq's
           asyncio client), drain of n no-op jobs with 10 slots, idle latency, CPU, RSS,
           Redis commands per job; --runs runs, phase by phase, medians
  link     kiq and Sidekiq with Redis behind a --latency-ms round trip (netem on a
           veth pair into a network namespace, or a calibrated userspace proxy when the
           kernel has no netem; see netdelay.py)
  scale    `kiq worker --processes N` for N in --scale: drain jobs/s, redis-server CPU %
  mix      1 ms I/O-bound jobs: kiq `time.sleep(0.001)` and `await asyncio.sleep(0.001)`
           jobs, Sidekiq `sleep 0.001`; jobs/s with 10 slots and the peak seen running
  soak     --soak N jobs through one kiq worker, its RSS sampled every 2 s (a curve)
  profile  py-spy on a kiq worker draining --profile-n jobs; top self-time functions
  io       issue 14: --jobs (20,000) jobs of 50 ms I/O (loopback HTTP, asyncio.sleep)
           through kiq's async capsule of 1,000, Sidekiq+YJIT -c 50 and the async peers
           (--io-systems: arq, SAQ, taskiq, streaq at 1,000); bench/io_bench.py
  mixed    issue 14: a thread capsule of 10 (no-op) beside an async capsule of 1,000
           (50 ms sleeps), each against its solo rate, in one process and with the
           async capsule in a process of its own (-g io:io:1000:async:1); capsule_bench.py
  idle     issue 14: idle RSS by import layer, and of started kiq / bare-loop / Sidekiq
           workers; idle_bench.py

A section can also be named alone: ``python bench/run.py io`` (``--jobs 2000`` for a
quick look).

Every ratio is against Sidekiq *in the same run* (the machine is shared and noisy);
the table shows the median of the runs and the median of the per-run ratios. Results go
to bench/results/latest.json and the tables to docs/benchmarks.md (between the
``bench:begin`` / ``bench:end`` markers, so the prose around them is kept).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import capsule_bench
import idle_bench
import io_bench
from common import (
    BENCH_DIR,
    REPO_DIR,
    Metrics,
    RedisServer,
    cpu_seconds,
    host_info,
)
from floor_bench import FloorSystem
from kiq_bench import KiqSystem, summarize_profile
from netdelay import Link, delayed_link
from peers import PEERS, PeerSystem
from sidekiq_bench import SidekiqSystem

# sidekiq-yjit(-quiet) and kiq-quiet: issue 14's YJIT rows, logging on and off on both sides
DEFAULT_SYSTEMS = (  # arq: --systems ...,arq
    "kiq,sidekiq,sidekiq-yjit,kiq-quiet,sidekiq-yjit-quiet,dramatiq,celery,rq,huey,floor"
)
DEFAULT_SECTIONS = "main,link,scale,mix,io,mixed,idle"
RESULTS = BENCH_DIR / "results" / "latest.json"
DOC = REPO_DIR / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
X = "\N{MULTIPLICATION SIGN}"  # ratios print as X + "1.62"
NA = "\N{EN DASH}"  # no value

Runs = list[dict[str, Metrics]]  # one dict per run: system name -> metrics


class AttachedServer(RedisServer):
    """A server started elsewhere (the delayed link's) whose pid we know."""

    def __init__(self, url: str, pid: int | None) -> None:
        super().__init__(url)
        self._pid = pid

    @property
    def pid(self) -> int | None:
        return self._pid


# -- running -----------------------------------------------------------------------------------


def phase(label: str, errors: list[str], step: Callable[[], Metrics]) -> Metrics:
    """Run one measurement; a failure is recorded and the suite goes on."""
    started = time.monotonic()
    print(f"  {label} ...", end="", flush=True)
    try:
        metrics = step()
    except Exception as exc:
        errors.append(f"{label}: {type(exc).__name__}: {exc}")
        print(f" FAILED ({exc})", flush=True)
        return {}
    print(f" {time.monotonic() - started:.1f}s", flush=True)
    return metrics


def rotated(items: Sequence[Any], k: int) -> list[Any]:
    k %= max(len(items), 1)
    return [*items[k:], *items[:k]]


def run_main(systems: Sequence[Any], args: argparse.Namespace, errors: list[str]) -> Runs:
    """Phase by phase: every system's enqueue, then every drain, then every latency.

    On a shared machine the load changes from minute to minute, so the measurements that
    are compared (kiq's and Sidekiq's enqueue, say) are taken back to back; each system
    has a Redis database of its own, so what one phase leaves queued (the peers' drains
    take the jobs their enqueue pushed) survives the other systems' phases.
    """
    runs: Runs = []
    sidekiq = [s for s in systems if s.name.startswith("sidekiq")]
    kiq = [s for s in systems if s.name.startswith("kiq")]
    others = [s for s in systems if s not in sidekiq and s not in kiq]
    for index in range(args.runs):
        print(f"\n== main, run {index + 1}/{args.runs}", flush=True)
        # kiq and Sidekiq side by side, which goes first alternating between runs; the
        # peers after them, rotated so that none always follows the same neighbour.
        pair = [*sidekiq, *kiq] if index % 2 == 0 else [*kiq, *sidekiq]
        order = [*pair, *rotated(others, index)]
        run: dict[str, Metrics] = {s.name: {} for s in order}
        for step_index, name in enumerate(("enqueue", "drain", "latency")):
            for system in order:
                step = main_steps(system, args)[step_index][1]
                run[system.name].update(phase(f"{system.name} {name}", errors, step))
        runs.append(run)
    return runs


def run_link(server_port: int, args: argparse.Namespace, errors: list[str]) -> tuple[Runs, Link]:
    runs: Runs = []
    with delayed_link(server_port, args.latency_ms, mode=args.link) as link:
        print(f"\n== link: {link.mode}, {link.note}", flush=True)
        print(f"   measured PING round trip {link.measured_rtt_ms:.3f} ms", flush=True)
        server = AttachedServer(link.server_url, link.server_pid)
        logs = Path(args.log_dir)
        systems: list[SidekiqSystem | KiqSystem] = [
            SidekiqSystem(server, log_path=logs / "sidekiq-link.log", client_url=link.client_url),
            KiqSystem(server, log_path=logs / "kiq-link.log", client_url=link.client_url),
        ]  # one database: each of their phases starts and ends with FLUSHDB
        for index in range(args.runs):
            print(f"\n== link, run {index + 1}/{args.runs}", flush=True)
            pair = systems if index % 2 == 0 else systems[::-1]
            run: dict[str, Metrics] = {s.name: {} for s in pair}
            for step_index, name in enumerate(("enqueue", "drain", "latency")):
                for system in pair:
                    step = link_steps(system, link, args)[step_index][1]
                    run[system.name].update(phase(f"{system.name} {name}", errors, step))
            runs.append(run)
    return runs, link


def link_steps(
    system: SidekiqSystem | KiqSystem, link: Link, args: argparse.Namespace
) -> list[tuple[str, Callable[[], Metrics]]]:
    return [
        ("enqueue", lambda: system.enqueue(args.link_enqueue_n)),
        ("drain", lambda: with_proxy_cpu(link, args.n, lambda: system.drain(args.n))),
        ("latency", lambda: system.latency(args.latency_count, 0.010)),
    ]


def main_steps(system: Any, args: argparse.Namespace) -> list[tuple[str, Callable[[], Metrics]]]:
    return [
        ("enqueue", lambda: system.enqueue(args.n)),
        ("drain", lambda: system.drain(args.n)),
        ("latency", lambda: system.latency(args.latency_count, 0.010)),
    ]


def with_proxy_cpu(link: Link, n: int, step: Callable[[], Metrics]) -> Metrics:
    """The drain's metrics plus the delay proxy's CPU per job (it shares the 2 cores)."""
    if link.proxy_pid is None:
        return step()
    before = cpu_seconds(link.proxy_pid)
    metrics = step()
    metrics["proxy_cpu_us_per_job"] = (cpu_seconds(link.proxy_pid) - before) / n * 1e6
    return metrics


def run_scale(server: RedisServer, args: argparse.Namespace, errors: list[str]) -> Runs:
    runs: Runs = []
    counts = [int(c) for c in args.scale.split(",")]
    systems = [
        KiqSystem(
            server,
            log_path=Path(args.log_dir) / "kiq-scale.log",
            processes=count,
            name=f"kiq x{count}",
        )
        for count in counts
    ]
    for index in range(args.runs):
        print(f"\n== scale, run {index + 1}/{args.runs}", flush=True)
        run: dict[str, Metrics] = {}
        for system in rotated(systems, index):
            metrics = phase(f"{system.name} drain", errors, scale_step(system, args.scale_n))
            if metrics:
                metrics["worker_cpu_pct"] = (
                    metrics["cpu_us_per_job"] * metrics["drain_acked_per_s"] / 1e4
                )
            run[system.name] = metrics
        runs.append(run)
    return runs


def scale_step(system: KiqSystem, n: int) -> Callable[[], Metrics]:
    return lambda: system.drain(n)


def run_mix(
    kiq: KiqSystem | None,
    sidekiq: SidekiqSystem | None,
    args: argparse.Namespace,
    errors: list[str],
) -> Runs:
    steps: list[tuple[str, Callable[[], Metrics]]] = []
    if sidekiq is not None:
        steps.append(
            ("sidekiq sleep 1 ms", lambda: sidekiq.drain_jobs(args.mix_n, "RubySlow", [0.001]))
        )
    if kiq is not None:
        steps.append(
            ("kiq def sleep 1 ms", lambda: kiq.drain_jobs(args.mix_n, "bench.Sleep", [0.001]))
        )
        steps.append(
            (
                "kiq async def sleep 1 ms",
                lambda: kiq.drain_jobs(args.mix_n, "bench.AsyncSleep", [0.001]),
            )
        )
    runs: Runs = []
    for index in range(args.runs):
        print(f"\n== mix, run {index + 1}/{args.runs}", flush=True)
        runs.append({label: phase(label, errors, step) for label, step in steps})
    return runs


# -- aggregating -------------------------------------------------------------------------------


def medians(runs: Runs) -> dict[str, Metrics]:
    """Per system, the median of each metric over the runs that produced it."""
    values: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        for system, metrics in run.items():
            for key, value in metrics.items():
                values.setdefault(system, {}).setdefault(key, []).append(value)
    return {
        system: {
            key: statistics.median(v) for key, v in by_key.items() if not any(map(math.isnan, v))
        }
        for system, by_key in values.items()
    }


def ratios(runs: Runs, reference: str) -> dict[str, Metrics]:
    """Per system, the median over runs of (metric / the reference's metric in that run)."""
    out: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        ref = run.get(reference, {})
        for system, metrics in run.items():
            for key, value in metrics.items():
                base = ref.get(key)
                if base:
                    out.setdefault(system, {}).setdefault(key, []).append(value / base)
    return {s: {k: statistics.median(v) for k, v in m.items()} for s, m in out.items()}


def machine() -> dict[str, Any]:
    info = host_info()
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["ram_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    info["nproc"] = os.cpu_count()
    info["platform"] = platform.platform()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        info["redis_server"] = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    return info


# -- the markdown --------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NA
    return f"{value:,.{digits}f}"


def cell(
    med: Metrics, rat: Metrics, key: str, digits: int = 0, scale: float = 1.0, ratio: bool = True
) -> str:
    value = med.get(key)
    if value is None:
        return NA
    text = fmt(value * scale, digits)
    r = rat.get(key)
    if ratio and r is not None and abs(r - 1) > 1e-9:
        text += f" ({X}{r:.2f})"
    return text


MAIN_COLUMNS: list[tuple[str, str, int, float]] = [
    ("enqueue jobs/s (one call per job)", "enqueue_per_s", 0, 1.0),
    ("bulk push jobs/s", "bulk_per_s", 0, 1.0),
    ("asyncio enqueue jobs/s", "async_enqueue_per_s", 0, 1.0),
    ("drain jobs/s (queue empty)", "drain_per_s", 0, 1.0),
    ("drain jobs/s (last ack)", "drain_acked_per_s", 0, 1.0),
    ("latency p50 ms", "latency_p50_ms", 2, 1.0),
    ("latency p99 ms", "latency_p99_ms", 2, 1.0),
    ("worker CPU µs/job", "cpu_us_per_job", 0, 1.0),
    ("idle RSS MB", "idle_rss_kb", 1, 1 / 1024),
    ("Redis cmds/job (drain)", "redis_cmds_per_job", 2, 1.0),
    ("redis-server CPU µs/job", "redis_cpu_us_per_job", 0, 1.0),
]


def table(
    runs: Runs,
    reference: str | None,
    columns: list[tuple[str, str, int, float]],
    first: str = "system",
) -> list[str]:
    med = medians(runs)
    rat = ratios(runs, reference) if reference and reference in med else {}
    used = [c for c in columns if any(c[1] in m for m in med.values())]
    lines = [
        f"| {first} | " + " | ".join(c[0] for c in used) + " |",
        "|---|" + "---:|" * len(used),
    ]
    cut = []
    for system, metrics in med.items():
        cells = [cell(metrics, rat.get(system, {}), key, d, s) for _, key, d, s in used]
        name = system
        if metrics.get("drain_partial"):
            name += " \\*"
            cut.append(f"{system}: {metrics.get('drain_jobs', 0):,.0f} jobs")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if cut:
        lines += [
            "",
            "\\* drain cut short at --drain-timeout; its rate is over the jobs done by then "
            f"({'; '.join(cut)}, median).",
        ]
    return lines


def targets(doc: dict[str, Any]) -> list[str]:
    """Issue 5's targets 1-4 and 6, checked on the medians (ratios: per-run medians)."""
    sections = doc["sections"]
    lines = ["| target | measured | holds |", "|---|---|:---:|"]

    def row(name: str, measured: str, ok: bool | None) -> None:
        mark = NA if ok is None else ("yes" if ok else "**no**")
        lines.append(f"| {name} | {measured} | {mark} |")

    main = sections.get("main", {})
    kiq, ref = main.get("median", {}).get("kiq", {}), main.get("reference")
    rat = main.get("ratio", {}).get("kiq", {})
    if kiq and ref:
        r1, r2 = rat.get("drain_acked_per_s"), rat.get("drain_per_s")
        if r1 is not None:
            row("1. drain ≥ 2x Sidekiq (kiq to last ack vs Sidekiq to queue empty)",
                f"{X}{r1:.2f}", r1 >= 2)  # fmt: skip
        if r2 is not None:
            row("1. drain ≥ 2x Sidekiq (both to queue empty)", f"{X}{r2:.2f}", r2 >= 2)
    link = sections.get("link", {})
    lrat = link.get("ratio", {}).get("kiq", {})
    if lrat.get("drain_acked_per_s") is not None:
        r = lrat["drain_acked_per_s"]
        row(f"2. drain ≥ 2x Sidekiq at {link.get('rtt_ms', '?')} ms RTT (last ack)",
            f"{X}{r:.2f}", r >= 2)  # fmt: skip
    if kiq and ref:
        for key, label, goal in (
            ("enqueue_per_s", "3. perform_async ≥ 1.5x Sidekiq", 1.5),
            ("async_enqueue_per_s", "3. asyncio client ≥ 1.5x Sidekiq's perform_async", 1.5),
        ):
            base = main["median"][ref].get("enqueue_per_s")
            if kiq.get(key) and base:
                value = rat.get(key) if key == "enqueue_per_s" else kiq[key] / base
                row(label, f"{X}{value:.2f}", value >= goal)
        if kiq.get("bulk_per_s"):
            row("3. perform_bulk ≥ 100,000 jobs/s", fmt(kiq["bulk_per_s"]),
                kiq["bulk_per_s"] >= 100_000)  # fmt: skip
        if kiq.get("latency_p50_ms") is not None:
            p50, p99 = kiq["latency_p50_ms"], kiq["latency_p99_ms"]
            measured = f"{p50:.2f} / {p99:.2f} ms" + floor_note(main["median"])
            row("4. latency p50 ≤ 1 ms, p99 ≤ 3 ms", measured, p50 <= 1 and p99 <= 3)
        if kiq.get("idle_rss_kb") and main["median"][ref].get("idle_rss_kb"):
            mine, theirs = kiq["idle_rss_kb"] / 1024, main["median"][ref]["idle_rss_kb"] / 1024
            row("6. idle RSS ≤ Sidekiq's", f"{mine:.1f} vs {theirs:.1f} MB", mine <= theirs)
    lines += yjit_targets(main.get("runs", []))
    return lines


YJIT_PAIRS = (  # issue 14: (kiq row, Sidekiq+YJIT row, what is logged per job on both)
    ("kiq", "sidekiq-6.4-yjit", "start/done at INFO to a file"),
    ("kiq-quiet", "sidekiq-6.4-yjit-quiet", "per-job lines off"),
)


def pair_ratio(runs: Runs, mine: str, theirs: str, key: str, their_key: str) -> float | None:
    """Median over runs of mine[key] / theirs[their_key], both from the same run."""
    values = [
        run[mine][key] / run[theirs][their_key]
        for run in runs
        if run.get(mine, {}).get(key) and run.get(theirs, {}).get(their_key)
    ]
    return statistics.median(values) if values else None


def yjit_targets(runs: Runs) -> list[str]:
    """Issue 14: kiq one process ≥ 3x Sidekiq 6.4 with YJIT, per-job logging equal."""
    lines = []
    for mine, theirs, logging_ in YJIT_PAIRS:
        drain = pair_ratio(runs, mine, theirs, "drain_acked_per_s", "drain_per_s")
        if drain is not None:
            holds = "yes" if drain >= 3 else "**no**"
            lines.append(
                f"| 14. drain ≥ 3x Sidekiq+YJIT, {logging_} ({mine} to last ack vs "
                f"{theirs}) | {X}{drain:.2f} | {holds} |"
            )
    push = pair_ratio(runs, "kiq", "sidekiq-6.4-yjit", "enqueue_per_s", "enqueue_per_s")
    if push is not None:
        lines.append(f"| 14. perform_async vs Sidekiq+YJIT's (reported) | {X}{push:.2f} | {NA} |")
    return lines


def floor_note(medians: dict[str, Metrics]) -> str:
    """The bare redis-py loop's latency in the same run: what the machine allowed."""
    floor = medians.get(FloorSystem.name, {})
    if floor.get("latency_p50_ms") is None:
        return ""
    return (
        f" (the bare redis-py loop, same run: {floor['latency_p50_ms']:.2f} / "
        f"{floor['latency_p99_ms']:.2f} ms)"
    )


def render(doc: dict[str, Any]) -> str:
    host = doc["machine"]
    out = [
        f"Run {doc['started']} to {doc['finished']} (UTC), {doc['elapsed_s'] / 60:.1f} min. "
        f"Machine: {host.get('nproc')} cores ({host.get('cpu')}), {host.get('ram_gib')} GiB "
        f"RAM, Linux {host.get('kernel')}, {host.get('redis_server', 'redis-server')}, "
        f"Python {host.get('python')}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in doc['loadavg_start'])}, at end "
        f"{', '.join(f'{x:.2f}' for x in doc['loadavg_end'])}.",
        "",
        "**The machine is shared with other engineers' test runs**, so absolute figures "
        f"move by 25% or more between runs; the ratios ({X}, against Sidekiq in the same run, "
        "median of the per-run ratios) are the figures to compare.",
        "",
        "Command:",
        "",
        "```console",
        f"$ {doc['command']}",
        "```",
        "",
    ]
    sections = doc["sections"]
    if "main" in sections:
        main = sections["main"]
        out += [
            f"### No-op jobs, one worker process with 10 slots "
            f"(n = {doc['settings']['n']:,}, {doc['settings']['runs']} runs, medians)",
            "",
            *table(main["runs"], main.get("reference"), MAIN_COLUMNS),
            "",
            *versions(doc),
            "",
        ]
    checks = targets(doc)
    if len(checks) > 2:
        out += ["### Targets (issue 5)", "", *checks, ""]
    out += link_section(doc) + scale_section(doc) + mix_section(doc) + soak_section(doc)
    if "io" in sections:
        out += io_bench.render(sections["io"], table, doc["settings"]["runs"])
    if "mixed" in sections:
        out += capsule_bench.render(sections["mixed"])
    if "idle" in sections:
        out += idle_bench.render(sections["idle"])
    out += profile_section(doc)
    if doc["errors"]:
        out += ["### Errors", "", *[f"- {e}" for e in doc["errors"]], ""]
    return "\n".join(out)


def versions(doc: dict[str, Any]) -> list[str]:
    lines = ["Systems:", ""]
    for name, meta in doc["meta"].items():
        parts = [f"{k} {v}" for k, v in meta.items() if k not in ("log", "command")]
        lines.append(f"- **{name}**: `{meta.get('command', '')}`; {'; '.join(parts)}")
    return lines


def link_section(doc: dict[str, Any]) -> list[str]:
    link = doc["sections"].get("link")
    if not link:
        return []
    columns = [c for c in MAIN_COLUMNS if c[1] not in ("bulk_per_s", "redis_cpu_us_per_job")]
    columns.append(("delay proxy CPU µs/job", "proxy_cpu_us_per_job", 0, 1.0))
    return [
        f"### Redis behind a {link['rtt_ms']} ms round trip ({link['mode']})",
        "",
        f"{link['note']}. Measured PING round trip through the link: "
        f"{link['measured_rtt_ms']:.3f} ms"
        + (f" (direct: {link['direct_rtt_ms']:.3f} ms)" if link.get("direct_rtt_ms") else "")
        + f". Enqueue: n = {doc['settings']['link_enqueue_n']:,} (one round trip per job); "
        f"drain: n = {doc['settings']['n']:,}.",
        "",
        *table(link["runs"], link.get("reference"), columns),
        "",
    ]


def scale_section(doc: dict[str, Any]) -> list[str]:
    scale = doc["sections"].get("scale")
    if not scale:
        return []
    columns: list[tuple[str, str, int, float]] = [
        ("drain jobs/s (queue empty)", "drain_per_s", 0, 1.0),
        ("drain jobs/s (last ack)", "drain_acked_per_s", 0, 1.0),
        ("worker CPU µs/job", "cpu_us_per_job", 0, 1.0),
        ("workers' CPU %", "worker_cpu_pct", 0, 1.0),
        ("redis-server CPU %", "redis_cpu_pct", 0, 1.0),
        ("Redis cmds/job", "redis_cmds_per_job", 2, 1.0),
    ]
    med = medians(scale["runs"])
    first = next(iter(med), None)
    return [
        f"### Scale-out: `kiq worker --processes N` (n = {doc['settings']['scale_n']:,})",
        "",
        *table(scale["runs"], first, columns, first="processes"),
        "",
        f"Ratios against {first}. {scale_note(med)}",
        "",
    ]


def scale_note(med: dict[str, Metrics]) -> str:
    busiest = max(med.items(), key=lambda kv: kv[1].get("redis_cpu_pct", 0), default=None)
    if not busiest:
        return ""
    name, metrics = busiest
    redis_pct = metrics.get("redis_cpu_pct", 0)
    worker_pct = metrics.get("worker_cpu_pct", 0)
    return (
        f"Redis is single-threaded: it is the limit when redis-server nears 100% of one "
        f"core. The highest here is {redis_pct:.0f}% ({name}), while the workers use "
        f"{worker_pct:.0f}% of a core (of the machine's {os.cpu_count()}, shared with other "
        f"work): on this machine "
        f"the workers' CPU runs out "
        + ("before Redis does." if redis_pct < 80 else "and Redis is near its limit too.")
    )


def mix_section(doc: dict[str, Any]) -> list[str]:
    mix = doc["sections"].get("mix")
    if not mix:
        return []
    columns: list[tuple[str, str, int, float]] = [
        ("jobs/s (queue empty)", "drain_per_s", 0, 1.0),
        ("jobs/s (last ack)", "drain_acked_per_s", 0, 1.0),
        ("most jobs running at once", "peak_running", 0, 1.0),
        ("worker CPU µs/job", "cpu_us_per_job", 0, 1.0),
    ]
    n = doc["settings"]["mix_n"]
    return [
        f"### Realistic mix: 1 ms I/O-bound jobs, 10 slots (n = {n:,})",
        "",
        *table(mix["runs"], "sidekiq sleep 1 ms", columns, first="jobs"),
        "",
        "10 slots busy for 1 ms per job bound this at 10,000 jobs/s (less the engine's own "
        "time per job).",
        "",
    ]


def soak_section(doc: dict[str, Any]) -> list[str]:
    soak = doc["sections"].get("soak")
    if not soak:
        return []
    curve = ", ".join(f"({done:,}, {mb:.1f})" for done, mb in soak["curve"])
    m = soak["metrics"]
    return [
        f"### Memory soak: {int(m['soak_jobs']):,} jobs through one kiq worker "
        f"({m['soak_s']:.0f} s)",
        "",
        f"RSS {m['soak_rss_first_mb']:.1f} MB at the start, {m['soak_rss_max_mb']:.1f} MB at "
        f"most, {m['soak_rss_last_mb']:.1f} MB at the end; growth after the first quarter: "
        f"{m['soak_rss_growth_after_warmup_mb']:+.1f} MB. Curve (jobs done, RSS MB): {curve}.",
        "",
    ]


def profile_section(doc: dict[str, Any]) -> list[str]:
    profile = doc["sections"].get("profile")
    if not profile:
        return []
    top = profile["top"]
    lines = [
        f"### Profile: py-spy on a kiq worker draining {profile['jobs']:,} no-op jobs",
        "",
        "`py-spy record --gil --nonblocking -f raw` (samples only from the thread holding "
        f"the GIL: where the Python CPU goes), {top['total_samples'][0]['n']:,} samples.",
        "",
        "| self time | function | | self time | line |",
        "|---:|---|---|---:|---|",
    ]
    for py, nat in zip(top["python"], top["line"], strict=False):
        lines.append(
            f"| {py['share'] * 100:.1f}% | `{py['function']}` | | "
            f"{nat['share'] * 100:.1f}% | `{nat['function']}` |"
        )
    return [*lines, ""]


def write_doc(doc: dict[str, Any], path: Path) -> None:
    body = f"{BEGIN}\n{render(doc)}\n{END}"
    if path.exists() and BEGIN in (text := path.read_text()) and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        path.write_text(head + body + tail)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# Benchmarks\n\n{body}\n")
    print(f"wrote {path}")


# -- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("-n", type=int, default=10_000, help="jobs per enqueue/drain (same for every system)")
    add("--runs", type=int, default=3, help="runs per section; the table shows medians")
    add("--systems", default=DEFAULT_SYSTEMS, help=f"of kiq,sidekiq,{','.join(PEERS)}")
    add("--sections", default=DEFAULT_SECTIONS,
        help="main,link,scale,mix,io,mixed,idle,soak,profile")  # fmt: skip
    add("only", nargs="*", metavar="SECTION", help="sections to run (instead of --sections)")
    add("--jobs", type=int, default=20_000, help="io and mixed: jobs per I/O drain")
    add("--io-systems", default=io_bench.DEFAULT_SYSTEMS, help=f"of {','.join(io_bench.SPECS)}")
    add("--io-latency-seconds", type=float, default=2.0, help="io: seconds of paced jobs")
    add("--io-drain-timeout", type=float, default=30.0, help="io: s; slower drains cut short")
    add("--io-port", type=int, default=8790, help="io: the delayed HTTP server's port")
    add("--latency-ms", type=float, default=1.0, help="round trip of the link section")
    add("--link", choices=["auto", "netem", "proxy"], default="auto")
    add("--link-enqueue-n", type=int, default=1_000, help="enqueue n behind the slow link")
    add("--latency-count", type=int, default=200)
    add("--scale", default="1,2,4", help="kiq --processes values")
    add("--scale-n", type=int, default=10_000)
    add("--mix-n", type=int, default=5_000)
    add("--soak", type=int, default=0, help="jobs for the soak (adds the soak section)")
    add("--soak-time-limit", type=float, default=900.0, help="seconds")
    add("--profile-n", type=int, default=100_000)
    add("--drain-timeout", type=float, default=20.0, help="s; slower drains are cut short")
    add("--port", type=int, default=6390, help="private redis-server (the link uses +1)")
    add("--json", default=str(RESULTS))
    add("--merge", default="", help="a,b.json: write one doc from earlier runs' results")
    add("--doc", default=str(DOC), help="markdown file to update ('' to skip)")
    add("--log-dir", default=os.path.join("/tmp", "kiq-bench"))
    args = parser.parse_args(argv)
    if args.only:
        args.sections = ",".join(args.only)
    if args.soak and "soak" not in args.sections.split(","):
        args.sections += ",soak"
    return args


def database(server: RedisServer, db: int) -> RedisServer:
    """The same redis-server, another database number."""
    return AttachedServer(f"{server.url.rsplit('/', 1)[0]}/{db}", server.pid)


def build_systems(server: RedisServer, args: argparse.Namespace) -> list[Any]:
    """One system per name, each on a database of its own (see run_main)."""
    logs = Path(args.log_dir)
    systems: list[Any] = []
    for db, name in enumerate(args.systems.split(",")):
        own = database(server, db)
        if name == "kiq":
            systems.append(
                KiqSystem(own, log_path=logs / "kiq.log", drain_timeout=args.drain_timeout)
            )
        elif name == "sidekiq":
            systems.append(
                SidekiqSystem(own, log_path=logs / "sidekiq.log", drain_timeout=args.drain_timeout)
            )
        elif name in ("sidekiq-yjit", "sidekiq-yjit-quiet"):
            # ruby --yjit (RUBY_YJIT_ENABLE=1); -quiet: logger at ERROR, no per-job lines
            systems.append(
                SidekiqSystem(
                    own,
                    log_path=logs / f"{name}.log",
                    drain_timeout=args.drain_timeout,
                    yjit=True,
                    quiet=name.endswith("-quiet"),
                )
            )
        elif name == "kiq-quiet":  # --log-level error: no per-job lines, as sidekiq-yjit-quiet
            systems.append(
                KiqSystem(
                    own,
                    log_path=logs / "kiq-quiet.log",
                    drain_timeout=args.drain_timeout,
                    name="kiq-quiet",
                    log_level="error",
                )
            )
        elif name == "floor":
            systems.append(
                FloorSystem(own, log_path=logs / "floor.log", drain_timeout=args.drain_timeout)
            )
        elif name in PEERS:
            systems.append(
                PeerSystem(
                    PEERS[name],
                    own,
                    log_path=logs / f"{name}.log",
                    drain_timeout=args.drain_timeout,
                )
            )
        else:
            raise SystemExit(
                f"unknown system {name!r}; choose from kiq,kiq-quiet,sidekiq,sidekiq-yjit,"
                f"sidekiq-yjit-quiet,floor,{','.join(PEERS)}"
            )
    return systems


@contextlib.contextmanager
def fresh_logs(directory: str) -> Iterator[None]:
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for log in path.glob("*.log"):
        log.unlink()
    yield


def merge(paths: Sequence[str]) -> dict[str, Any]:
    """One document from the results of several runs (each a section or a few), as if
    run together: sections, systems and errors joined, the first run's settings."""
    docs = [json.loads(Path(p).read_text()) for p in paths]
    doc = docs[0]
    for other in docs[1:]:
        doc["sections"].update(other["sections"])
        doc["meta"].update(other["meta"])
        doc["errors"] += other["errors"]
        doc["command"] += " && " + other["command"]
        doc["elapsed_s"] += other["elapsed_s"]
    doc["started"] = min(d["started"] for d in docs)
    doc["finished"] = max(d["finished"] for d in docs)
    doc["loadavg_end"] = docs[-1]["loadavg_end"]
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.merge:
        merged = merge(args.merge.split(","))
        Path(args.json).write_text(json.dumps(merged, indent=1, default=str) + "\n")
        if args.doc:
            write_doc(merged, Path(args.doc))
        return 0
    sections = args.sections.split(",")
    started = time.monotonic()
    errors: list[str] = []
    doc: dict[str, Any] = {
        "command": "python bench/run.py" + "".join(f" {shlex.quote(a)}" for a in sys.argv[1:]),
        "started": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "machine": machine(),
        "loadavg_start": os.getloadavg(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "doc", "log_dir")},
        "sections": {},
        "meta": {},
        "errors": errors,
    }
    with fresh_logs(args.log_dir), RedisServer.private(port=args.port) as server:
        wanted = {"main", "link", "mix"} & set(sections)  # the sections that use --systems
        systems = build_systems(server, args) if wanted else []
        for system in systems:
            doc["meta"][system.name] = system.describe()
        by_name: dict[str, Any] = {}
        for system in systems:  # the first of each family: "sidekiq" is sidekiq-6.4 itself
            by_name.setdefault(system.name.split("-")[0], system)
        reference = by_name["sidekiq"].name if "sidekiq" in by_name else None
        if "main" in sections:
            runs = run_main(systems, args, errors)
            doc["sections"]["main"] = section(runs, reference)
        if "link" in sections and args.latency_ms > 0:
            runs, link = run_link(args.port + 1, args, errors)
            doc["sections"]["link"] = {
                **section(runs, reference),
                "rtt_ms": args.latency_ms,
                "mode": link.mode,
                "note": link.note,
                "measured_rtt_ms": link.measured_rtt_ms,
                "direct_rtt_ms": link.direct_rtt_ms,
            }
        if "scale" in sections:
            runs = run_scale(server, args, errors)
            doc["sections"]["scale"] = section(runs, None)
        if "mix" in sections:
            kiq = by_name.get("kiq") or KiqSystem(server, log_path=Path(args.log_dir) / "kiq.log")
            sidekiq = by_name.get("sidekiq")
            runs = run_mix(kiq, sidekiq, args, errors)
            doc["sections"]["mix"] = section(runs, "sidekiq sleep 1 ms")
        doc["sections"].update(run_issue14(server, args, sections, errors))
        if "soak" in sections:
            doc["sections"]["soak"] = run_soak(server, args, errors)
        if "profile" in sections:
            doc["sections"]["profile"] = run_profile(server, args, errors)
    doc["finished"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    doc["elapsed_s"] = time.monotonic() - started
    doc["loadavg_end"] = os.getloadavg()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(f"\nwrote {args.json}")
    print("\n" + render(doc))
    if args.doc:
        write_doc(doc, Path(args.doc))
    print(f"total {doc['elapsed_s'] / 60:.1f} min")
    return 1 if errors else 0


def run_issue14(
    server: RedisServer, args: argparse.Namespace, sections: list[str], errors: list[str]
) -> dict[str, Any]:
    """Issue 14's sections: io (bench/io_bench.py), mixed (capsule_bench.py), idle."""
    out: dict[str, Any] = {}
    logs = Path(args.log_dir)
    if "io" in sections:
        out["io"] = io_bench.run_io(
            server,
            names=args.io_systems.split(","),
            jobs=args.jobs,
            runs=args.runs,
            port=args.io_port,
            log_dir=logs,
            timeout=args.io_drain_timeout,
            latency_seconds=args.io_latency_seconds,
            phase=phase,
            errors=errors,
        )
    if "mixed" in sections:
        out["mixed"] = capsule_bench.run_mixed(
            server, noop=args.jobs, io=args.jobs, runs=args.runs, log_dir=logs, phase=phase,
            errors=errors,
        )  # fmt: skip
    if "idle" in sections:
        out["idle"] = idle_bench.run_idle(
            server, runs=args.runs, log_dir=logs, phase=phase, errors=errors
        )
    return out


def section(runs: Runs, reference: str | None) -> dict[str, Any]:
    return {
        "runs": runs,
        "reference": reference,
        "median": medians(runs),
        "ratio": ratios(runs, reference) if reference else {},
    }


def run_soak(server: RedisServer, args: argparse.Namespace, errors: list[str]) -> dict[str, Any]:
    kiq = KiqSystem(server, log_path=Path(args.log_dir) / "kiq-soak.log")
    print(f"\n== soak: {args.soak:,} jobs, at most {args.soak_time_limit:.0f} s", flush=True)
    try:
        curve, metrics = kiq.soak(args.soak, time_limit=args.soak_time_limit)
    except Exception as exc:
        errors.append(f"soak: {type(exc).__name__}: {exc}")
        return {}
    print(f"  {metrics}", flush=True)
    return {"curve": curve, "metrics": metrics}


def run_profile(server: RedisServer, args: argparse.Namespace, errors: list[str]) -> dict[str, Any]:
    kiq = KiqSystem(server, log_path=Path(args.log_dir) / "kiq-profile.log")
    out = Path(args.log_dir) / "kiq-drain.pyspy.txt"
    print(f"\n== profile: py-spy on a kiq drain of {args.profile_n:,} jobs", flush=True)
    try:
        kiq.profile(args.profile_n, out)
    except Exception as exc:
        errors.append(f"profile: {type(exc).__name__}: {exc}")
        return {}
    top = summarize_profile(out)
    for view in ("python", "line"):
        print(f"  self time by {view} frame:")
        for entry in top[view]:
            print(f"  {entry['share'] * 100:5.1f}%  {entry['function']}")
    return {"jobs": args.profile_n, "raw": str(out), "top": top}


if __name__ == "__main__":
    sys.exit(main())
