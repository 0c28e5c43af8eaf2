"""The Python peers (Dramatiq, Celery, RQ, Huey, arq) as benchmarked systems.

Each peer runs from a virtualenv of its own under bench/.venvs/<name>, created on first
use (`python -m venv` + `pip install` of the pinned release from PyPI), so no peer's
dependencies meet kiq's or another peer's. Its client and worker are its own, driven by
bench/peer_apps/<name>_app.py (see _driver.py there), on the same private Redis, with a
no-op job and 10 slots where the system has slots:

  dramatiq  `dramatiq dramatiq_app -p 1 -t 10 -Q default` (a parent process + 1 worker)
  celery    `celery -A celery_app worker -P threads -c 10 -Q default`
  rq        `rq worker -w rq.worker.SimpleWorker default` (RQ runs one job at a time)
  huey      `huey_consumer huey_app.huey -w 10 -k thread`
  arq       `arq arq_app.WorkerSettings` (max_jobs 10; polls its queue every 0.5 s)

Logging is each system's default. The enqueue phase leaves its n jobs queued and the
drain takes those, which saves a second slow push per run; the latency phase is the
same as Sidekiq's (200 jobs 10 ms apart to an idle worker, recording now - sent).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis
from common import (
    BENCH_DIR,
    ListProbe,
    Metrics,
    Probe,
    RedisServer,
    measure_drain,
    measure_latency,
    run_json,
    wait_for,
    worker_process,
)

VENVS = BENCH_DIR / ".venvs"
APPS = BENCH_DIR / "peer_apps"
INSTALL_TIMEOUT = 600.0  # seconds for one venv's pip install


@dataclass(frozen=True)
class PeerSpec:
    """How to install, run and watch one peer."""

    name: str
    label: str  # as printed in the table
    requirements: tuple[str, ...]
    app: str  # module in bench/peer_apps
    worker: str  # command line; its first word is run from the venv's bin/
    probe: Callable[[redis.Redis], Probe]
    ready: Callable[[redis.Redis], bool] = field(default=lambda r: True)
    ready_grace: float = 1.0  # seconds after `ready` before the worker is surely consuming


PEERS: dict[str, PeerSpec] = {
    spec.name: spec
    for spec in (
        PeerSpec(
            name="dramatiq",
            label="dramatiq-2.2",
            requirements=("dramatiq[redis]==2.2.1", "redis[hiredis]==8.1.0"),
            app="dramatiq_app",
            worker="dramatiq dramatiq_app -p 1 -t 10 -Q default",
            # Ids wait in the list; payloads in the .msgs hash until acked.
            probe=lambda r: ListProbe(
                r,
                "dramatiq:default",
                inflight=[("hlen", "dramatiq:default.msgs")],
                subtract_queue=True,
            ),
            ready=lambda r: r.zcard("dramatiq:__heartbeats__") > 0,
        ),
        PeerSpec(
            name="celery",
            label="celery-5.7",
            requirements=("celery[redis]==5.7.0", "redis[hiredis]==8.1.0"),
            app="celery_app",
            worker="celery -A celery_app worker -P threads -c 10 -Q default",
            # kombu keeps delivered, not yet acked messages in the "unacked" hash.
            probe=lambda r: ListProbe(r, "default", inflight=[("hlen", "unacked")]),
            ready=lambda r: r.exists("_kombu.binding.default") > 0,
            ready_grace=3.0,  # mingle and gossip run after the binding is declared
        ),
        PeerSpec(
            name="rq",
            label="rq-2.12",
            requirements=("rq==2.12.0", "redis[hiredis]==8.1.0"),
            app="rq_app",
            worker="rq worker -w rq.worker.SimpleWorker default",
            probe=lambda r: ListProbe(
                r,
                "rq:queue:default",
                inflight=[("llen", "rq:queue:default:intermediate")],
            ),
            ready=lambda r: r.scard("rq:workers") > 0,
        ),
        PeerSpec(
            name="huey",
            label="huey-3.5",
            requirements=("huey==3.5.4", "redis[hiredis]==8.1.0"),
            app="huey_app",
            worker="huey_consumer huey_app.huey -w 10 -k thread",
            probe=lambda r: ListProbe(r, "huey.redis.bench"),
            ready_grace=2.0,  # no trace in Redis until the first blocking pop
        ),
        PeerSpec(
            name="arq",
            label="arq-0.28",
            requirements=("arq==0.28.0", "hiredis"),
            app="arq_app",
            worker="arq arq_app.WorkerSettings",
            probe=lambda r: ListProbe(r, "arq:queue", command="zcard"),
            ready_grace=2.0,
        ),
    )
}


def ensure_venv(spec: PeerSpec) -> Path:
    """bench/.venvs/<name> with spec.requirements installed; built once, reused after."""
    venv = VENVS / spec.name
    marker = venv / "bench-requirements.json"
    wanted = json.dumps(sorted(spec.requirements))
    python = venv / "bin" / "python"
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return venv
    print(f"[{spec.name}] creating {venv} ({', '.join(spec.requirements)})", flush=True)
    VENVS.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=120)
    proc = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         *spec.requirements],
        capture_output=True, text=True, timeout=INSTALL_TIMEOUT,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(
            f"pip install for {spec.name} failed ({proc.returncode}): {proc.stderr[-1500:]}"
        )
    marker.write_text(wanted)
    return venv


class PeerSystem:
    """One Python peer, driven through its own CLI worker and client."""

    def __init__(
        self,
        spec: PeerSpec,
        server: RedisServer,
        *,
        log_path: Path,
        drain_timeout: float = 60.0,
        client_url: str | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.label
        self.server = server
        self.redis = server.client()
        self.log_path = log_path
        self.drain_timeout = drain_timeout
        self.venv = ensure_venv(spec)
        self.env = {
            "PATH": f"{self.venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": os.environ.get("HOME", "/tmp"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "BENCH_REDIS_URL": client_url or server.url,
            "PYTHONPATH": str(APPS),
            "VIRTUAL_ENV": str(self.venv),
        }
        self.workdir = Path(tempfile.gettempdir()) / "kiq-bench" / f"{spec.name}-cwd"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._left_queued = 0  # jobs the enqueue phase left for the drain

    # -- System protocol ---------------------------------------------------------------------

    def enqueue(self, n: int) -> Metrics:
        self.redis.flushdb()
        out = self._client("enqueue", str(n))
        queued, _ = self.spec.probe(self.redis)()
        expected = n + int(out.get("extra", 0))
        if queued != expected:
            raise RuntimeError(f"{queued} jobs queued after enqueue, expected {expected}")
        self._left_queued = queued
        seconds = float(out["seconds"])
        return {"enqueue_s": seconds, "enqueue_per_s": n / seconds}

    def drain(self, n: int) -> Metrics:
        probe = self.spec.probe(self.redis)
        if self._left_queued and probe()[0] == self._left_queued:
            n = self._left_queued  # n + the warm-up job, already queued
        else:
            self.redis.flushdb()
            self._client("fill", str(n))
            if probe()[0] != n:
                raise RuntimeError(f"fill left {probe()[0]} jobs, expected {n}")
        self._left_queued = 0
        with self.worker() as worker:
            metrics = measure_drain(
                worker, stats_client=self.redis, n=n, probe=probe, timeout=self.drain_timeout
            )
        self.redis.flushdb()
        return metrics

    def latency(self, count: int, interval: float) -> Metrics:
        self.redis.flushdb()
        with self.worker() as worker:
            self.wait_until_ready(worker)
            metrics = measure_latency(
                self.redis,
                worker.pid,
                lambda jobs, every, key: self._client("latency", str(jobs), str(every), key),
                count,
                interval,
                timeout=60,
            )
        self.redis.flushdb()
        return metrics

    def describe(self) -> dict[str, str]:
        freeze = subprocess.run(
            [str(self.venv / "bin" / "python"), "-m", "pip", "freeze", "--quiet"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        wanted = {r.split("[")[0].split("=")[0].lower() for r in self.spec.requirements}
        versions = [
            line for line in freeze.stdout.splitlines() if line.split("=")[0].lower() in wanted
        ]
        return {
            "versions": " ".join(versions),
            "command": self.spec.worker,
            "log": str(self.log_path),
        }

    # -- helpers -----------------------------------------------------------------------------

    def wait_until_ready(self, worker: subprocess.Popen[bytes]) -> None:
        def ready() -> bool:
            if worker.poll() is not None:
                raise RuntimeError(f"{self.name} worker exited at boot; see {self.log_path}")
            return self.spec.ready(self.redis)

        wait_for(ready, timeout=30, what=f"{self.name} worker boot")
        time.sleep(self.spec.ready_grace)

    def worker(self) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
        program, *rest = self.spec.worker.split()
        argv = [str(self.venv / "bin" / program), *rest]
        if self.spec.name == "rq":
            argv += ["-u", self.env["BENCH_REDIS_URL"]]
        return worker_process(
            argv, env=dict(self.env), log_path=self.log_path, cwd=APPS, stop_timeout=15
        )

    def _client(self, *argv: str) -> dict[str, float | int | str]:
        return run_json(
            [str(self.venv / "bin" / "python"), str(APPS / f"{self.spec.app}.py"), *argv],
            env=self.env,
            cwd=self.workdir,
            timeout=600,
            what=f"{self.spec.app} {argv[0]}",
        )
