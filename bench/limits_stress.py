"""Limiters at full size (issue 16's proof; tests/test_limits.py runs bounded sizes in CI).

  concurrent  a concurrent limiter of 5 across 4 ``kiq worker`` processes x 10 slots,
              20,000 jobs of JOB_TIME holding it (tests/support/limit_jobs.py): the most
              spans open at once (must be 5, never more) and the throughput as a share
              of 5 / JOB_TIME (the issue asks for 90% or more); the mean hold (the
              job's sleep, past JOB_TIME when the box is loaded) and the time a slot
              stood empty per job (the hand-offs) say where the rest went.
  sigkill     a process killed inside ``within_limit`` (lock_timeout 2 s): the slot is
              refused just after the kill and granted after the lock's end.
  rates       bucket, window, leaky and points limiters (100 per second; points 200 at
              2 a call) called by 4 processes x 4 threads each for 10 s: the most calls in
              any window (at or under the limit; leaky and points: their bucket plus
              one interval's drain) and the rate reached (90% or more).

Usage::

    PYTHONPATH=src python bench/limits_stress.py [JOBS] [JOB_TIME] [PHASES]
    # defaults: 20000 0.05 concurrent,sigkill,rates
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RedisServer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import kiq  # noqa: E402
from kiq.config import Config  # noqa: E402
from tests.support.servers import Worker  # noqa: E402
from tests.test_limits import max_overlap, within  # noqa: E402

CALLER = ROOT / "tests" / "support" / "limit_caller.py"


def wait(condition, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"not done within {timeout}s")
        time.sleep(0.05)  # a script's poll, not a test


def concurrent(server: RedisServer, folder: Path, jobs: int, job_time: float) -> dict:  # type: ignore[type-arg]
    r = server.client()
    r.flushdb()
    workers = [
        Worker(folder, server.url, "-r", "limit_jobs", "-c", "10", name=f"w{i}") for i in range(4)
    ]
    try:
        wait(lambda: r.scard("processes") == 4, 60)
        client = kiq.Client(Config(redis_url=server.url))
        for start in range(0, jobs, 1000):
            client.push_bulk(
                {"class": "LimitedCall", "args": [[job_time]] * min(1000, jobs - start)}
            )
        wait(lambda: r.llen("test:spans") == jobs, jobs * job_time / 5 * 3 + 60)
    finally:
        for worker in workers:
            worker.kill()
    spans = [tuple(map(float, s.split())) for s in r.lrange("test:spans", 0, -1)]
    counts = r.hmget("kiq|limiter|provider-test", "immediate", "waited", "wait_ms")
    immediate, waited, wait_ms = (int(c or 0) for c in counts)
    elapsed = max(e for _, e in spans) - min(s for s, _ in spans)
    share = jobs * job_time / 5 / elapsed
    most = max_overlap(spans)  # type: ignore[arg-type]
    held = sum(e - s for s, e in spans)
    return {
        "jobs": jobs,
        "job_time_s": job_time,
        "max_concurrency": most,
        "elapsed_s": round(elapsed, 2),
        "throughput_share": round(share, 3),
        # where the rest went: a job's own hold past JOB_TIME (its sleep's oversleep on a
        # loaded box), and the time a slot stood empty per job (the hand-offs)
        "mean_hold_ms": round(held / jobs * 1000, 2),
        "idle_slot_ms_per_job": round((5 * elapsed - held) / jobs * 1000, 2),
        "immediate": immediate,  # calls let in at once (the limiter had a free slot)
        "waited": waited,  # let in after waiting (handed a slot by a release)
        "mean_wait_ms": round(wait_ms / max(1, waited), 1),
        "ok": most == 5 and share >= 0.9,
    }


def sigkill(server: RedisServer, folder: Path) -> dict:  # type: ignore[type-arg]
    r = server.client()
    r.flushdb()
    env = {"LIMIT_LOCK_TIMEOUT": "2"}
    worker = Worker(folder, server.url, "-r", "limit_jobs", "-c", "1", name="k", env=env)
    config = Config(redis_url=server.url)
    kiq.Client(config).push({"class": "HoldForever", "args": []})
    wait(lambda: r.llen("test:holding") == 1, 60)
    locked = time.time()
    worker.proc.send_signal(signal.SIGKILL)
    worker.proc.wait(10)
    refused = False
    try:
        with kiq.Limiter.concurrent("mutex-test", 1, wait_timeout=0, config=config).within_limit():
            pass
    except kiq.OverLimit:
        refused = True
    limiter = kiq.Limiter.concurrent("mutex-test", 1, wait_timeout=10, config=config)
    with limiter.within_limit():
        got = time.time() - locked
    return {
        "refused_after_kill": refused,
        "granted_after_s": round(got, 3),
        "ok": refused and 1.5 < got < 3.5,
    }


def rates(server: RedisServer) -> dict:  # type: ignore[type-arg]
    r = server.client()
    r.flushdb()
    limit, interval, seconds = 100, 1.0, 10.0
    specs = [
        f"bucket:b:{limit}:{interval}",
        f"window:w:{limit}:{interval}",
        f"leaky:l:{limit}:{interval}",
        f"points:p:{2 * limit}:{interval}:2",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    callers = [
        subprocess.Popen(
            [sys.executable, str(CALLER), server.url, str(seconds), "4", *specs], env=env
        )
        for _ in range(4)
    ]
    wait(lambda: r.llen("test:ready") == 4, 60)
    r.rpush("test:go", *["1"] * 4)
    for caller in callers:
        caller.wait(120)
    calls = {n: sorted(map(float, r.lrange(f"test:calls:{n}", 0, -1))) for n in "bwlp"}
    first = min(min(t) for t in calls.values())
    w0 = (first // interval + 1) * interval
    windows = [w0 + i * interval for i in range(int(seconds / interval) - 1)]
    out: dict = {}  # type: ignore[type-arg]
    slack = 0.0015
    for name, times in calls.items():
        if name == "b":
            most = max(within(times, w + slack, w + interval) for w in windows)
        else:
            most = max(within(times, t, t + interval - slack) for t in times)
        allowed = limit if name in "bw" else 2 * limit
        # the rate from the second whole window on: a leaky or points bucket's first
        # burst (up to its size) is behind by then
        rate = within(times, w0 + interval, w0 + len(windows) * interval) / (
            (len(windows) - 1) * interval
        )
        out[name] = {
            "most_in_a_window": most,
            "allowed": allowed,
            "rate_share": round(rate / (limit / interval), 3),
            "ok": most <= allowed and rate >= 0.9 * limit / interval,
        }
    return out


def main() -> None:
    jobs = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    job_time = float(sys.argv[2]) if len(sys.argv) > 2 else 0.05
    phases = sys.argv[3].split(",") if len(sys.argv) > 3 else ["concurrent", "sigkill", "rates"]
    results: dict = {}  # type: ignore[type-arg]
    with RedisServer.private(port=6395) as server, tempfile.TemporaryDirectory() as tmp:
        if "concurrent" in phases:
            results["concurrent"] = concurrent(server, Path(tmp), jobs, job_time)
        if "sigkill" in phases:
            results["sigkill"] = sigkill(server, Path(tmp))
        if "rates" in phases:
            results["rates"] = rates(server)
    print(json.dumps(results))
    flat = [v for k, v in results.items() if k != "rates"] + list(results.get("rates", {}).values())
    if not all(v["ok"] for v in flat):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
