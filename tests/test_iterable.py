"""kiq.IterableJob (issue 18): resume after TERM, SIGKILL and max_iteration_runtime, with
every row processed once and the repeats after SIGKILL counted and bounded; Sidekiq
7.3+'s ``it-<jid>`` format both ways; the enumerators of kiq.iter.

Real Redis, real ``kiq worker`` processes (tests/support/iter_jobs.py). The full-size
run (100,000 rows) is bench/iterable_stress.py; this one is CI-sized (5,000).
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
import redis

import kiq
import kiq.api
from kiq.config import Config
from kiq.keys import ITERATION_TTL
from tests.support import iter_jobs, needs
from tests.support.servers import Worker
from tests.support.wait import wait_until

ROWS = 5_000
QUICK = ":process_ttl: 1\n"


def rows(r: redis.Redis) -> list[int]:
    return [int(x) for x in r.lrange("test:rows", 0, -1)]


def runs(r: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(x) for x in r.lrange("test:runs", 0, -1)]


def state(r: redis.Redis, jid: str) -> dict[str, str]:
    return dict(r.hgetall(f"it-{jid}"))


def test_export_survives_term_sigkill_and_max_iteration_runtime(
    config: Config, r: redis.Redis, tmp_path: Path, start_worker: Callable[..., Worker]
) -> None:
    db = str(tmp_path / "rows.db")
    iter_jobs.make_table(db, ROWS)
    jid = iter_jobs.ExportRowsJob.perform_async(db)
    assert jid is not None
    env = {"KIQ_TEST_BATCH_COST": "0.03", "KIQ_TEST_FLUSH": "0.5"}
    args = ("-r", "iter_jobs", "-q", "iter", "-c", "2")

    # 1. TERM: the cursor is saved and the job is back in its queue at once, not after -t
    first = start_worker(*args, env=env, config_text=QUICK)
    wait_until(lambda: r.llen("test:rows") >= 300, timeout=30)
    first.signal(signal.SIGTERM)
    # back in its queue well before -t (5 s, FAST_CONFIG): the stop did not wait it out
    wait_until(lambda: r.llen("queue:iter") == 1, timeout=4.0)
    assert first.stop() == 0
    after_term = state(r, jid)
    assert after_term["ex"] == "1"
    assert int(after_term["c"]) == max(rows(r))
    assert len(rows(r)) == len(set(rows(r)))  # nothing repeated yet
    after_term_rows = len(rows(r))

    # 2. SIGKILL mid-run: the next worker resumes from the last flushed cursor
    second = start_worker(*args, env=env, config_text=QUICK)
    wait_until(lambda: r.llen("test:rows") >= 1_500, timeout=30)
    started = runs(r)[-1]["at"]
    second.kill()
    killed_at = time.time()
    done_before_kill = rows(r)
    flushed = int(state(r, jid)["c"])
    repeats_expected = sum(1 for row in done_before_kill if row > flushed)
    killed_run_rows = len(done_before_kill) - after_term_rows

    # 3. max_iteration_runtime: interrupted and put back every 0.6 s until done
    third = start_worker(*args, env={**env, "KIQ_TEST_MAX_RUNTIME": "0.6"}, config_text=QUICK)
    wait_until(lambda: r.exists(f"it-{jid}") == 0, timeout=60)
    wait_until(lambda: "complete" in r.lrange("test:hooks", 0, -1), timeout=10)
    third.stop()

    done = rows(r)
    assert set(done) == set(range(1, ROWS + 1))  # every row, none skipped
    counts = Counter(done)
    repeated = sum(n - 1 for n in counts.values())
    assert repeated == repeats_expected  # the only repeats: work after the last flush
    # ... and that is at most one flush interval of work (plus the batch in hand)
    throughput = killed_run_rows / max(killed_at - started, 0.1)  # rows/s of that run
    assert repeated <= throughput * 0.5 * 1.5 + 50, (repeated, throughput)
    executions = [run["ex"] for run in runs(r)]
    assert executions == list(range(1, len(executions) + 1))
    assert len(executions) >= 4  # TERM, SIGKILL, then at least one max_iteration_runtime stop
    hooks = r.lrange("test:hooks", 0, -1)
    assert hooks[0] == "start"
    assert hooks.count("resume") == len(executions) - 1
    assert hooks[-1] == "complete"
    assert r.llen("queue:iter") == 0
    assert r.zcard("retry") == 0
    assert r.zcard("dead") == 0


def test_ruby_flush_state_is_resumed_by_kiq(
    config: Config,
    r: redis.Redis,
    redis_url: str,
    tmp_path: Path,
    start_worker: Callable[..., Worker],
) -> None:
    """State written as Ruby's ``flush_state`` writes it: HSET ex/c/rt, EXPIRE NX."""
    db = str(tmp_path / "rows.db")
    iter_jobs.make_table(db, 500)
    jid = "0123456789abcdef01234567"
    ruby(RUBY_FLUSH, redis_url, jid)  # Sidekiq::Job::Iterable#flush_state, from Ruby
    payload = {"class": "iter_jobs.ExportRowsJob", "args": [db], "jid": jid, "queue": "iter"}
    kiq.Client(config).push(payload)
    worker = start_worker("-r", "iter_jobs", "-q", "iter", env={"KIQ_TEST_BATCH_COST": "0"})
    wait_until(lambda: "complete" in r.lrange("test:hooks", 0, -1), timeout=30)
    worker.stop()
    assert sorted(rows(r)) == list(range(251, 501))  # from the cursor on, nothing before
    assert runs(r)[0]["ex"] == 4
    assert runs(r)[0]["cursor"] == 250
    assert r.lrange("test:hooks", 0, -1) == ["resume", "stop", "complete"]
    assert r.exists(f"it-{jid}") == 0  # unlinked on completion, as Ruby's cleanup


def test_kiq_flush_writes_what_ruby_reads(config: Config, r: redis.Redis) -> None:
    """``ex`` an integer, ``c`` JSON, ``rt`` a float, the TTL set once with NX."""
    store = config.store
    assert store.flush_iteration("j1", 2, b'{"id":41}', 1.25) is False
    raw = state(r, "j1")
    assert raw == {"ex": "2", "c": '{"id":41}', "rt": "1.25"}
    assert ITERATION_TTL - 5 <= r.ttl("it-j1") <= ITERATION_TTL
    r.expire("it-j1", 100)
    store.flush_iteration("j1", 3, b"null", 2.0)
    assert r.ttl("it-j1") <= 100  # NX: a later flush never extends the first TTL
    r.hset("it-j1", "cancelled", 1_733_500_000)
    assert store.flush_iteration("j1", 3, b"null", 2.5) is True


RUBY_READ = """
require "redis"
require "json"
r = Redis.new(url: ARGV[0])
state = r.hgetall("it-#{ARGV[1]}")
# what Sidekiq::Job::Iterable#fetch_previous_iteration_state does with it
puts JSON.generate({"ex" => state["ex"].to_i, "c" => JSON.parse(state["c"]),
                    "rt" => state["rt"].to_f, "ttl" => r.ttl("it-#{ARGV[1]}")})
"""

RUBY_FLUSH = """
require "redis"
require "json"
r = Redis.new(url: ARGV[0])
key = "it-#{ARGV[1]}"
# Sidekiq::Job::Iterable#flush_state after three executions, cursor 250, 12.5 s
r.multi do |pipe|
  pipe.hset(key, {"ex" => 3, "c" => JSON.generate(250), "rt" => 12.5})
  pipe.expire(key, 30 * 24 * 60 * 60, nx: true)
  pipe.hget(key, "cancelled")
end
"""

RUBY_CANCEL = """
require "redis"
r = Redis.new(url: ARGV[0])
key = "it-#{ARGV[1]}"
# Sidekiq::Job::Iterable#cancel! (and Client#cancel! in 8.x), command for command
r.pipelined do |p|
  p.hsetnx(key, "cancelled", Time.now.to_i)
  p.hget(key, "cancelled")
  p.expire(key, 30 * 24 * 60 * 60, nx: true)
end
"""


def ruby(script: str, *args: str) -> str:
    needs.needs_ruby_gem("redis")
    return subprocess.run(
        ["ruby", "-e", script, *args], check=True, capture_output=True, text=True, timeout=30
    ).stdout


def test_ruby_reads_kiq_state(config: Config, redis_url: str, tmp_path: Path) -> None:
    config.store.flush_iteration("j2", 5, kiq.payload.dumps({"after": 1200}), 3.75)
    seen = json.loads(ruby(RUBY_READ, redis_url, "j2"))
    assert seen["ex"] == 5
    assert seen["c"] == {"after": 1200}
    assert seen["rt"] == 3.75
    assert ITERATION_TTL - 30 <= seen["ttl"] <= ITERATION_TTL


def test_ruby_cancel_stops_a_running_kiq_iterable_job(
    config: Config, r: redis.Redis, redis_url: str, start_worker: Callable[..., Worker]
) -> None:
    jid = iter_jobs.CountJob.perform_async(100_000)
    assert jid is not None
    worker = start_worker("-r", "iter_jobs", "-q", "iter")
    wait_until(lambda: r.llen("test:items") >= 20, timeout=30)
    ruby(RUBY_CANCEL, redis_url, jid)
    wait_until(lambda: r.hget(f"kiq|fate|{jid}", "fate") == "cancelled", timeout=10)
    worker.stop()
    assert r.lrange("test:hooks", 0, -1) == ["cancel"]
    assert r.llen("test:items") < 100_000
    assert r.exists(f"it-{jid}") == 0  # completed (Ruby's rule: cancel ends the job)
    assert r.llen("queue:iter") == 0
    assert r.zcard("retry") == 0
    assert r.zcard("dead") == 0


def test_async_iterable_job_runs_and_resumes_from_its_cursor(
    config: Config, r: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    jid = "abcdefabcdefabcdefabcdef"
    config.store.flush_iteration(jid, 1, b"10", 0.5)
    payload = {"class": "iter_jobs.AsyncCountJob", "args": [30], "jid": jid, "queue": "iter"}
    kiq.Client(config).push(payload)
    worker = start_worker("-r", "iter_jobs", "-q", "iter", env={"KIQ_TEST_BATCH_COST": "0"})
    wait_until(lambda: r.llen("test:items") >= 20 and r.exists(f"it-{jid}") == 0, timeout=30)
    worker.stop()
    assert [int(x) for x in r.lrange("test:items", 0, -1)] == list(range(10, 30))


# -- in-process: hooks and enumerators ------------------------------------------------


class Collect(kiq.IterableJob, queue="iter"):
    seen: ClassVar[list[Any]] = []
    hooks: ClassVar[list[str]] = []

    def build_enumerator(self, n: int, *, cursor: Any) -> Any:
        return kiq.iter.batches(list(range(n)), 3, cursor=cursor)

    def each_iteration(self, batch: list[int], n: int) -> None:
        if batch == [6, 7, 8] and not Collect.hooks.count("failed"):
            Collect.hooks.append("failed")
            raise RuntimeError("boom")
        Collect.seen.extend(batch)

    def around_iteration(self, call: Callable[[], Any]) -> Any:
        Collect.hooks.append("around")
        return call()

    def on_start(self) -> None:
        Collect.hooks.append("start")

    def on_resume(self) -> None:
        Collect.hooks.append("resume")


def test_an_error_flushes_so_the_retry_resumes_at_the_failing_item(
    config: Config, r: redis.Redis
) -> None:
    with pytest.raises(RuntimeError):
        Collect.set(jid="c" * 24).perform_inline(10)
    assert state(r, "c" * 24)["c"] == "2"  # the batch that failed, not the one after it
    Collect.set(jid="c" * 24).perform_inline(10)
    assert Collect.seen == list(range(10))
    assert [h for h in Collect.hooks if h != "around"] == ["start", "failed", "resume"]
    assert Collect.hooks.count("around") == 3 + 2  # 0-2, 3-5, 6-8 (failed); 6-8, 9
    assert r.exists("it-" + "c" * 24) == 0


def test_an_iterable_job_must_not_define_perform() -> None:
    with pytest.raises(kiq.ConfigError, match="must not define perform"):

        class Bad(kiq.IterableJob):
            def perform(self, *args: Any) -> None: ...


def test_enumerators_yield_each_item_with_its_own_cursor(tmp_path: Path) -> None:
    assert list(kiq.iter.items("abc", cursor=1)) == [("b", 1), ("c", 2)]
    assert list(kiq.iter.batches(list(range(5)), 2)) == [([0, 1], 0), ([2, 3], 1), ([4], 2)]
    assert list(kiq.iter.range_items(3, 6, cursor=4)) == [(4, 4), (5, 5)]
    path = tmp_path / "in.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "name"])
        writer.writerows([[i, f"n{i}"] for i in range(4)])
    assert [(row["id"], c) for row, c in kiq.iter.csv_rows(str(path), cursor=2)] == [
        ("2", 2),
        ("3", 3),
    ]
    with pytest.raises(ValueError, match="offset"):
        list(kiq.iter.items("abc", cursor="x"))


def test_sqlalchemy_batches_are_keyset_pages_that_resume_without_skipping(tmp_path: Path) -> None:
    from sqlalchemy import select

    db = str(tmp_path / "k.db")
    iter_jobs.make_table(db, 7)
    session = iter_jobs._session(db)
    Row = iter_jobs.Row
    pages = [
        ([row.id for row in b], c)
        for b, c in kiq.iter.sqlalchemy_batches(session, select(Row), Row.id, batch_size=3)
    ]
    assert pages == [([1, 2, 3], None), ([4, 5, 6], 3), ([7], 6)]
    resumed = kiq.iter.sqlalchemy_batches(session, select(Row), Row.id, cursor=3, batch_size=3)
    assert [[row.id for row in b] for b, _ in resumed] == [[4, 5, 6], [7]]
    session.close()


def test_django_batches_page_a_queryset_by_key() -> None:
    class Item:
        def __init__(self, pk: int) -> None:
            self.pk = pk

    class QuerySet:  # the three queryset methods django_batches uses
        def __init__(self, items: list[Item]) -> None:
            self.items = items

        def filter(self, **kw: int) -> QuerySet:
            return QuerySet([i for i in self.items if i.pk > kw["pk__gt"]])

        def order_by(self, field: str) -> QuerySet:
            return QuerySet(sorted(self.items, key=lambda i: i.pk))

        def __getitem__(self, s: slice) -> list[Item]:
            return self.items[s]

    qs = QuerySet([Item(i) for i in (5, 1, 3, 2, 4)])
    pages = [([i.pk for i in b], c) for b, c in kiq.iter.django_batches(qs, batch_size=2)]
    assert pages == [([1, 2], None), ([3, 4], 2), ([5], 4)]


def test_quiet_puts_a_running_iterable_job_back_at_once_and_another_worker_resumes_it(
    config: Config, r: redis.Redis, start_worker: Callable[..., Worker]
) -> None:
    jid = iter_jobs.CountJob.perform_async(100_000)
    quiet = start_worker("-r", "iter_jobs", "-q", "iter")
    wait_until(lambda: r.llen("test:items") >= 20, timeout=30)
    quiet.signal(signal.SIGTSTP)
    wait_until(lambda: r.llen("queue:iter") == 1, timeout=10)  # back while the process lives
    assert quiet.proc.poll() is None
    cursor = int(state(r, str(jid))["c"])
    assert cursor == r.llen("test:items")  # the next item, none lost, none done twice
    other = start_worker("-r", "iter_jobs", "-q", "iter")
    wait_until(lambda: r.llen("test:items") >= cursor + 20, timeout=30)
    kiq.api.cancel(str(jid))
    wait_until(lambda: r.hget(f"kiq|fate|{jid}", "fate") == "cancelled", timeout=10)
    other.stop()
    quiet.stop()
    items = [int(x) for x in r.lrange("test:items", 0, -1)]
    assert items == list(range(len(items)))  # in order across both workers, no repeat
    assert state(r, str(jid)) == {}
