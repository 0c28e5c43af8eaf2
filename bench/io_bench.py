"""The I/O-bound section of bench/run.py (issue 14): 50 ms jobs at a concurrency of 1,000.

Each system drains n jobs (``--jobs``, 20,000) that each wait 50 ms, in two variants:

  http   a GET to bench/io_server.py on 127.0.0.1 (answers after 50 ms); Python systems
         use aiohttp (one session per event loop, keep-alive), Sidekiq Net::HTTP (one
         keep-alive connection per thread)
  sleep  ``await asyncio.sleep(0.05)`` / Ruby ``sleep 0.05``

The systems, one worker process each, on the same private Redis (a database each):

  kiq        an async capsule of 1,000 (``KIQ_IO_WORKER`` below; until capsules exist,
             ``-c 1000``, the stand-in: async jobs already run on one event loop)
  sidekiq    Sidekiq 6.4, ``ruby --yjit``, ``-c 50`` (its practical best: more threads
             only add GVL contention), Net::HTTP / sleep
  arq        ``max_jobs = 1000``, ``poll_delay = 0.05`` (its 0.5 s default idles this load)
  saq        ``concurrency = 1000``
  taskiq     taskiq-redis' ListQueueBroker, ``--workers 1 --max-async-tasks 1000``
  streaq     ``Worker(concurrency=1000)``, results not kept (``ttl=0``)

Per system and variant: jobs/s of the drain (to the last ack where the system shows its
in-flight jobs in Redis), worker CPU µs/job, worker RSS after the drain, and the start
latency under load: the worker is fed at half its own drain rate of that run (each job
carrying its push time; the job RPUSHes ``now - sent`` first, then does its I/O), and the
p50 / p99 of those latencies is reported. Logging is each system's default.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import redis
from common import (
    BENCH_DIR,
    ListProbe,
    Metrics,
    Probe,
    RedisServer,
    cpu_seconds,
    latency_metrics,
    measure_drain,
    run_json,
    wait_for,
    worker_process,
)
from kiq_bench import KiqProbe
from peers import VENVS, PeerSpec, ensure_venv

APPS = BENCH_DIR / "io_apps"
SERVER = BENCH_DIR / "io_server.py"
LATENCY_KEY = "bench:io:latency"  # io_apps/_io_common.py, sidekiq_io.rb
KINDS = ("http", "sleep")
X = "\N{MULTIPLICATION SIGN}"
AIOHTTP = "aiohttp==3.14.5"
# How kiq's worker runs the io jobs (queue "io"): an async capsule of 1,000 beside the
# default thread capsule (empty queue "default"). A kiq without capsules (its -g is only
# a tag) gets the stand-in: -c 1000, every job one slot, async jobs on the one loop.
KIQ_IO_WORKER = ["-c", "10", "-q", "default", "-g", "io:io:1000:async"]
KIQ_IO_STANDIN = ["-c", "1000", "-q", "io"]


def kiq_has_capsules(python: Path, env: dict[str, str]) -> bool:
    """Whether this kiq's `worker -g` takes a capsule (its --help says so)."""
    out = subprocess.run(
        [str(python), "-m", "kiq.cli", "worker", "--help"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return "capsule" in out.stdout


@dataclass(frozen=True)
class IoSpec:
    """How to run one system's I/O jobs: its client, its worker, its queue probe."""

    name: str
    label: str
    requirements: tuple[str, ...]  # () = no venv of its own (kiq, Sidekiq)
    worker: list[str]  # argv; a first word without "/" is taken from the venv's bin/
    probe: Callable[[redis.Redis], Probe]
    setting: str  # the concurrency setting, for the table


def _peer(
    name: str,
    label: str,
    requirements: tuple[str, ...],
    worker: str,
    probe: Callable[[redis.Redis], Probe],
    setting: str,
) -> IoSpec:
    # The latency jobs RPUSH their sample with redis.asyncio: every peer but streaq
    # (coredis) brings redis-py; streaq's requirements add it.
    return IoSpec(name, label, (*requirements, AIOHTTP), worker.split(), probe, setting)


SPECS: dict[str, IoSpec] = {
    s.name: s
    for s in (
        IoSpec("kiq", "kiq", (), [], lambda r: KiqProbe(r, "io"), "async capsule, 1,000"),
        IoSpec(
            "sidekiq",
            "sidekiq-6.4-yjit",
            (),
            [],
            lambda r: ListProbe(r, "queue:default"),
            "-c 50, YJIT",
        ),
        _peer(
            "arq",
            "arq-0.28",
            ("arq==0.28.0", "hiredis"),
            "arq arq_io.WorkerSettings",
            lambda r: ListProbe(r, "arq:queue", command="zcard"),
            "max_jobs 1,000",
        ),
        _peer(
            "saq",
            "saq-0.26",
            ("saq[hiredis]==0.26.4",),
            "saq saq_io.settings",
            # the incomplete zset holds a job from its enqueue to its finish
            lambda r: ListProbe(r, "saq:default:incomplete", command="zcard"),
            "concurrency 1,000",
        ),
        _peer(
            "taskiq",
            "taskiq-0.13",
            ("taskiq==0.13.0", "taskiq-redis==1.2.4"),
            "taskiq worker taskiq_io:broker --workers 1 --max-async-tasks 1000",
            lambda r: ListProbe(r, "taskiq"),
            "max-async-tasks 1,000",
        ),
        _peer(
            "streaq",
            "streaq-7.2",
            ("streaq==7.2.0", "redis==8.1.0"),
            "streaq run streaq_io:worker",
            # a finished task is XACKed and XDELed: XLEN = queued + running
            lambda r: ListProbe(r, "streaq:default:queues:normal", command="xlen"),
            "concurrency 1,000",
        ),
    )
}
DEFAULT_SYSTEMS = "kiq,sidekiq,arq,saq,taskiq,streaq"


@contextlib.contextmanager
def delayed_server(port: int, delay: float = 0.05) -> Iterator[subprocess.Popen[str]]:
    """bench/io_server.py on 127.0.0.1:port, stopped on exit."""
    process = subprocess.Popen(
        [sys.executable, str(SERVER), "--port", str(port), "--delay", str(delay)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"io_server.py did not start: {line!r}")
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class IoSystem:
    """One system of the io section, on its own Redis database."""

    def __init__(
        self,
        spec: IoSpec,
        server: RedisServer,
        *,
        url: str,
        log_path: Path,
        drain_timeout: float,
        kiq_worker: list[str] | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.label
        self.redis = server.client()
        self.log_path = log_path
        self.drain_timeout = drain_timeout
        self.workdir = Path(tempfile.gettempdir()) / "kiq-bench" / f"io-{spec.name}-cwd"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kiq_worker = kiq_worker or KIQ_IO_WORKER
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KIQ_", "REDIS_"))}
        for leak in ("RAILS_MAX_THREADS", "RUBY_YJIT_ENABLE", "VIRTUAL_ENV"):
            env.pop(leak, None)
        env.update(BENCH_REDIS_URL=server.url, BENCH_IO_URL=url, PYTHONPATH=str(APPS))
        if spec.name == "kiq":
            self.venv: Path | None = kiq_venv()
            env["KIQ_REDIS_URL"] = server.url
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(APPS), os.environ.get("PYTHONPATH", "")) if p
            )
        elif spec.name == "sidekiq":
            self.venv = None
            env["REDIS_URL"] = server.url
        else:
            self.venv = ensure_venv(
                PeerSpec(f"io-{spec.name}", spec.label, spec.requirements, "", "", ListProbe)  # type: ignore[arg-type]
            )
            env["VIRTUAL_ENV"] = str(self.venv)
        if self.venv is not None:
            env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        self.env = env
        if spec.name == "kiq" and kiq_worker is None:
            assert self.venv is not None
            capsules = kiq_has_capsules(self.venv / "bin" / "python", env)
            self.kiq_worker = KIQ_IO_WORKER if capsules else KIQ_IO_STANDIN

    # -- the two measurements ------------------------------------------------------------------

    def drain(self, kind: str, n: int) -> Metrics:
        self.redis.flushdb()
        self._client("fill", kind, str(n))
        probe = self.spec.probe(self.redis)
        queued = sum(probe())
        if queued != n:
            raise RuntimeError(f"fill left {queued} jobs, expected {n}")
        with self.worker() as worker:
            metrics = measure_drain(
                worker, stats_client=self.redis, n=n, probe=probe, timeout=self.drain_timeout
            )
        self.redis.flushdb()
        return metrics

    def latency(self, kind: str, rate: float, seconds: float) -> Metrics:
        """Start latency (enqueue -> start) with the worker fed at `rate` jobs/s."""
        self.redis.flushdb()
        count = max(50, int(rate * seconds))  # a slow system's few jobs still take seconds
        probe = self.spec.probe(self.redis)
        with self.worker() as worker:
            self._client("fill", kind, "20")  # warm-up: connections, sessions, code paths
            self._wait_idle(probe, worker, 60.0, "warm-up jobs")
            time.sleep(0.5)
            out = self._client("paced", kind, f"{rate:.1f}", str(count))
            wait_for(
                lambda: self.redis.llen(LATENCY_KEY) >= count,
                timeout=30 + count / rate,
                what=f"{count} start-latency samples",
            )
            self._wait_idle(probe, worker, 60.0, "the paced jobs")
        samples = [float(v) for v in self.redis.lrange(LATENCY_KEY, 0, -1)]
        self.redis.flushdb()
        metrics = {f"start_{k}": v for k, v in latency_metrics(samples).items()}
        metrics["offered_per_s"] = rate
        metrics["pushed_per_s"] = float(out.get("rate", rate))
        return metrics

    def describe(self) -> dict[str, str]:
        setting = self.spec.setting
        if self.kiq_worker is KIQ_IO_STANDIN:
            setting = "no capsules in this kiq: the stand-in -c 1000"
        return {"command": " ".join(self._worker_argv()), "setting": setting}

    # -- helpers -------------------------------------------------------------------------------

    def _wait_idle(
        self, probe: Probe, worker: subprocess.Popen[bytes], timeout: float, what: str
    ) -> None:
        def idle() -> bool:
            if worker.poll() is not None:
                raise RuntimeError(f"{self.name} worker exited; see {self.log_path}")
            return sum(probe()) == 0

        wait_for(idle, timeout=timeout, interval=0.02, what=what)

    def _worker_argv(self) -> list[str]:
        if self.spec.name == "kiq":
            assert self.venv is not None
            return [str(self.venv / "bin" / "python"), "-m", "kiq.cli", "worker",
                    "-r", str(APPS / "kiq_io.py"), *self.kiq_worker]  # fmt: skip
        if self.spec.name == "sidekiq":
            sidekiq = shutil.which("sidekiq") or "/usr/bin/sidekiq"
            return ["ruby", "--yjit", sidekiq, "-r", str(APPS / "sidekiq_io.rb"),
                    "-c", "50", "-q", "default"]  # fmt: skip
        assert self.venv is not None
        program, *rest = self.spec.worker
        return [str(self.venv / "bin" / program), *rest]

    def worker(self) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
        return worker_process(
            self._worker_argv(), env=dict(self.env), log_path=self.log_path, cwd=APPS,
            stop_timeout=15,
        )  # fmt: skip

    def _client(self, command: str, *argv: str) -> dict[str, float | int | str]:
        if self.spec.name == "sidekiq":
            args = ", ".join(json.dumps(a) if i == 0 else a for i, a in enumerate(argv))
            script = f"puts JSON.generate(SidekiqIo.{command}({args}))"
            cmd = ["ruby", "--yjit", "-rjson", "-r", str(APPS / "sidekiq_io.rb"), "-e", script]
        else:
            assert self.venv is not None
            cmd = [str(self.venv / "bin" / "python"), str(APPS / f"{self.spec.name}_io.py"),
                   command, *argv]  # fmt: skip
        return run_json(
            cmd, env=self.env, cwd=self.workdir, timeout=300, what=f"{self.name} {command}"
        )


def kiq_venv() -> Path:
    """bench/.venvs/io-kiq: this Python's packages (kiq's own dependencies) plus aiohttp,
    which kiq's async job uses as its HTTP client (a bench dependency, not kiq's)."""
    venv = VENVS / "io-kiq"
    marker = venv / "bench-requirements.json"
    if marker.exists() and marker.read_text() == AIOHTTP:
        return venv
    print(f"[kiq] creating {venv} (system site-packages + {AIOHTTP})", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--clear", str(venv)],
                   check=True, timeout=120)  # fmt: skip
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                    "--disable-pip-version-check", AIOHTTP], check=True, timeout=600)  # fmt: skip
    marker.write_text(AIOHTTP)
    return venv


def server_cpu_us(server: subprocess.Popen[str], n: int, step: Callable[[], Metrics]) -> Metrics:
    """The step's metrics plus the delayed HTTP server's CPU per job (it shares the cores)."""
    before = cpu_seconds(server.pid)
    metrics = step()
    if metrics:
        metrics["server_cpu_us_per_job"] = (cpu_seconds(server.pid) - before) / n * 1e6
    return metrics


# -- the section -----------------------------------------------------------------------------

Phase = Callable[[str, list[str], Callable[[], Metrics]], Metrics]
Runs = list[dict[str, Metrics]]


def build(
    server: RedisServer, names: list[str], url: str, log_dir: Path, timeout: float, first_db: int
) -> list[IoSystem]:
    systems = []
    base = server.url.rsplit("/", 1)[0]
    for offset, name in enumerate(names):
        if name not in SPECS:
            raise SystemExit(f"unknown io system {name!r}; choose from {','.join(SPECS)}")
        own = RedisServer(f"{base}/{first_db + offset}")
        systems.append(
            IoSystem(
                SPECS[name],
                own,
                url=url,
                log_path=log_dir / f"io-{name}.log",
                drain_timeout=timeout,
            )
        )
    return systems


def run_io(
    server: RedisServer,
    *,
    names: list[str],
    jobs: int,
    runs: int,
    port: int,
    log_dir: Path,
    timeout: float,
    latency_seconds: float,
    phase: Phase,
    errors: list[str],
) -> dict[str, object]:
    """Every system's drain of each kind, then its start latency at half that drain rate.

    Phase by phase, as run.py's main section: kiq and Sidekiq back to back (which first
    alternates between runs), the peers after them in a rotating order.
    """
    out: dict[str, Runs] = {kind: [] for kind in KINDS}
    meta: dict[str, dict[str, str]] = {}
    with delayed_server(port) as http:
        systems = build(server, names, f"http://127.0.0.1:{port}/", log_dir, timeout, 10)
        for system in systems:
            meta[system.name] = system.describe()
        pair = [s for s in systems if s.spec.name in ("kiq", "sidekiq")]
        others = [s for s in systems if s not in pair]
        for index in range(runs):
            k = index % max(len(others), 1)
            order = [*(pair if index % 2 == 0 else pair[::-1]), *others[k:], *others[:k]]
            for kind in KINDS:
                print(f"\n== io {kind}, run {index + 1}/{runs}", flush=True)
                run: dict[str, Metrics] = {s.name: {} for s in order}
                for system in order:
                    step = _drain_step(system, kind, jobs)
                    if kind == "http":
                        step = _with_server(http, jobs, step)
                    run[system.name].update(phase(f"{system.name} drain", errors, step))
                for system in order:
                    rate = run[system.name].get("drain_acked_per_s")
                    if not rate:
                        continue
                    step = _latency_step(system, kind, rate / 2, latency_seconds)
                    run[system.name].update(phase(f"{system.name} latency", errors, step))
                derive(run)
                out[kind].append(run)
    return {"runs": out, "meta": meta, "jobs": jobs}


def _drain_step(system: IoSystem, kind: str, jobs: int) -> Callable[[], Metrics]:
    return lambda: system.drain(kind, jobs)


def _latency_step(
    system: IoSystem, kind: str, rate: float, seconds: float
) -> Callable[[], Metrics]:
    return lambda: system.latency(kind, rate, seconds)


def _with_server(
    http: subprocess.Popen[str], jobs: int, step: Callable[[], Metrics]
) -> Callable[[], Metrics]:
    return lambda: server_cpu_us(http, jobs, step)


def derive(run: dict[str, Metrics]) -> None:
    """Ratios taken inside one run: kiq against Sidekiq and against the fastest async peer."""
    kiq = run.get("kiq", {})
    rate = kiq.get("drain_acked_per_s")
    if not rate:
        return
    sidekiq = next((m for name, m in run.items() if name.startswith("sidekiq")), {})
    if sidekiq.get("drain_acked_per_s"):
        kiq["x_sidekiq"] = rate / sidekiq["drain_acked_per_s"]
    if sidekiq.get("rss_after_drain_kb") and kiq.get("rss_after_drain_kb"):
        kiq["rss_x_sidekiq"] = kiq["rss_after_drain_kb"] / sidekiq["rss_after_drain_kb"]
    peers = [
        m["drain_acked_per_s"]
        for name, m in run.items()
        if name != "kiq" and not name.startswith("sidekiq") and m.get("drain_acked_per_s")
    ]
    if peers:
        kiq["x_best_peer"] = rate / max(peers)


# -- the tables ------------------------------------------------------------------------------

COLUMNS: list[tuple[str, str, int, float]] = [
    ("jobs/s (last ack)", "drain_acked_per_s", 0, 1.0),
    ("start latency p50 ms", "start_latency_p50_ms", 1, 1.0),
    ("start latency p99 ms", "start_latency_p99_ms", 1, 1.0),
    ("worker CPU µs/job", "cpu_us_per_job", 0, 1.0),
    ("worker RSS MB", "rss_after_drain_kb", 1, 1 / 1024),
    ("Redis cmds/job", "redis_cmds_per_job", 2, 1.0),
    ("HTTP server CPU µs/job", "server_cpu_us_per_job", 0, 1.0),
]


def render(io: dict[str, object], table: Callable[..., list[str]], runs_count: int) -> list[str]:
    """Markdown for the io section: one table per kind, then the issue's targets."""
    runs_by_kind: dict[str, Runs] = io["runs"]  # type: ignore[assignment]
    meta: dict[str, dict[str, str]] = io["meta"]  # type: ignore[assignment]
    jobs = int(io["jobs"])  # type: ignore[call-overload]
    out = [
        f"### I/O-bound drain: {jobs:,} jobs of 50 ms I/O, one worker process "
        f"({runs_count} runs, medians)",
        "",
        "Each job waits 50 ms: **http** a GET to a local asyncio server that answers after "
        "50 ms (aiohttp / Net::HTTP keep-alive), **sleep** `asyncio.sleep(0.05)` / "
        "`sleep 0.05`. Start latency: enqueue to start, with the worker fed at half its "
        "own drain rate of that run. Ratios (" + X + ") against Sidekiq+YJIT `-c 50`, same run.",
        "",
    ]
    for kind in KINDS:
        runs = runs_by_kind.get(kind) or []
        if not runs:
            continue
        reference = next((n for n in runs[0] if n.startswith("sidekiq")), None)
        out += [f"**{kind}**", "", *table(runs, reference, COLUMNS), ""]
    out += ["Settings:", ""]
    for name, m in meta.items():
        out.append(f"- **{name}** ({m['setting']}): `{m['command']}`")
    out += ["", *targets(runs_by_kind), ""]
    return out


def targets(runs_by_kind: dict[str, Runs]) -> list[str]:
    import statistics

    lines = [
        "| target (issue 14) | measured (median of per-run ratios) | holds |",
        "|---|---|:---:|",
    ]
    for kind, runs in runs_by_kind.items():
        for key, label, goal, lower in (
            ("x_sidekiq", "≥ 10x Sidekiq 6.4+YJIT -c 50", 10.0, False),
            ("x_best_peer", "≥ 1.5x the best async Python peer", 1.5, False),
            ("rss_x_sidekiq", "RSS ≤ Sidekiq -c 50's", 1.0, True),
        ):
            values = [r["kiq"][key] for r in runs if key in r.get("kiq", {})]
            if not values:
                continue
            value = statistics.median(values)
            ok = value <= goal if lower else value >= goal
            lines.append(f"| {kind}: {label} | {X}{value:.2f} | {'yes' if ok else '**no**'} |")
    return lines
