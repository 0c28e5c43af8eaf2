"""Chaos run: prove that kiq loses no job while workers are SIGKILLed and Redis crashes.

Issue 4's proof, as a program. It starts its own ``redis-server`` (AOF on), pushes
``--jobs`` jobs over three weighted queues at a steady rate for ``--seconds``, and runs
``--workers`` ``kiq worker -c 10`` processes (test intervals: 0.5 s heartbeats, 3 s
process TTL, 1 s orphan sweeps) while it:

  * SIGKILLs a random worker every 2-4 s and starts a replacement;
  * runs a few planted poison jobs, which SIGKILL the process running them every time;
  * kills Redis once with SIGKILL halfway through and starts it again from its AOF
    (``appendfsync always``, so every write Redis acknowledged survives the crash;
    ``--redis-restart shutdown`` does a clean SHUTDOWN instead, where ``everysec`` is
    enough because SHUTDOWN fsyncs the AOF).

Every job counts its runs (``HINCRBY chaos:runs <jid> 1`` when it starts) and records
its jid in the ``chaos:done`` SET when it finishes (SADD: idempotent). 1 in 20 raises
once, then succeeds from the retry set; 1 in 4 sleeps 1-10 ms. When every job is
done (or dead), or after a drain deadline, it prints::

    enqueued, completed, lost (not done and not dead: must be 0), run more than once
    (jobs that were running in a killed process, or whose ack was in flight when
    Redis died), dead (must be exactly the poison jobs, error_class kiq.PoisonJob)

and exits 1 if anything was lost, is still unfinished, or died unexpectedly.

Usage::

    python bench/chaos.py                  # long form: 20,000 jobs, 4 workers, 120 s
    python bench/chaos.py --short          # CI: 3,000 jobs, about a minute
    python bench/chaos.py --jobs 5000 --workers 3 --seconds 30 --keep

``kiq worker -r bench/chaos.py`` loads this same file to get the job classes; nothing
below them runs there (``__name__`` is not ``"__main__"``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

import kiq
from kiq.payload import new_jid

RUNS = "chaos:runs"  # HASH jid -> times perform started
DONE = "chaos:done"  # SET of jids that finished
FINISHES = "chaos:finishes"  # HASH jid -> times perform finished (> 1: ran again after done)

_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    """The worker's own Redis (KIQ_REDIS_URL), for the jobs' records; opened lazily."""
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["KIQ_REDIS_URL"], socket_timeout=5)
    return _client


class Flaky(Exception):
    """Raised once by a flaky job, so it goes through the retry set."""


class Work(kiq.Job, name="chaos.Work", retry=5):
    """Count the run, maybe sleep, maybe fail the first time, record the jid as done."""

    def perform(self, index: int, sleep_ms: int, flaky: bool) -> None:
        _redis().hincrby(RUNS, self.jid, 1)
        if sleep_ms:
            time.sleep(sleep_ms / 1000)
        if flaky and "retry_count" not in self.payload:
            raise Flaky(f"job {index} fails once on purpose")
        pipe = _redis().pipeline(transaction=False)
        pipe.sadd(DONE, self.jid)
        pipe.hincrby(FINISHES, self.jid, 1)
        pipe.execute()

    @classmethod
    def retry_in(cls, count: int, exc: BaseException, payload: Any) -> float:
        return 1.0  # not Sidekiq's 15 s: the run should not wait on backoff


class Poison(kiq.Job, name="chaos.Poison"):
    """Kill the process running it, every time: kiq must bury it as kiq.PoisonJob."""

    def perform(self, index: int) -> None:
        _redis().hincrby(RUNS, self.jid, 1)
        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------------------
# The harness (only when run as a program).

QUEUES = [("critical", 3), ("default", 2), ("low", 1)]
WORKER_CONFIG = """\
:heartbeat_interval: 0.5
:process_ttl: 3
:orphan_check_interval: 1
:poll_interval_average: 0.5
:poll_initial_wait: 0
:timeout: 5
"""
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Plan:
    """What one run does; the flags fill it in."""

    jobs: int
    workers: int
    seconds: float
    poison: int
    drain_timeout: float
    restart: str  # "kill" (SIGKILL + AOF recovery) or "shutdown" (clean SHUTDOWN)
    kill_every: tuple[float, float] = (2.0, 4.0)
    seed: int = field(default_factory=lambda: random.randrange(1 << 30))


@dataclass
class Tally:
    """What happened during the run, besides what the jobs recorded."""

    enqueued: dict[str, str] = field(default_factory=dict)  # jid -> "work" | "flaky" | "poison"
    push_retries: int = 0
    kills: int = 0
    poison_exits: int = 0
    redis_down_s: float = 0.0
    killed: set[int] = field(default_factory=set)  # pids we SIGKILLed (not poison)


class Cluster:
    """The private Redis and the kiq worker processes."""

    def __init__(self, folder: Path, plan: Plan) -> None:
        sys.path.insert(0, str(REPO))  # tests/support/servers.py: the private-server helper
        from tests.support.servers import RedisServer

        fsync = "always" if plan.restart == "kill" else "everysec"
        self.fsync = fsync
        self.server = RedisServer(
            folder, ["appendonly yes", f"appendfsync {fsync}", "maxmemory-policy noeviction"]
        )
        self.folder = folder
        self.config = folder / "chaos.yml"
        self.config.write_text(WORKER_CONFIG)
        self.workers: list[subprocess.Popen[bytes]] = []
        self.lock = threading.Lock()
        self.started = 0

    @property
    def url(self) -> str:
        return self.server.url()

    def start_worker(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ, KIQ_REDIS_URL=self.url)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
        queues = [arg for name, weight in QUEUES for arg in ("-q", f"{name},{weight}")]
        command = [sys.executable, "-m", "kiq.cli", "worker", "-r", str(Path(__file__).resolve())]
        command += ["-c", "10", "-C", str(self.config), *queues]
        with self.lock:
            log = self.folder / f"worker-{self.started}.log"
            self.started += 1
            with log.open("wb") as out:
                proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
            self.workers.append(proc)
        return proc

    def alive(self) -> list[subprocess.Popen[bytes]]:
        with self.lock:
            return [p for p in self.workers if p.poll() is None]

    def stop(self) -> None:
        for proc in self.alive():
            proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.server.kill()


def make_jobs(plan: Plan, rng: random.Random) -> list[dict[str, Any]]:
    """The jobs to push, in push order; poison jobs early, so they are buried in time."""
    items: list[dict[str, Any]] = []
    for index in range(plan.jobs):
        queue = rng.choices([q for q, _ in QUEUES], weights=[w for _, w in QUEUES])[0]
        sleep_ms = rng.randint(1, 10) if rng.random() < 0.25 else 0
        flaky = rng.random() < 0.05
        items.append(
            {"class": "chaos.Work", "queue": queue, "args": [index, sleep_ms, flaky], "retry": 5}
        )
    for n in range(plan.poison):
        position = (n + 1) * len(items) // (4 * (plan.poison + 1))  # in the first quarter
        items.insert(position, {"class": "chaos.Poison", "queue": "default", "args": [n]})
    for item in items:
        item["jid"] = new_jid()
    return items


def enqueue(
    cluster: Cluster, plan: Plan, items: list[dict[str, Any]], tally: Tally, stop: threading.Event
) -> None:
    """Push a quarter of the jobs at once, the rest at a steady rate over ``plan.seconds``.

    A push that fails is retried with the same jid; if the failed attempt did reach
    Redis, the job is queued twice and runs twice (counted, and explained, at the end).
    """
    client = kiq.Client(kiq.Config(redis_url=cluster.url))
    started = time.monotonic()
    burst = len(items) // 4  # a backlog, so killed workers hold full fetch batches
    for n, item in enumerate(items):
        due = started + plan.seconds * 0.8 * max(0, n - burst) / (len(items) - burst)
        if stop.wait(max(0.0, due - time.monotonic())):
            break
        if not push(client, item, tally, stop):
            break
        kind = "poison" if item["class"] == "chaos.Poison" else "work"
        if kind == "work" and item["args"][2]:
            kind = "flaky"
        tally.enqueued[item["jid"]] = kind
    client.config.close()


def push(client: kiq.Client, item: dict[str, Any], tally: Tally, stop: threading.Event) -> bool:
    """Push one job, retrying while Redis is away; False if told to stop first."""
    while not stop.is_set():
        try:
            client.push(item)
            return True
        except kiq.RedisUnavailable:
            tally.push_retries += 1
            stop.wait(0.1)
    return False


def chaos(
    cluster: Cluster, plan: Plan, tally: Tally, rng: random.Random, stop: threading.Event
) -> None:
    """Kill a random worker every few seconds, replace dead ones, crash Redis once."""
    started = time.monotonic()
    restart_at = started + plan.seconds / 2
    next_kill = started + rng.uniform(*plan.kill_every)
    seen_dead: set[int] = set()
    while not stop.wait(0.1):
        now = time.monotonic()
        for proc in list(cluster.workers):
            if proc.poll() is not None and proc.pid not in seen_dead:
                seen_dead.add(proc.pid)
                if proc.returncode == -signal.SIGKILL and proc.pid not in tally.killed:
                    tally.poison_exits += 1
                cluster.start_worker()
        if now - started < plan.seconds and now >= next_kill:
            victims = cluster.alive()
            if victims:
                victim = rng.choice(victims)
                tally.killed.add(victim.pid)
                victim.kill()
                tally.kills += 1
            next_kill = now + rng.uniform(*plan.kill_every)
        if restart_at and now >= restart_at:
            restart_at = 0
            tally.redis_down_s = cluster.server.restart(crash=plan.restart == "kill")
            print(
                f"  [{now - started:5.1f}s] Redis restarted ({plan.restart}), "
                f"down {tally.redis_down_s:.2f}s",
                flush=True,
            )


def progress(r: redis.Redis, tally: Tally, started: float) -> str:
    done = r.scard(DONE)
    dead = r.zcard("dead")
    return (
        f"  [{time.monotonic() - started:5.1f}s] enqueued {len(tally.enqueued):,}  done {done:,}"
        f"  dead {dead}  workers killed {tally.kills} (+{tally.poison_exits} by poison)"
    )


def finished(r: redis.Redis, tally: Tally, total: int) -> bool:
    """Every job pushed and accounted for: done, or in the dead set (rightly or not)."""
    if len(tally.enqueued) < total:
        return False
    return int(r.scard(DONE)) + int(r.zcard("dead")) >= total


@dataclass
class Report:
    enqueued: int
    completed: int
    lost: int
    unfinished: int
    more_than_once: int
    finished_twice: int
    dead: int
    dead_expected: int
    dead_unexpected: list[str]
    elapsed: float
    kills: int
    poison_exits: int
    redis_down_s: float
    push_retries: int
    workers_started: int
    fsync: str
    restart: str
    lost_jids: list[str]

    @property
    def ok(self) -> bool:
        return not (self.lost or self.unfinished or self.dead_unexpected)


def account(r: redis.Redis, tally: Tally, cluster: Cluster, plan: Plan, elapsed: float) -> Report:
    """Compare what was pushed with what the jobs recorded and what Redis still holds.

    ``r`` decodes replies (``decode_responses=True``).
    """
    reply: Any = r.smembers(DONE)
    done: set[str] = set(reply)
    reply = r.hgetall(RUNS)
    runs = {jid: int(n) for jid, n in reply.items()}
    reply = r.hgetall(FINISHES)
    finishes = {jid: int(n) for jid, n in reply.items()}
    reply = r.zrange("dead", 0, -1)
    dead: dict[str, dict[str, Any]] = {p["jid"]: p for p in map(json.loads, reply)}
    pending: set[str] = set()  # still somewhere in Redis: queued, in progress, retry or schedule
    for key in [*r.scan_iter(match="*queue*"), "retry", "schedule"]:
        kind = r.type(key)
        reply = (
            r.lrange(key, 0, -1)
            if kind == "list"
            else r.zrange(key, 0, -1)
            if kind == "zset"
            else []
        )
        pending.update(json.loads(raw)["jid"] for raw in reply)
    missing = [jid for jid in tally.enqueued if jid not in done and jid not in dead]
    lost = [jid for jid in missing if jid not in pending]
    expected_runs = {"work": 1, "flaky": 2, "poison": 0}
    again = [
        jid
        for jid, kind in tally.enqueued.items()
        if kind != "poison" and runs.get(jid, 0) > expected_runs[kind]
    ]
    unexpected = [
        f"{jid} {p.get('class')} {p.get('error_class')}: {p.get('error_message', '')[:120]}"
        for jid, p in dead.items()
        if tally.enqueued.get(jid) != "poison" or p.get("error_class") != "kiq.PoisonJob"
    ]
    return Report(
        enqueued=len(tally.enqueued),
        completed=len(done & tally.enqueued.keys()),
        lost=len(lost),
        unfinished=len(missing) - len(lost),
        more_than_once=len(again),
        finished_twice=sum(1 for jid in again if finishes.get(jid, 0) > 1),
        dead=len(dead),
        dead_expected=sum(1 for kind in tally.enqueued.values() if kind == "poison"),
        dead_unexpected=unexpected,
        elapsed=elapsed,
        kills=tally.kills,
        poison_exits=tally.poison_exits,
        redis_down_s=tally.redis_down_s,
        push_retries=tally.push_retries,
        workers_started=cluster.started,
        fsync=cluster.fsync,
        restart=plan.restart,
        lost_jids=lost[:20],
    )


def print_report(report: Report, plan: Plan) -> None:
    print()
    print(f"chaos run: {plan.jobs:,} jobs + {plan.poison} poison, {plan.workers} workers, "
          f"seed {plan.seed}")  # fmt: skip
    print(f"  enqueued            {report.enqueued:,}")
    print(f"  completed           {report.completed:,}")
    print(f"  lost                {report.lost}" + ("" if not report.lost else "   <-- FAIL"))
    if report.unfinished:
        print(
            f"  unfinished          {report.unfinished}   <-- FAIL (still queued at the deadline)"
        )
    killed = report.kills + report.poison_exits
    print(
        f"  run more than once  {report.more_than_once} ({report.finished_twice} had already "
        f"finished): running, or finished but not yet acknowledged, in one of the {killed} "
        f"SIGKILLed workers; recovered and run again (at-least-once)"
        + (
            f", or pushed twice by one of the {report.push_retries} pushes retried across the "
            f"Redis restart"
            if report.push_retries
            else ""
        )
    )
    verdict = "as planted" if not report.dead_unexpected else "<-- FAIL: unexpected"
    print(f"  dead                {report.dead} (poison jobs planted: {report.dead_expected}, "
          f"error_class kiq.PoisonJob) {verdict}")  # fmt: skip
    for line in report.dead_unexpected[:10]:
        print(f"      {line}")
    print(f"  elapsed             {report.elapsed:.1f} s")
    print(
        f"  chaos               {report.kills} workers SIGKILLed at random, "
        f"{report.poison_exits} killed by poison jobs, {report.workers_started} started; "
        f"Redis {'SIGKILLed' if report.restart == 'kill' else 'SHUTDOWN'} once "
        f"(appendfsync {report.fsync}), down {report.redis_down_s:.2f} s, "
        f"{report.push_retries} pushes retried"
    )
    if report.lost_jids:
        print(f"  lost jids (first 20): {' '.join(report.lost_jids)}")
    print("RESULT " + json.dumps({k: v for k, v in vars(report).items() if k != "lost_jids"}))


def run(plan: Plan, keep: bool) -> int:
    rng = random.Random(plan.seed)
    folder = Path(tempfile.mkdtemp(prefix="kiq-chaos-"))
    cluster = Cluster(folder, plan)
    cluster.server.start()
    tally = Tally()
    stop = threading.Event()
    started = time.monotonic()
    try:
        for _ in range(plan.workers):
            cluster.start_worker()
        items = make_jobs(plan, rng)
        pusher = threading.Thread(
            target=enqueue, args=(cluster, plan, items, tally, stop), daemon=True
        )
        killer = threading.Thread(target=chaos, args=(cluster, plan, tally, rng, stop), daemon=True)
        pusher.start()
        killer.start()
        r = redis.Redis(host="127.0.0.1", port=cluster.server.port, socket_timeout=5)
        deadline = started + plan.seconds + plan.drain_timeout
        last = 0.0
        while time.monotonic() < deadline:
            try:
                if time.monotonic() - started > plan.seconds and finished(r, tally, len(items)):
                    break
                if time.monotonic() - last > 5:
                    last = time.monotonic()
                    print(progress(r, tally, started), flush=True)
            except redis.ConnectionError:
                pass  # Redis is restarting
            time.sleep(0.2)
        stop.set()
        killer.join(30)
        pusher.join(10)
        elapsed = time.monotonic() - started
        cluster.stop()  # workers first (TERM), then Redis; restart it to read the results
        cluster.server.start()
        r = redis.Redis(port=cluster.server.port, socket_timeout=5, decode_responses=True)
        report = account(r, tally, cluster, plan, elapsed)
    finally:
        stop.set()
        cluster.stop()
    print_report(report, plan)
    if report.ok and not keep:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    else:
        print(f"  logs and AOF kept in {folder}")
    return 0 if report.ok else 1


def parse(argv: Sequence[str] | None) -> tuple[Plan, bool]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="CI form: 3,000 jobs, ~1 minute")
    parser.add_argument("--jobs", type=int, help="jobs to push (default 20,000; short 3,000)")
    parser.add_argument("--workers", type=int, default=4, help="kiq worker processes (4)")
    parser.add_argument(
        "--seconds", type=float, help="chaos phase: pushes and kills (default 120; short 30)"
    )
    parser.add_argument("--poison", type=int, help="poison jobs planted (default 3; short 2)")
    parser.add_argument(
        "--redis-restart",
        choices=["kill", "shutdown"],
        default="kill",
        help="kill: SIGKILL + AOF recovery (appendfsync always); shutdown: clean SHUTDOWN "
        "(appendfsync everysec)",
    )
    parser.add_argument("--seed", type=int, help="random seed (printed; replays the same plan)")
    parser.add_argument("--keep", action="store_true", help="keep logs and the AOF")
    args = parser.parse_args(argv)
    plan = Plan(
        jobs=args.jobs or (3_000 if args.short else 20_000),
        workers=args.workers,
        seconds=args.seconds or (30.0 if args.short else 120.0),
        poison=args.poison if args.poison is not None else (2 if args.short else 3),
        drain_timeout=60.0 if args.short else 120.0,
        restart=args.redis_restart,
    )
    if args.seed is not None:
        plan.seed = args.seed
    return plan, args.keep


def main(argv: Sequence[str] | None = None) -> int:
    plan, keep = parse(argv)
    return run(plan, keep)


if __name__ == "__main__":
    sys.exit(main())
