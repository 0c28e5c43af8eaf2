"""Iterable export at full size: 100,000 SQLite rows through SQLAlchemy, interrupted.

Issue 18's proof, as a program. It starts its own ``redis-server``, builds a SQLite
table of ``--rows`` rows, pushes one ``iter_jobs.ExportRowsJob`` (keyset batches of 50
rows, each batch costing ``--batch-cost`` seconds; tests/support/iter_jobs.py) and runs
``kiq worker`` processes one after another, each stopped in a different way:

  * ``--terms`` times: TERM once some rows are done (the job flushes its cursor and is
    back in its queue at once; the worker exits without waiting out ``-t``);
  * ``--kills`` times: SIGKILL (the next worker recovers the job once the dead
    process's heartbeat expired, and resumes from the last flushed cursor);
  * then one worker with ``max_iteration_runtime`` (``--max-runtime`` s), which puts
    the job back in its queue every so often until the export is done.

Every batch pushes its row ids to ``test:rows``. At the end it prints and checks:

    rows (every id 1..N at least once: none skipped), repeats (extra runs of a row),
    and for each SIGKILL the rows done after its last flush (which the next run does
    again), which must be at most one flush interval (5 s, Sidekiq's) of work

and exits 1 if a row was skipped, the repeats exceed what the SIGKILLs left after
their last flushes (TERM and max_iteration_runtime must repeat nothing), or a SIGKILL
left more than ``flush interval x throughput + one batch`` rows.

Usage::

    python bench/iterable_stress.py                 # 100,000 rows, 5 s flushes (~3 min)
    python bench/iterable_stress.py --rows 5000 --flush 0.5 --batch-cost 0.01
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
SUPPORT = ROOT / "tests" / "support"
sys.path[:0] = [str(ROOT / "src"), str(SUPPORT), str(ROOT)]

from tests.support.servers import RedisServer  # noqa: E402

CONFIG = """\
:heartbeat_interval: 0.5
:poll_initial_wait: 0
:poll_interval_average: 0.5
:orphan_check_interval: 0.5
:process_ttl: 2
:timeout: 10
"""


def worker(folder: Path, url: str, env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
    config = folder / "kiq.yml"
    config.write_text(CONFIG)
    full = {**os.environ, **env, "KIQ_REDIS_URL": url}
    full["PYTHONPATH"] = os.pathsep.join([str(SUPPORT), str(ROOT / "src"), str(ROOT)])
    log = (folder / f"{name}.log").open("wb")
    command = [sys.executable, "-m", "kiq.cli", "worker", "-r", "iter_jobs", "-q", "iter"]
    command += ["-C", str(config), "--redis-url", url]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=full, cwd=folder)


def wait(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--flush", type=float, default=5.0, help="state flush interval, s")
    parser.add_argument("--batch-cost", type=float, default=0.005, help="seconds per batch")
    parser.add_argument("--terms", type=int, default=2)
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--max-runtime", type=float, default=4.0)
    args = parser.parse_args()

    import iter_jobs

    folder = Path(tempfile.mkdtemp(prefix="kiq-iter-stress-"))
    server = RedisServer(folder, ["appendonly no"], name="stress")
    server.start()
    url = server.url(0)
    r = redis.Redis.from_url(url)
    db = str(folder / "rows.db")
    iter_jobs.make_table(db, args.rows)
    env = {"KIQ_TEST_FLUSH": str(args.flush), "KIQ_TEST_BATCH_COST": str(args.batch_cost)}
    import kiq

    config = kiq.Config(redis_url=url)
    jid = kiq.Client(config).push(
        {"class": "iter_jobs.ExportRowsJob", "args": [db], "queue": "iter"}
    )
    assert jid is not None
    step = args.rows // (args.terms + args.kills + 2)
    kills: list[tuple[int, int, float, float]] = []  # (flushed cursor, repeats, rate, s)
    started = time.monotonic()
    try:
        for n, how in enumerate(["term"] * args.terms + ["kill"] * args.kills, start=1):
            target = min(args.rows - 1, n * step)
            proc = worker(folder, url, env, f"{how}-{n}")
            begun_rows = r.llen("test:rows")
            wait(lambda t=target: r.llen("test:rows") >= t, 600, f"{target} rows ({how} {n})")
            if how == "term":
                sent = time.monotonic()
                proc.terminate()
                proc.wait(60)
                took, rows, queued = (
                    time.monotonic() - sent,
                    r.llen("test:rows"),
                    r.llen("queue:iter"),
                )
                print(
                    f"TERM {n}: at {rows:,} rows, exited in {took:.2f} s (-t 10), queued {queued}"
                )
                continue
            proc.kill()
            killed = time.time()
            proc.wait(10)
            run_began = float(json.loads(r.lindex("test:runs", -1) or b"{}")["at"])
            seconds = killed - run_began  # the killed run's own time, its start-up left out
            done = [int(x) for x in r.lrange("test:rows", 0, -1)]
            flushed = int(r.hget(f"it-{jid}", "c") or 0)
            repeats = len({row for row in done if row > flushed})  # done since the flush
            rate = (len(done) - begun_rows) / max(seconds, 0.1)
            kills.append((flushed, repeats, rate, seconds))
            print(
                f"SIGKILL {n}: at {len(done):,} rows, last flushed cursor {flushed:,}: "
                f"{repeats:,} rows to repeat ({rate:,.0f} rows/s)"
            )
        env["KIQ_TEST_MAX_RUNTIME"] = str(args.max_runtime)
        proc = worker(folder, url, env, "max-runtime")
        wait(lambda: r.exists(f"it-{jid}") == 0 and r.llen("queue:iter") == 0, 1800, "the end")
        proc.terminate()
        proc.wait(60)
        done = [int(x) for x in r.lrange("test:rows", 0, -1)]
        runs = [json.loads(x) for x in r.lrange("test:runs", 0, -1)]
    finally:
        server.kill()
    return report(args, done, runs, kills, time.monotonic() - started)


def report(
    args: argparse.Namespace,
    done: list[int],
    runs: list[dict[str, object]],
    kills: list[tuple[int, int, float, float]],
    elapsed: float,
) -> int:
    counts = Counter(done)
    skipped = args.rows - len(set(done) & set(range(1, args.rows + 1)))
    repeats = sum(n - 1 for n in counts.values())
    from_kills = sum(k[1] for k in kills)
    print(
        f"\n{args.rows:,} rows in {elapsed:.1f} s, {len(runs)} executions "
        f"({args.terms} TERM, {args.kills} SIGKILL, "
        f"{len(runs) - args.terms - args.kills - 1} max_iteration_runtime stops)"
    )
    # A row done after a kill's last flush is done again by the next run, unless that
    # run is killed first too (then it is repeated once, from the next flush): so the
    # repeats are at most the sum over the kills, and none comes from TERM or
    # max_iteration_runtime, which flush before they stop.
    print(
        f"  rows processed {len(done):,}: skipped {skipped}, repeated {repeats:,} "
        f"(<= {from_kills:,}, the rows done after each SIGKILL's last flush)"
    )
    failed = skipped != 0 or repeats > from_kills
    for n, (_, count, rate, _) in enumerate(kills, start=1):
        bound = args.flush * rate + 50
        ok = count <= bound
        failed |= not ok
        print(
            f"  SIGKILL {n}: {count:,} rows repeated <= {bound:,.0f} "
            f"(one {args.flush:g} s flush interval at {rate:,.0f} rows/s + one batch): "
            f"{'ok' if ok else 'TOO MANY'}"
        )
    print("FAILED" if failed else "OK")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
