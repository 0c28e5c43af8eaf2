"""kiq as a benchmarked system, measured exactly as Sidekiq is (bench/sidekiq_bench.py).

enqueue   `Noop.perform_async(i)` n times, one call per job; then `Noop.perform_bulk`
          of n jobs; then `await Noop.aperform_async(i)` n times (the AsyncClient), each
          timed inside a client process of its own (bench/kiq_jobs.py)
drain     n Noop jobs pushed in bulk, then `kiq worker -r bench/kiq_jobs.py -c 10 -q
          default` with default logging (INFO start/done lines to a file); timed from
          the first job taken to (a) the queue staying empty, the moment every peer is
          timed to, and (b) the last job acknowledged: the queue and every
          ``kiq|inprogress|*`` list empty (at-least-once: a taken job stays in Redis
          until its ack)
latency   an idle worker; 200 `Latency.perform_async(time.time())` 10 ms apart
mix       n `Sleep(0.001)` (thread) or `AsyncSleep(0.001)` (`async def`) jobs; jobs/s
          and the most jobs seen running at once
profile   py-spy attached to a worker while it drains (`--profile` in bench/run.py)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis
from common import (
    BENCH_DIR,
    Metrics,
    RedisServer,
    measure_drain,
    measure_latency,
    run_json,
    tree_rss_kb,
    wait_for,
    worker_process,
)

JOBS_FILE = BENCH_DIR / "kiq_jobs.py"
QUEUE = "default"
PEAK_KEY = "bench:peak"  # kiq_jobs.ReportPeak


class KiqProbe:
    """LLEN queue:default, plus every in-progress list of every registered kiq process."""

    def __init__(self, client: redis.Redis, queue: str = QUEUE) -> None:
        self.client = client
        self.queue = queue
        self.commands: Counter[str] = Counter()

    def __call__(self) -> tuple[int, int]:
        pipe = self.client.pipeline(transaction=False)
        pipe.llen(f"queue:{self.queue}")
        pipe.hkeys("kiq|fetchers")
        queued, identities = pipe.execute()
        self.commands.update({"llen": 1, "hkeys": 1})
        if not identities:
            return int(queued), 0
        pipe = self.client.pipeline(transaction=False)
        for identity in identities:
            pipe.llen(f"kiq|inprogress|{identity}|{self.queue}")
        inflight = sum(int(n) for n in pipe.execute())
        self.commands["llen"] += len(identities)
        return int(queued), inflight


class KiqSystem:
    """kiq driven through its CLI (`kiq worker`) and its own clients."""

    def __init__(
        self,
        server: RedisServer,
        *,
        concurrency: int = 10,
        log_path: Path,
        drain_timeout: float = 90.0,
        client_url: str | None = None,
        processes: int = 1,
        name: str = "kiq",
        log_level: str | None = None,
    ) -> None:
        self.name = name
        self.log_level = log_level  # "error": no per-job start/done lines (--log-level)
        self.server = server
        self.redis = server.client()  # the bench's own: flush, poll, INFO (never delayed)
        self.concurrency = concurrency
        self.processes = processes
        self.log_path = log_path
        self.drain_timeout = drain_timeout
        self.workdir = Path(tempfile.gettempdir()) / "kiq-bench" / "kiq-cwd"  # no config/*.yml
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "KIQ_REDIS_URL": client_url or server.url}
        for leak in ("REDIS_URL", "REDIS_PROVIDER", "KIQ_CONCURRENCY", "RAILS_MAX_THREADS"):
            self.env.pop(leak, None)
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(BENCH_DIR), os.environ.get("PYTHONPATH", "")) if p
        )

    # -- System protocol ---------------------------------------------------------------------

    def enqueue(self, n: int) -> Metrics:
        metrics: Metrics = {}
        for command, key in (
            ("enqueue", "enqueue"),
            ("bulk", "bulk"),
            ("aenqueue", "async_enqueue"),
        ):
            self.redis.flushdb()
            out = self._client(command, str(n))
            expected = n + int(out.get("extra", 0))
            queued = self.redis.llen(f"queue:{QUEUE}")
            if queued != expected:
                raise RuntimeError(
                    f"{command}: {queued} jobs in queue:{QUEUE}, expected {expected}"
                )
            seconds = float(out["seconds"])
            metrics[f"{key}_s"] = seconds
            metrics[f"{key}_per_s"] = n / seconds
        self.redis.flushdb()
        return metrics

    def drain(self, n: int) -> Metrics:
        return self.drain_jobs(n)

    def drain_jobs(
        self, n: int, job: str = "bench.Noop", args: list[object] | None = None
    ) -> Metrics:
        """Push n `job` jobs, start a worker, time the drain; report the peak concurrency."""
        self.redis.flushdb()
        self._client("fill", job, str(n), *(json.dumps(a) for a in args or []))
        queued = self.redis.llen(f"queue:{QUEUE}")
        if queued != n:
            raise RuntimeError(f"fill left {queued} jobs, expected {n}")
        with self.worker() as worker:
            metrics = measure_drain(
                worker,
                stats_client=self.redis,
                n=n,
                probe=KiqProbe(self.redis),
                timeout=self.drain_timeout,
            )
            if job != "bench.Noop":
                metrics["peak_running"] = self._peak()
        self.redis.flushdb()
        return metrics

    def latency(self, count: int, interval: float) -> Metrics:
        self.redis.flushdb()
        with self.worker() as worker:
            self.wait_until_ready()
            metrics = measure_latency(
                self.redis,
                worker.pid,
                lambda jobs, every, key: self._client("latency", str(jobs), str(every), key),
                count,
                interval,
            )
        self.redis.flushdb()
        return metrics

    def describe(self) -> dict[str, str]:
        import kiq

        return {
            "kiq": kiq.__version__,
            "python": sys.version.split()[0],
            "command": " ".join(self._worker_argv()),
            "log": str(self.log_path),
        }

    # -- extras ------------------------------------------------------------------------------

    def profile(self, n: int, out_path: Path, rate: int = 250) -> Metrics:
        """Drain n jobs under `py-spy record --gil --nonblocking`; see summarize_profile.

        --gil: only the thread holding the GIL is sampled, i.e. where Python CPU goes.
        --nonblocking: the worker is not stopped per sample; stopping it (ptrace) lands
        samples on syscall boundaries and, with --native, made os.getpid (~0.3 µs)
        look like a fifth of the profile.
        """
        py_spy = shutil.which("py-spy")
        if py_spy is None:
            raise RuntimeError("py-spy not found: pip install py-spy")
        self.redis.flushdb()
        with self.worker() as worker:
            self.wait_until_ready()
            spy = subprocess.Popen(
                [py_spy, "record", "-p", str(worker.pid), "-f", "raw", "-r", str(rate),
                 "-o", str(out_path), "--gil", "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            try:
                time.sleep(1.5)  # py-spy attaches and starts sampling
                self._client("fill", "bench.Noop", str(n))
                probe = KiqProbe(self.redis)
                wait_for(lambda: sum(probe()) == 0, timeout=self.drain_timeout, what="drain")
            finally:
                spy.send_signal(signal.SIGINT)  # py-spy writes the file on SIGINT
                try:
                    _, err = spy.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    _, err = spy.communicate()
            if not out_path.exists():
                raise RuntimeError(f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}")
        self.redis.flushdb()
        return {"profile_jobs": n}

    def soak(
        self,
        n: int,
        *,
        time_limit: float,
        every: float = 2.0,
        batch: int = 100_000,
    ) -> tuple[list[tuple[int, float]], Metrics]:
        """Drain n jobs fed in batches; sample (jobs done, worker RSS MiB) every few seconds.

        The queue is kept topped up (at most two batches waiting), so Redis memory stays
        small and the worker never idles; the soak stops at n jobs or time_limit seconds.
        """
        self.redis.flushdb()
        curve: list[tuple[int, float]] = []
        pushed = done = 0  # pushed: by finished fills only
        started = time.monotonic()
        probe = KiqProbe(self.redis)
        filling: tuple[subprocess.Popen[bytes], int] | None = None
        with self.worker() as worker:
            self.wait_until_ready()
            next_sample = time.monotonic()
            while done < n and time.monotonic() - started < time_limit:
                if worker.poll() is not None:
                    raise RuntimeError(f"worker exited after {done} jobs")
                if filling is not None and filling[0].poll() is not None:
                    if filling[0].returncode != 0:
                        raise RuntimeError(f"fill failed with exit code {filling[0].returncode}")
                    pushed += filling[1]
                    filling = None
                queued, inflight = probe()
                if filling is None:  # mid-fill, "pushed" is not known exactly
                    done = pushed - queued - inflight
                    if time.monotonic() >= next_sample:
                        curve.append((done, tree_rss_kb(worker.pid) / 1024))
                        next_sample += every
                    if queued < batch and pushed < n:
                        size = min(batch, n - pushed)
                        # In the background: the worker keeps draining while we push.
                        process = subprocess.Popen(
                            [sys.executable, str(JOBS_FILE), "fill", "bench.Noop", str(size)],
                            env=self.env, cwd=self.workdir, stdout=subprocess.DEVNULL,
                        )  # fmt: skip
                        filling = (process, size)
                time.sleep(0.05)
            if filling is not None:
                filling[0].wait(timeout=60)
            curve.append((done, tree_rss_kb(worker.pid) / 1024))
        elapsed = time.monotonic() - started
        self.redis.flushdb()
        rss = [mb for _, mb in curve]
        tail = rss[len(rss) // 4 :] or rss  # after warm-up
        return curve, {
            "soak_jobs": float(curve[-1][0]),
            "soak_s": elapsed,
            "soak_rss_first_mb": rss[0],
            "soak_rss_max_mb": max(rss),
            "soak_rss_last_mb": rss[-1],
            "soak_rss_growth_after_warmup_mb": tail[-1] - tail[0],
        }

    # -- helpers -----------------------------------------------------------------------------

    def _worker_argv(self) -> list[str]:
        kiq_cli = shutil.which("kiq")
        base = [kiq_cli] if kiq_cli else [sys.executable, "-m", "kiq.cli"]
        argv = [*base, "worker", "-r", str(JOBS_FILE), "-c", str(self.concurrency), "-q", QUEUE]
        if self.processes > 1:
            argv += ["--processes", str(self.processes)]
        if self.log_level:
            argv += ["--log-level", self.log_level]
        return argv

    def worker(self) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
        return worker_process(
            self._worker_argv(), env=self.env, log_path=self.log_path, cwd=self.workdir
        )

    def wait_until_ready(self) -> None:
        """Every process has registered its in-progress lists (done just before fetching)."""
        wait_for(
            lambda: self.redis.hlen("kiq|fetchers") >= self.processes,
            timeout=30,
            what="kiq worker boot",
        )
        time.sleep(0.2)  # the fetcher thread starts right after registration

    def _peak(self) -> float:
        self.redis.delete(PEAK_KEY)
        self._client("fill", "bench.ReportPeak", "1")
        wait_for(lambda: self.redis.llen(PEAK_KEY) > 0, timeout=10, what="peak report")
        return float(str(self.redis.lpop(PEAK_KEY) or 0))

    def _client(self, *argv: str) -> dict[str, float | int | str]:
        return run_json(
            [sys.executable, str(JOBS_FILE), *argv],
            env=self.env,
            cwd=self.workdir,
            timeout=300,
            what=f"kiq_jobs.py {argv[0]}",
        )


def summarize_profile(raw_path: Path, top: int = 15) -> dict[str, list[dict[str, Any]]]:
    """Top self-time functions of a `py-spy record --gil -f raw` file.

    Each line is ``frame;frame;...;leaf count`` (folded stacks), root first. Samples are
    taken only from the thread holding the GIL, so they show where the worker's Python
    CPU goes, not threads waiting on a queue. Two views:

      python  self time per Python function (line numbers dropped; native frames, if
              recorded with --native, are charged to the Python function calling them)
      native  self time per leaf frame (per line; native frames included if recorded)
    """
    python: Counter[str] = Counter()
    native: Counter[str] = Counter()
    total = 0
    for line in raw_path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        samples = int(count)
        total += samples
        native[frames[-1]] += samples
        own = next((f for f in reversed(frames) if ".py:" in f), frames[-1])
        python[_function(own)] += samples

    def rows(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": name, "samples": n, "share": n / total}
            for name, n in counter.most_common(top)
        ]

    return {"python": rows(python), "line": rows(native), "total_samples": [{"n": total}]}


def _function(frame: str) -> str:
    """'f (logging/__init__.py:360)' -> 'f (logging/__init__.py)': one row per function."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0].rstrip(')')})" if where else name
