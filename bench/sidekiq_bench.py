"""Benchmark Ruby Sidekiq 6.4 (Debian's ruby-sidekiq) as the baseline kiq is measured against.

    python bench/sidekiq_bench.py                      # private redis-server on port 6390
    python bench/sidekiq_bench.py -n 50000 --json out.json
    python bench/sidekiq_bench.py --redis-url redis://127.0.0.1:6379/14 --flush

Measurements (see bench/common.py for the shared protocol):
  enqueue   a Ruby loop of n `RubyNoop.perform_async(i)`, timed inside Ruby; then n jobs
            with `Sidekiq::Client.push_bulk` 1,000 at a time (what perform_bulk does), timed
  drain     n RubyNoop jobs pushed with push_bulk, then
            `sidekiq -r tests/interop/ruby/worker_app.rb -c 10 -q default`; LLEN polled
            every 5 ms from the first pop to an empty queue; worker CPU µs/job from /proc;
            Redis commands per job from INFO commandstats (common.measure_drain)
  latency   an idle sidekiq; 200 `RubyLatency.perform_async(Time.now.to_f)` sent 10 ms apart
            by a Ruby client; each job records Time.now.to_f - sent; p50/p99; idle RSS

Sidekiq logs at its default level (INFO: start/done per job) to a file, as in production.
The job classes live in tests/interop/ruby/worker_app.rb, shared with the interop tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from common import (
    REPO_DIR,
    ListProbe,
    Metrics,
    RedisServer,
    Result,
    System,
    measure_drain,
    measure_latency,
    report,
    run,
    run_json,
    wait_for,
    worker_process,
)

WORKER_APP = REPO_DIR / "tests" / "interop" / "ruby" / "worker_app.rb"
QUIET_APP = REPO_DIR / "bench" / "peer_apps" / "sidekiq_quiet.rb"  # worker_app + ERROR level
QUEUE = "default"

# Run with `ruby -r worker_app.rb -e ...`, so RubyNoop/RubyLatency and the redis-rb
# deprecation silencing are the same as in the worker.
ENQUEUE_RB = r"""
n = Integer(ENV.fetch("BENCH_N"))
Sidekiq.redis { |c| c.ping }   # connect before the clock starts
RubyNoop.perform_async(-1)     # warm the code path (and the `queues` SADD)
t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
n.times { |i| RubyNoop.perform_async(i) }
elapsed = Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0
puts JSON.generate({"seconds" => elapsed, "jobs" => n})
"""

# BENCH_CLASS / BENCH_ARGS (JSON) select another job, e.g. RubySlow [0.001] for the mix.
PUSH_BULK_RB = r"""
n = Integer(ENV.fetch("BENCH_N"))
klass = Object.const_get(ENV.fetch("BENCH_CLASS", "RubyNoop"))
fixed = ENV["BENCH_ARGS"] && JSON.parse(ENV["BENCH_ARGS"])
Sidekiq.redis { |c| c.ping }
t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
(0...n).each_slice(1000) do |slice|
  Sidekiq::Client.push_bulk("class" => klass, "args" => slice.map { |i| fixed || [i] })
end
elapsed = Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0
puts JSON.generate({"jobs" => n, "seconds" => elapsed})
"""

# Sends on an absolute 10 ms grid so the sender's own time doesn't stretch the interval.
LATENCY_RB = r"""
count = Integer(ENV.fetch("BENCH_COUNT"))
interval = Float(ENV.fetch("BENCH_INTERVAL"))
key = ENV.fetch("BENCH_KEY")
Sidekiq.redis { |c| c.ping }
t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
count.times do |i|
  delay = t0 + i * interval - Process.clock_gettime(Process::CLOCK_MONOTONIC)
  sleep(delay) if delay > 0
  RubyLatency.perform_async(Time.now.to_f, key)
end
puts JSON.generate({"sent" => count})
"""


class SidekiqSystem:
    """Ruby Sidekiq 6.4 driven through its CLI, its client and worker_app.rb."""

    name = "sidekiq-6.4"

    def __init__(
        self,
        server: RedisServer,
        *,
        concurrency: int = 10,
        log_path: Path,
        drain_timeout: float = 90.0,
        yjit: bool = False,
        client_url: str | None = None,
        quiet: bool = False,
    ) -> None:
        self.server = server
        # client_url: where Sidekiq and its clients connect (a delayed link, see
        # netdelay.py); the bench's own polling and INFO always go straight to the server.
        self.redis = server.client()
        self.stats_redis = self.redis
        self.concurrency = concurrency
        self.log_path = log_path
        self.drain_timeout = drain_timeout
        # Sidekiq 6.4 reads ./config/sidekiq.yml relative to the *cwd* when -r is a file
        # (cli.rb uses options[:require], still the default "."), so run it from an empty dir.
        self.workdir = Path(tempfile.gettempdir()) / "kiq-bench" / "sidekiq-cwd"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "REDIS_URL": client_url or server.url}
        for leak in ("RAILS_MAX_THREADS", "REDIS_PROVIDER", "APP_ENV", "RAILS_ENV", "RACK_ENV"):
            self.env.pop(leak, None)
        # Debian's Ruby 3.1 is built with YJIT but leaves it off, as we do by default.
        self.env.pop("RUBY_YJIT_ENABLE", None)
        if yjit:
            self.env["RUBY_YJIT_ENABLE"] = "1"  # what `ruby --yjit` turns on
            self.name = "sidekiq-6.4-yjit"
        # quiet: Sidekiq.logger.level = ERROR, no per-job start/done lines (QUIET_APP)
        self.app = QUIET_APP if quiet else WORKER_APP
        if quiet:
            self.name += "-quiet"

    # -- System protocol ---------------------------------------------------------------------

    def enqueue(self, n: int) -> Metrics:
        self.redis.flushdb()
        out = self._ruby(ENQUEUE_RB, BENCH_N=str(n))
        queued = self.redis.llen(f"queue:{QUEUE}")
        if queued != n + 1:  # +1: the warm-up job
            raise RuntimeError(f"expected {n + 1} jobs in queue:{QUEUE}, found {queued}")
        self.redis.flushdb()
        seconds = float(out["seconds"])
        bulk = self._ruby(PUSH_BULK_RB, BENCH_N=str(n))
        self.redis.flushdb()
        bulk_seconds = float(bulk["seconds"])
        return {
            "enqueue_s": seconds,
            "enqueue_per_s": n / seconds,
            "bulk_s": bulk_seconds,
            "bulk_per_s": n / bulk_seconds,
        }

    def drain(self, n: int) -> Metrics:
        return self.drain_jobs(n)

    def drain_jobs(
        self, n: int, job: str = "RubyNoop", args: list[object] | None = None
    ) -> Metrics:
        """Push n `job` jobs (args [i], or `args` for every job), then time their drain."""
        self.redis.flushdb()
        extra = {"BENCH_ARGS": json.dumps(args)} if args is not None else {}
        self._ruby(PUSH_BULK_RB, BENCH_N=str(n), BENCH_CLASS=job, **extra)
        queued = self.redis.llen(f"queue:{QUEUE}")
        if queued != n:
            raise RuntimeError(f"push_bulk left {queued} jobs, expected {n}")
        with self._sidekiq() as worker:
            metrics = measure_drain(
                worker,
                stats_client=self.stats_redis,
                n=n,
                # Sidekiq 6.4's basic fetch holds taken jobs only in memory: nothing
                # in flight is visible, so "to last ack" equals "to queue empty".
                probe=ListProbe(self.stats_redis, f"queue:{QUEUE}"),
                timeout=self.drain_timeout,
            )
        self.redis.flushdb()
        return metrics

    def latency(self, count: int, interval: float) -> Metrics:
        self.redis.flushdb()
        with self._sidekiq() as worker:
            self._wait_until_ready()
            metrics = measure_latency(
                self.redis,
                worker.pid,
                lambda jobs, every, key: self._ruby(
                    LATENCY_RB, BENCH_COUNT=str(jobs), BENCH_INTERVAL=str(every), BENCH_KEY=key
                ),
                count,
                interval,
            )
        self.redis.flushdb()
        return metrics

    def describe(self) -> dict[str, str]:
        ruby = subprocess.run(
            ["ruby", "-v"], env=self.env, capture_output=True, text=True, check=True
        )
        return {
            "ruby": ruby.stdout.strip(),
            "sidekiq": str(self._ruby('puts JSON.generate({"v" => Sidekiq::VERSION})')["v"]),
            "command": " ".join(self._sidekiq_argv()),
            "log": str(self.log_path),
        }

    # -- helpers -----------------------------------------------------------------------------

    def _sidekiq_argv(self) -> list[str]:
        sidekiq = shutil.which("sidekiq") or "sidekiq"
        return [
            sidekiq, "-r", str(self.app), "-c", str(self.concurrency), "-q", QUEUE,
        ]  # fmt: skip

    def _sidekiq(self) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
        return worker_process(
            self._sidekiq_argv(), env=self.env, log_path=self.log_path, cwd=self.workdir
        )

    def _wait_until_ready(self) -> None:
        """The first heartbeat (SADD processes) is written as the launcher starts."""
        wait_for(lambda: self.redis.scard("processes") > 0, timeout=30, what="sidekiq boot")
        time.sleep(0.2)  # processors start right after the heartbeat thread

    def _ruby(self, script: str, **env: str) -> dict[str, float | int | str]:
        """Run script under `ruby -r worker_app.rb`; its last stdout line is JSON."""
        return run_json(
            ["ruby", "-rjson", "-r", str(WORKER_APP), "-e", script],
            env={**self.env, **env},
            cwd=self.workdir,
            timeout=120,
            what="ruby",
        )


# Further systems (kiq, Python peers) register a factory here.
SystemFactory = Callable[[RedisServer, argparse.Namespace], System]
SYSTEMS: dict[str, SystemFactory] = {
    "sidekiq": lambda server, args: SidekiqSystem(
        server, concurrency=args.concurrency, log_path=Path(args.log), yjit=args.yjit
    ),
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20_000, help="jobs for enqueue/drain")
    parser.add_argument("--concurrency", "-c", type=int, default=10)
    parser.add_argument("--latency-count", type=int, default=200)
    parser.add_argument("--latency-interval-ms", type=float, default=10.0)
    parser.add_argument(
        "--systems", default="sidekiq", help=f"comma-separated: {', '.join(SYSTEMS)}"
    )
    parser.add_argument("--phases", default="enqueue,drain,latency", help="comma-separated subset")
    parser.add_argument(
        "--redis-url", help="use this Redis database instead of a private redis-server"
    )
    parser.add_argument(
        "--flush", action="store_true", help="allow flushing a non-empty --redis-url db"
    )
    parser.add_argument("--yjit", action="store_true", help="run Ruby with RUBY_YJIT_ENABLE=1")
    parser.add_argument("--port", type=int, default=6390, help="private redis-server port")
    parser.add_argument("--json", help="write results to this file")
    parser.add_argument(
        "--log",
        default=os.path.join(tempfile.gettempdir(), "kiq-bench", "sidekiq.log"),
        help="worker log file (appended to)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    Path(args.log).parent.mkdir(parents=True, exist_ok=True)
    if args.redis_url:
        import redis

        existing = redis.Redis.from_url(args.redis_url).dbsize()
        if existing and not args.flush:
            print(f"{args.redis_url} holds {existing} keys; pass --flush to wipe it")
            return 2
        server_cm = RedisServer.external(args.redis_url)
    else:
        server_cm = RedisServer.private(port=args.port)

    started = time.monotonic()
    with server_cm as server:
        systems: list[System] = []
        metas: list[dict[str, str]] = []
        for name in args.systems.split(","):
            system = SYSTEMS[name](server, args)
            describe = getattr(system, "describe", None)
            meta: dict[str, str] = describe() if describe else {}
            for key, value in meta.items():
                print(f"[{system.name}] {key}: {value}")
            systems.append(system)
            metas.append(meta)
        results: list[Result] = run(
            systems,
            n=args.n,
            latency_count=args.latency_count,
            latency_interval=args.latency_interval_ms / 1000,
            phases=args.phases.split(","),
        )
        for result, meta in zip(results, metas, strict=True):
            result.meta.update(meta)
    report(results, json_path=args.json)
    print(f"total {time.monotonic() - started:.1f}s")
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
