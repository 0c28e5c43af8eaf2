"""Shared plumbing for the benchmarks in bench/: systems, Redis, polling, /proc sampling.

A *system* is one job engine under test (Ruby Sidekiq, kiq, a Python peer). Each implements
the small `System` protocol below; `run()` drives any number of them through the same three
measurements and `report()` prints one table and writes one JSON file, so numbers from
different systems are always taken the same way:

  enqueue(n)  client-side push rate, one call per job, timed inside the client's own process
  drain(n)    n no-op jobs pushed in bulk, then one worker process started; time from the
              queue first shrinking to it staying empty (LLEN polled every 5 ms), plus the
              worker's CPU µs/job (utime+stime from /proc) and RSS after the drain
  latency()   an idle worker; jobs carrying their send time, sent 10 ms apart; the job
              records (now - sent); p50/p99 in ms, plus the worker's idle RSS

`measure_drain` is the drain measurement every system's drain() uses: it polls a `Probe`
(queued and, where the system keeps them in Redis, taken-but-unacknowledged jobs), samples
the worker's whole process tree and redis-server from /proc, and takes `INFO commandstats`
deltas minus the bench's own polling commands, so "Redis commands per job" counts only the
system under test.

Example::

    with RedisServer.private(port=6390) as server:
        results = run([SidekiqSystem(server.url)], n=20_000)
    report(results, json_path="out.json")
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import redis

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent

LATENCY_KEY = "bench:latency"  # the list latency jobs push (now - sent) onto
POLL_INTERVAL = 0.005  # seconds between LLEN polls: 5 ms, fine enough for multi-second drains
CLK_TCK = os.sysconf("SC_CLK_TCK")  # /proc/<pid>/stat times are in these ticks (usually 100/s)


# -- systems ---------------------------------------------------------------------------------


Metrics = dict[str, float]


class System(Protocol):
    """One job engine under test. Every method leaves the Redis database empty behind it."""

    name: str

    def enqueue(self, n: int) -> Metrics:
        """Push n jobs one call at a time; return at least enqueue_s and enqueue_per_s."""
        ...

    def drain(self, n: int) -> Metrics:
        """Drain n pre-pushed no-op jobs; return drain_s, drain_per_s, cpu_us_per_job."""
        ...

    def latency(self, count: int, interval: float) -> Metrics:
        """Send count jobs interval s apart to an idle worker; return p50/p99 ms, idle RSS."""
        ...


# Row order and labels of the printed table; systems may return extra keys (kept in JSON).
COLUMNS: list[tuple[str, str, str]] = [
    ("enqueue_per_s", "enqueue, jobs/s (one call per job)", "{:,.0f}"),
    ("bulk_per_s", "bulk push, jobs/s", "{:,.0f}"),
    ("async_enqueue_per_s", "asyncio enqueue, jobs/s", "{:,.0f}"),
    ("drain_per_s", "drain, jobs/s (to queue empty)", "{:,.0f}"),
    ("drain_acked_per_s", "drain, jobs/s (to last ack)", "{:,.0f}"),
    ("drain_s", "drain, s", "{:.2f}"),
    ("cpu_us_per_job", "worker CPU, µs/job", "{:.1f}"),
    ("redis_cpu_us_per_job", "redis-server CPU during drain, µs/job", "{:.1f}"),
    ("redis_cmds_per_job", "Redis commands/job during drain", "{:.2f}"),
    ("latency_p50_ms", "latency p50, ms", "{:.2f}"),
    ("latency_p99_ms", "latency p99, ms", "{:.2f}"),
    ("idle_rss_kb", "worker idle RSS, MiB", "kib_to_mib"),
    ("rss_after_drain_kb", "worker RSS after drain, MiB", "kib_to_mib"),
]


@dataclass
class Result:
    system: str
    n: int
    metrics: Metrics = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)  # versions, command line, log path


def run(
    systems: Sequence[System],
    *,
    n: int,
    latency_count: int = 200,
    latency_interval: float = 0.010,
    phases: Sequence[str] = ("enqueue", "drain", "latency"),
) -> list[Result]:
    """Run each phase for each system; a failing phase is recorded, not fatal."""
    results = []
    for system in systems:
        result = Result(system.name, n)
        steps: dict[str, Callable[[], Metrics]] = {
            "enqueue": functools.partial(system.enqueue, n),
            "drain": functools.partial(system.drain, n),
            "latency": functools.partial(system.latency, latency_count, latency_interval),
        }
        for phase in phases:
            started = time.monotonic()
            print(f"[{system.name}] {phase} ...", flush=True)
            try:
                result.metrics.update(steps[phase]())
            except Exception as exc:  # report the phase as failed, keep benchmarking
                result.errors.append(f"{phase}: {type(exc).__name__}: {exc}")
                print(f"[{system.name}] {phase} FAILED: {exc}", flush=True)
            print(f"[{system.name}] {phase} took {time.monotonic() - started:.1f}s", flush=True)
        results.append(result)
    return results


def _format(value: float | None, fmt: str) -> str:
    if value is None:
        return "-"
    if fmt == "kib_to_mib":
        return f"{value / 1024:.1f}"
    return fmt.format(value)


def report(results: Sequence[Result], *, json_path: str | None = None) -> None:
    """Print a metrics x systems table; optionally write everything as JSON."""
    label_width = max(len(label) for _, label, _ in COLUMNS)
    widths = [max(12, len(r.system)) for r in results]
    header = (
        " " * label_width
        + "  "
        + "  ".join(r.system.rjust(w) for r, w in zip(results, widths, strict=True))
    )
    print()
    print(header)
    print("-" * len(header))
    for key, label, fmt in COLUMNS:
        cells = [
            _format(r.metrics.get(key), fmt).rjust(w) for r, w in zip(results, widths, strict=True)
        ]
        print(label.ljust(label_width) + "  " + "  ".join(cells))
    for r in results:
        for error in r.errors:
            print(f"!! {r.system}: {error}")
    if json_path:
        document = {
            "host": host_info(),
            "results": [
                {
                    "system": r.system,
                    "n": r.n,
                    "meta": r.meta,
                    "metrics": r.metrics,
                    "errors": r.errors,
                }
                for r in results
            ],
        }
        Path(json_path).write_text(json.dumps(document, indent=2) + "\n")
        print(f"\nwrote {json_path}")


def host_info() -> dict[str, object]:
    """What the numbers depend on: CPU, cores, kernel, interpreter versions."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg": os.getloadavg(),  # other work on the box skews everything
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# -- Redis -----------------------------------------------------------------------------------


class RedisServer:
    """A throwaway redis-server child process: no persistence, private working directory.

    Example::

        with RedisServer.private(port=6390) as server:
            client = server.client()
    """

    def __init__(self, url: str, process: subprocess.Popen[bytes] | None = None) -> None:
        self.url = url
        self.process = process

    @property
    def pid(self) -> int | None:
        """The server's pid when we started it (so its CPU can be sampled), else None."""
        return self.process.pid if self.process else None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)

    @classmethod
    @contextlib.contextmanager
    def private(cls, port: int = 6390, db: int = 0) -> Iterator[RedisServer]:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: apt-get install redis-server")
        workdir = tempfile.mkdtemp(prefix="bench-redis-")
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", workdir, "--logfile", ""],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        server = cls(f"redis://127.0.0.1:{port}/{db}", process)
        try:
            wait_for_ping(server.url)
            yield server
        finally:
            stop_process(process)
            shutil.rmtree(workdir, ignore_errors=True)

    @classmethod
    @contextlib.contextmanager
    def external(cls, url: str) -> Iterator[RedisServer]:
        """Use a server someone else runs; its database is flushed before and after."""
        server = cls(url)
        server.client().flushdb()
        try:
            yield server
        finally:
            server.client().flushdb()


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.2).ping())
    except redis.ConnectionError:
        return False


def wait_for_ping(url: str, timeout: float = 10.0) -> None:
    """Wait until the Redis at url answers PING (a server or proxy just started)."""
    wait_for(lambda: _pings(url), timeout=timeout, what=f"Redis at {url} to answer")


def stop_process(
    process: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, timeout: float = 10.0
) -> None:
    """Send sig, give the process timeout seconds to exit, then SIGKILL it; reap it."""
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_for(
    condition: Callable[[], object],
    *,
    timeout: float,
    interval: float = 0.01,
    what: str = "condition",
) -> None:
    """Poll condition until it returns something truthy; TimeoutError after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# -- /proc sampling --------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Field 2 (comm) may contain spaces; everything after the closing paren is space-split.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLK_TCK


def rss_kb(pid: int) -> int:
    """Resident set size in KiB (VmRSS from /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) by linear interpolation, as numpy's default."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_metrics(seconds: Sequence[float]) -> Metrics:
    ms = [s * 1000 for s in seconds]
    return {
        "latency_samples": len(ms),
        "latency_p50_ms": percentile(ms, 50),
        "latency_p99_ms": percentile(ms, 99),
        "latency_mean_ms": statistics.fmean(ms),
        "latency_max_ms": max(ms),
    }


# -- worker processes ------------------------------------------------------------------------


@contextlib.contextmanager
def worker_process(
    argv: Sequence[str],
    *,
    env: dict[str, str],
    log_path: Path,
    cwd: str | Path | None = None,
    stop_signal: int = signal.SIGTERM,
    stop_timeout: float = 30.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a worker with stdout+stderr appended to log_path, as a normal deployment logs.

    A ``# HH:MM:SS <command>`` line marks where its output starts. On exit it is sent
    stop_signal and given stop_timeout seconds before SIGKILL.
    """
    with log_path.open("a") as log:
        log.write(f"\n# {time.strftime('%H:%M:%S')} {' '.join(argv)}\n")
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            list(argv), env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            yield process
        finally:
            stop_process(process, sig=stop_signal, timeout=stop_timeout)


def run_json(
    argv: Sequence[str], *, env: dict[str, str], cwd: str | Path, timeout: float, what: str
) -> dict[str, float | int | str]:
    """Run a bench client to completion; its last stdout line is a JSON object of results."""
    proc = subprocess.run(
        list(argv), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    result: dict[str, float | int | str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def measure_latency(
    client: redis.Redis,
    worker_pid: int,
    send: Callable[[int, float, str], object],
    count: int,
    interval: float,
    *,
    timeout: float = 30.0,
) -> Metrics:
    """The latency phase every system runs, on a worker that is up and consuming.

    ``send(count, interval, key)`` sends count jobs interval seconds apart, each
    recording (now - sent) in seconds onto the list ``key``. Ten warm-up jobs go first
    (the first jobs pay for lazy loading), then the worker idles a second before its
    RSS is taken and the measured jobs are sent.
    """
    send(10, 0.005, "warm")
    wait_for(lambda: client.llen("warm") >= 10, timeout=30, what="warm-up jobs")
    time.sleep(1.0)
    idle_rss = tree_rss_kb(worker_pid)
    send(count, interval, LATENCY_KEY)
    wait_for(
        lambda: client.llen(LATENCY_KEY) >= count,
        timeout=timeout,
        what=f"{count} latency samples",
    )
    samples = [float(v) for v in client.lrange(LATENCY_KEY, 0, -1)]
    return {**latency_metrics(samples), "idle_rss_kb": idle_rss}


# -- process trees ---------------------------------------------------------------------------


def tree_pids(root: int) -> list[int]:
    """root and all its descendants (Dramatiq, Celery and `kiq --processes` fork children)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def tree_cpu_seconds(root: int) -> float:
    """utime + stime summed over the live process tree under root."""
    total = 0.0
    for pid in tree_pids(root):
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


def tree_rss_kb(root: int) -> int:
    """VmRSS summed over the process tree (shared pages count once per process)."""
    total = 0
    for pid in tree_pids(root):
        with contextlib.suppress(OSError, RuntimeError):
            total += rss_kb(pid)
    return total


# -- Redis command accounting ----------------------------------------------------------------


def command_calls(client: redis.Redis) -> Counter[str]:
    """Calls per command since the server started (INFO commandstats), lower-case names.

    Commands a Lua script runs count too (EVALSHA 1 + its RPOP, LPUSH, ...): this is the
    work Redis does, not the number of round trips.
    """
    stats = client.info("commandstats")
    return Counter(
        {
            name.removeprefix("cmdstat_").lower(): int(value["calls"])
            for name, value in stats.items()
            if isinstance(value, dict)
        }
    )


def redis_cpu_seconds(client: redis.Redis) -> float:
    """used_cpu_sys + used_cpu_user from INFO cpu: microsecond resolution, where /proc's
    clock ticks (10 ms) would round a short drain's Redis time to zero."""
    cpu = client.info("cpu")
    return float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


# -- drains that know about in-flight jobs ---------------------------------------------------


class Probe(Protocol):
    """One poll of a system's queue: (jobs still queued, jobs taken but not acknowledged).

    ``commands`` counts every Redis command the probe itself sent, so they can be taken
    out of the commandstats delta. Systems that keep no in-flight record return 0.
    """

    commands: Counter[str]

    def __call__(self) -> tuple[int, int]: ...


class ListProbe:
    """LLEN of a list queue (Sidekiq, Celery, RQ, Huey), optionally plus in-flight keys.

    ``inflight`` lists (command, key) pairs summed as in-flight, e.g. ("hlen", "unacked").
    ``subtract_queue`` is for Dramatiq, whose .msgs hash holds queued and in-flight alike.
    """

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        *,
        command: str = "llen",
        inflight: Sequence[tuple[str, str]] = (),
        subtract_queue: bool = False,
    ) -> None:
        self.client = client
        self.key = key
        self.command = command
        self.inflight = list(inflight)
        self.subtract_queue = subtract_queue
        self.commands: Counter[str] = Counter()

    def __call__(self) -> tuple[int, int]:
        pipe = self.client.pipeline(transaction=False)
        pipe.execute_command(self.command.upper(), self.key)  # type: ignore[no-untyped-call]
        for command, key in self.inflight:
            pipe.execute_command(command.upper(), key)  # type: ignore[no-untyped-call]
        replies = [int(r) for r in pipe.execute()]
        self.commands[self.command] += 1
        for command, _ in self.inflight:
            self.commands[command] += 1
        queued, inflight = replies[0], sum(replies[1:])
        if self.subtract_queue:
            inflight -= queued
        return queued, max(inflight, 0)


@dataclass(frozen=True)
class DrainWindow:
    started: float  # monotonic: first poll that saw fewer than n jobs queued
    emptied: float  # first poll that saw the queue empty (and it stayed empty)
    finished: float  # first poll that saw queue and in-flight both empty (and they stayed)
    done: int  # jobs drained (n unless the drain timed out)
    partial: bool  # True: timed out; rates are over the part that was done


def watch_drain(
    probe: Probe,
    n: int,
    *,
    timeout: float,
    on_start: Callable[[], None] | None = None,
    alive: Callable[[], bool] | None = None,
    settle_polls: int = 3,
    start_timeout: float = 60.0,
) -> DrainWindow:
    """Poll every 5 ms from the first job taken until nothing is queued or in flight.

    A finish only counts once `settle_polls` more polls agree that nothing is queued or
    in flight; the finish time is the first of them. After `timeout` seconds from the
    start the drain is cut short and reported as partial, so one slow system cannot eat
    the run.
    """
    begin = time.monotonic()
    started = _wait_for_first_take(probe, n, begin + start_timeout, alive)
    if on_start:
        on_start()
    emptied: float | None = None
    finished: float | None = None
    zeros = 0
    while True:
        queued, inflight = probe()
        now = time.monotonic()
        emptied = (emptied or now) if queued == 0 else None
        if queued == 0 and inflight == 0:
            finished = finished or now
            zeros += 1
            if zeros > settle_polls:
                return DrainWindow(started, emptied or finished, finished, n, False)
        else:
            finished, zeros = None, 0
        if now - started > timeout:
            done = n - queued - inflight
            if done <= 0:
                raise TimeoutError(f"{queued} queued, {inflight} in flight after {timeout}s")
            return DrainWindow(started, now, now, done, True)
        if alive is not None and not alive():
            raise RuntimeError(f"worker exited with {queued} jobs queued, {inflight} in flight")
        time.sleep(POLL_INTERVAL)


def _wait_for_first_take(
    probe: Probe, n: int, deadline: float, alive: Callable[[], bool] | None
) -> float:
    while True:
        queued, _ = probe()
        now = time.monotonic()
        if queued < n:
            return now
        if now > deadline:
            raise TimeoutError("the worker took no job before the start deadline")
        if alive is not None and not alive():
            raise RuntimeError("worker exited before taking a job")
        time.sleep(POLL_INTERVAL)


def measure_drain(
    worker: subprocess.Popen[bytes],
    *,
    stats_client: redis.Redis,
    n: int,
    probe: Probe,
    timeout: float,
) -> Metrics:
    """The drain metrics every system reports, taken the same way for all of them.

    worker is the running worker process (its tree is sampled; its exit fails the drain).

    drain_per_s uses the moment the queue stayed empty (what every peer can show);
    drain_acked_per_s the moment nothing was in flight either, for systems whose
    in-flight jobs are visible in Redis (kiq, Dramatiq, Celery, RQ).
    """
    samples: dict[str, float] = {}
    calls: dict[str, Counter[str]] = {}

    def sample_start() -> None:
        samples["cpu0"] = tree_cpu_seconds(worker_pid)
        samples["redis0"] = redis_cpu_seconds(stats_client)
        calls["start"] = command_calls(stats_client)
        probe.commands.clear()

    worker_pid = worker.pid
    window = watch_drain(
        probe, n, timeout=timeout, on_start=sample_start, alive=lambda: worker.poll() is None
    )
    cpu = tree_cpu_seconds(worker_pid) - samples["cpu0"]
    redis_cpu = redis_cpu_seconds(stats_client) - samples["redis0"]
    delta = command_calls(stats_client) - calls["start"]
    delta.pop("info", None)  # ours (the second snapshot's INFO counts the first)
    delta -= probe.commands  # Counter subtraction drops counts that reach zero
    done = window.done
    seconds = window.emptied - window.started
    acked = window.finished - window.started
    metrics: Metrics = {
        "drain_s": seconds,
        "drain_per_s": done / seconds if seconds > 0 else math.nan,
        "drain_acked_s": acked,
        "drain_acked_per_s": done / acked if acked > 0 else math.nan,
        "cpu_us_per_job": cpu / done * 1e6,
        "redis_cmds_per_job": sum(delta.values()) / done,
        "rss_after_drain_kb": tree_rss_kb(worker_pid),
        "drain_jobs": done,
    }
    if window.partial:
        metrics["drain_partial"] = 1.0
    metrics["redis_cpu_us_per_job"] = redis_cpu / done * 1e6
    metrics["redis_cpu_pct"] = 100 * redis_cpu / max(acked, 1e-9)
    for name, count in delta.most_common(8):
        metrics[f"redis_cmd_{name}_per_job"] = count / done
    return metrics
