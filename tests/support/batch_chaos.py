"""The batch proof's harness, shared by tests/test_batch_chaos.py (CI sizes) and
bench/batch_stress.py (the issue's sizes).

A private redis-server (AOF, ``appendfsync always``: every acknowledged write survives
a SIGKILL of Redis), one batch of ``rows`` BRow jobs with callbacks on all three
events, ``workers`` ``kiq worker`` processes, and, while they work: a SIGKILL of a
random worker (and a replacement) every ``kill_every`` seconds, ``kills`` times, and
one SIGKILL + restart of Redis once about half the rows are done. It ends when the
expected callbacks have run and no job is left anywhere (queues, retry, schedule,
in-progress lists), or at ``deadline``; then every worker gets TERM.
"""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

import kiq
from kiq.config import Config
from tests.support.batch_jobs import DONE, RUNS, BCallback, BRow, callbacks, runs
from tests.support.servers import RedisServer, Worker

WORKER_CONFIG = ":process_ttl: 3\n:concurrency: 5\n"


@dataclass
class Report:
    rows: int
    status: dict[str, Any]
    events: Counter[str]  # event -> distinct pushes of its callback (by enqueued_at)
    callback_runs: Counter[str]
    ran: int  # rows that started at least once
    finished: int  # rows that finished at least once
    reruns: int  # extra starts (a killed worker's jobs, re-run: at-least-once)
    kills: int
    redis_restarted: bool
    seconds: float
    leftovers: int
    settles: int = 0  # stalls ended by a TERM + restart of every worker (see run)
    at_fire: dict[str, dict[str, Any]] = field(default_factory=dict)  # counts seen by callbacks


def _leftovers(r: redis.Redis) -> int:
    total = int(r.zcard("retry")) + int(r.zcard("schedule"))
    for key in r.scan_iter("queue:*"):
        total += int(r.llen(key))
    for key in r.scan_iter("kiq|inprogress|*"):
        total += int(r.llen(key))
    return total


@dataclass
class _Session:
    """One run's private redis-server, a client and a Config on it, and the worker
    processes started (killed when the run ends, however it ends)."""

    server: RedisServer
    r: redis.Redis
    config: Config
    procs: list[Worker] = field(default_factory=list)


@contextmanager
def _session(folder: Path, conf: list[str], name: str) -> Iterator[_Session]:
    folder.mkdir(parents=True, exist_ok=True)
    server = RedisServer(folder, conf, name=name)
    server.start()
    procs: list[Worker] = []
    try:
        url = server.url(0)
        session = _Session(server, redis.Redis.from_url(url), Config(redis_url=url), procs)
        yield session
        session.config.close()
        session.r.close()
    finally:
        for worker in procs:
            worker.kill()
        server.kill()


class _Chaos:
    """The worker processes of one run and what is done to them."""

    def __init__(
        self,
        folder: Path,
        server: RedisServer,
        workers: int,
        rng: random.Random,
        procs: list[Worker],
    ) -> None:
        self.folder, self.server, self.rng = folder, server, rng
        self.procs = procs
        self.live = [self.spawn() for _ in range(workers)]
        self.killed = self.settles = 0
        self.restarted = False

    def spawn(self) -> Worker:
        name = f"w{len(self.procs)}"
        worker = Worker(
            self.folder,
            self.server.url(0),
            "-r",
            "batch_jobs",
            config_text=WORKER_CONFIG,
            name=name,
        )
        self.procs.append(worker)
        return worker

    def kill_one(self) -> None:
        self.live.pop(self.rng.randrange(len(self.live))).kill()
        self.live.append(self.spawn())
        self.killed += 1

    def settle(self) -> None:
        """Stalled with every kill done: jobs stranded in a live process's in-progress
        list (a fetch whose reply was lost when Redis died: an engine limit, not a batch
        one). A clean stop of every worker requeues them."""
        for worker in self.live:
            worker.signal(signal.SIGTERM)
        for worker in self.live:
            worker.proc.wait(60)
        self.live = [self.spawn() for _ in range(len(self.live))]
        self.settles += 1

    def stop(self) -> None:
        for worker in self.live:
            worker.stop(30)


def _fill(config: Config, rows: int, flaky: float, die: int, rng: random.Random) -> kiq.Batch:
    modes = ["ok"] * rows
    for index in rng.sample(range(rows), int(rows * flaky)):
        modes[index] = "flaky"
    dying = set(rng.sample([i for i, m in enumerate(modes) if m == "ok"], die))
    batch = kiq.Batch(
        description="chaos",
        on_success=(BCallback, {"event": "success"}),
        on_complete=(BCallback, {"event": "complete"}),
        on_death=(BCallback, {"event": "death"}),
        config=config,
    )
    client = kiq.Client(config)
    with batch.jobs():
        plain = [[i, modes[i], 0.002] for i in range(rows) if i not in dying]
        for start in range(0, len(plain), 1000):
            client.push_bulk({"class": BRow, "args": plain[start : start + 1000]})
        for i in sorted(dying):
            client.push({"class": BRow, "args": [i, "die"], "retry": 0})
    return batch


def run(
    folder: Path,
    *,
    rows: int,
    workers: int = 4,
    kills: int = 4,
    kill_every: float = 0.7,
    restart_redis: bool = True,
    flaky: float = 0.0,
    die: int = 0,
    deadline: float = 120.0,
    seed: int = 7,
    stall: float = 20.0,
) -> Report:
    rng = random.Random(seed)
    conf = ["appendonly yes", "appendfsync always"]
    with _session(folder, conf, "batch-redis") as session:
        started = time.monotonic()
        server, r, config = session.server, session.r, session.config
        batch = _fill(config, rows, flaky, die, rng)
        expected = {"complete", "death"} if die else {"complete", "success"}
        chaos = _Chaos(folder, server, workers, rng, session.procs)
        last_finished, last_change = -1, time.monotonic()
        next_kill = time.monotonic() + kill_every
        while time.monotonic() < started + deadline:
            try:
                if expected <= {c["event"] for c in callbacks(r)} and _leftovers(r) == 0:
                    break
                finished = len(runs(r, DONE))
            except redis.ConnectionError:
                time.sleep(0.05)
                continue
            now = time.monotonic()
            if finished != last_finished:
                last_finished, last_change = finished, now
            elif chaos.killed >= kills and now - last_change > stall:
                chaos.settle()
                last_change = now
            if chaos.killed < kills and now >= next_kill:
                chaos.kill_one()
                next_kill = now + kill_every
            if restart_redis and not chaos.restarted and finished >= rows // 2:
                server.restart(crash=True)
                chaos.restarted = True
            time.sleep(0.05)
        chaos.stop()
        return _report(r, config, batch, chaos, rows, started)


def _report(
    r: redis.Redis, config: Config, batch: kiq.Batch, chaos: _Chaos, rows: int, started: float
) -> Report:
    entries = callbacks(r)
    pushes = Counter(
        e["event"] for e in {(c["event"], c["enqueued_at"]): c for c in entries}.values()
    )
    started_rows = runs(r, RUNS)
    return Report(
        rows=rows,
        status=kiq.BatchStatus(batch.bid, config=config).to_dict(),
        events=pushes,
        callback_runs=Counter(c["event"] for c in entries),
        ran=len(started_rows),
        finished=len(runs(r, DONE)),
        reruns=sum(started_rows.values()) - len(started_rows),
        kills=chaos.killed,
        redis_restarted=chaos.restarted,
        seconds=round(time.monotonic() - started, 1),
        leftovers=_leftovers(r),
        settles=chaos.settles,
        at_fire={c["event"]: c for c in entries},
    )


@dataclass
class WorkflowReport:
    kind: str
    steps: int
    state: str
    runs_once: bool  # every step ran exactly once
    stopped_midway: bool  # the workflow was still running when every worker had exited
    seconds: float


def run_workflow_restart(
    folder: Path, *, kind: str, size: int, workers: int = 2, deadline: float = 300.0
) -> WorkflowReport:
    """A chain of ``size`` or a chord of ``size`` started, every worker stopped (TERM to
    all at once) a third of the way in, new workers started, run to the end."""
    from tests.support.batch_jobs import Step

    with _session(folder, ["appendonly yes"], f"wf-{kind}-redis") as session:
        started = time.monotonic()
        url, r, config, procs = session.server.url(0), session.r, session.config, session.procs
        if kind == "chain":
            r.set("bt:pause", "0.2")
            flow = kiq.chain(*(Step.s(f"s{i}", 1) for i in range(size)), pass_result=True)
        else:
            r.set("bt:pause", "0.01")
            header = kiq.group(Step.s(f"row{i}", 1) for i in range(size))
            flow = kiq.chord(header, Step.s("sum", 0), pass_result=True)
        wid = flow.start(config=config)
        steps = size if kind == "chain" else size + 1

        def spawn() -> Worker:
            worker = Worker(folder, url, "-r", "batch_jobs", name=f"{kind}-w{len(procs)}")
            procs.append(worker)
            return worker

        def state() -> str:
            return kiq.WorkflowStatus(wid, config=config).state

        first = [spawn() for _ in range(workers)]
        end = started + deadline
        while len(runs(r, DONE)) < max(1, steps // 3) and time.monotonic() < end:
            time.sleep(0.05)
        for worker in first:
            worker.signal(signal.SIGTERM)
        for worker in first:
            worker.proc.wait(60)
        midway = state() == "running"
        for _ in range(workers):
            spawn()
        while state() != "succeeded" and time.monotonic() < end:
            time.sleep(0.1)
        counts = runs(r, RUNS)
        report = WorkflowReport(
            kind=kind,
            steps=steps,
            state=state(),
            runs_once=len(counts) == steps and set(counts.values()) == {1},
            stopped_midway=midway,
            seconds=round(time.monotonic() - started, 1),
        )
        return report


@dataclass
class NestedReport:
    levels: int
    order_ok: bool  # each parent's success fired after its child's
    callbacks: Counter[str]
    seconds: float


def run_nested(folder: Path, *, levels: int = 3, rows: int = 100, workers: int = 4) -> NestedReport:
    """A root batch whose job opens ``levels`` levels of child batches, ``rows`` rows each."""
    from tests.support.batch_jobs import BParent

    with _session(folder, ["appendonly no"], "nested-redis") as session:
        started = time.monotonic()
        url, r, config, procs = session.server.url(0), session.r, session.config, session.procs
        root = kiq.Batch(on_success=(BCallback, {"event": "root"}), config=config)
        with root.jobs():
            kiq.Client(config).push({"class": BParent, "args": [levels, rows]})
        procs += [Worker(folder, url, "-r", "batch_jobs", name=f"n{i}") for i in range(workers)]
        while "root" not in {c["event"] for c in callbacks(r)} and time.monotonic() < started + 300:
            time.sleep(0.05)
        chain = [kiq.BatchStatus(root.bid, config=config)]
        while chain[-1].child_count:
            chain.append(kiq.BatchStatus(chain[-1].child_bids()[0], config=config))
        fired = [status.fired.get("success", 0.0) for status in chain]
        report = NestedReport(
            levels=len(chain) - 1,
            order_ok=fired == sorted(fired, reverse=True) and all(fired),
            callbacks=Counter(c["event"] for c in callbacks(r)),
            seconds=round(time.monotonic() - started, 1),
        )
        return report
