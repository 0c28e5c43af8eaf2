"""Time every Web UI page with 100,000 jobs in a queue and 10,000 retries (issue 6).

Fills a private Redis database (default redis://127.0.0.1:6379/13, flushed first; db 0
is refused), then requests each page through Starlette's TestClient (in process, so
the figure is the app's own time: kiq.api's Redis work plus rendering) and prints the
median and worst of ``--runs`` requests per page as a Markdown table. Exits 1 if a
median passes ``--budget-ms`` (200).

    python bench/web_bench.py [--redis-url redis://127.0.0.1:6379/13] [--runs 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from typing import Any

import orjson
import redis

from kiq.api import RetrySet
from kiq.config import Config
from kiq.metrics import Metrics
from kiq.payload import encode_backtrace
from kiq.web import create_app

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Starlette >= 1 prefers httpx2 and says so at import
    from starlette.testclient import TestClient

QUEUE_JOBS = 100_000
RETRIES = 10_000
OTHERS = 1_000  # scheduled and dead entries


def job(i: int, **extra: Any) -> dict[str, Any]:
    now = time.time()
    return {
        "class": f"App::Jobs::Job{i % 17}",
        "args": [i, {"account": f"acme-{i % 300}", "items": list(range(i % 5))}],
        "jid": f"{i:024x}",
        "queue": "default",
        "retry": True,
        "created_at": now - i,
        "enqueued_at": now - i,
        **extra,
    }


def fill(config: Config) -> None:
    config.store.flushdb()
    client = redis.Redis.from_url(config.store.url)  # the bench's own: the store's is private
    pipe = client.pipeline(transaction=False)
    for start in range(0, QUEUE_JOBS, 5_000):
        pipe.lpush("queue:default", *[orjson.dumps(job(i)) for i in range(start, start + 5_000)])
    pipe.sadd("queues", "default", "low", "critical")
    pipe.lpush("queue:low", *[orjson.dumps(job(i, queue="low")) for i in range(500)])
    backtrace = encode_backtrace([f"app/jobs/job.py:{n} in perform" for n in range(30)])
    now = time.time()
    for start in range(0, RETRIES, 2_000):
        entries = {
            orjson.dumps(
                job(
                    i,
                    error_class="Net::ReadTimeout",
                    error_message=f"upstream {i} did not answer",
                    error_backtrace=backtrace,
                    failed_at=now,
                    retry_count=i % 20,
                )
            ): now + 60 + i
            for i in range(QUEUE_JOBS + start, QUEUE_JOBS + start + 2_000)
        }
        pipe.zadd("retry", entries)
    pipe.zadd("schedule", {orjson.dumps(job(i)): now + i for i in range(OTHERS)})
    pipe.zadd("dead", {orjson.dumps(job(i, error_class="X")): now - i for i in range(OTHERS)})
    pipe.execute()
    client.close()
    metrics = Metrics()
    for minute in range(60):
        for i in range(200):
            metrics.record(f"App::Jobs::Job{i % 17}", (i * 37) % 900 if i % 23 else None)
        metrics.flush(config, now=_minutes_ago(minute))


def _minutes_ago(minutes: int) -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) - timedelta(minutes=minutes)


def pages(config: Config) -> list[tuple[str, str]]:
    entry = RetrySet(config).page(5_000, 1)[0]
    return [
        ("Dashboard", "/"),
        ("Dashboard, 3 months", "/?days=90"),
        ("/stats (live graph poll)", "/stats"),
        ("Busy", "/busy"),
        ("Queues", "/queues"),
        ("Queue, page 1 (100k jobs)", "/queues/default"),
        ("Queue, page 4,000 (oldest)", "/queues/default?page=4000"),
        ("Queue, oldest first", "/queues/default?direction=asc"),
        ("Retries, page 1 (10k)", "/retries"),
        ("Retries, page 400", "/retries?page=400"),
        ("Retries, newest first, 100/page", "/retries?direction=desc&count=100"),
        ("Retries, filter (ZSCAN)", "/retries?substr=upstream+10999"),
        ("Retry detail", f"/retries/{entry.score!r}-{entry.jid}"),
        ("Scheduled", "/scheduled"),
        ("Dead", "/morgue"),
        ("Metrics, 1 hour", "/metrics"),
        ("Metrics, 8 hours", "/metrics?minutes=480"),
        ("Metrics, one class", "/metrics/App::Jobs::Job3"),
        ("Recurring", "/recurring"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--budget-ms", type=float, default=200.0)
    args = parser.parse_args()
    if args.redis_url.rstrip("/").endswith("/0") or args.redis_url.count("/") < 3:
        parser.error("give a private database number (not db 0): it is flushed")
    config = Config(redis_url=args.redis_url)
    started = time.monotonic()
    fill(config)
    print(
        f"filled in {time.monotonic() - started:.1f}s: {QUEUE_JOBS:,} queued, {RETRIES:,} retries"
    )
    over = []
    with TestClient(create_app(config)) as client:
        print("\n| page | median ms | worst ms |\n|---|---:|---:|")
        for name, path in pages(config):
            assert client.get(path).status_code == 200, path  # warm-up (templates, pools)
            times = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                response = client.get(path)
                times.append((time.perf_counter() - t0) * 1000)
                assert response.status_code == 200, (path, response.status_code)
            median = statistics.median(times)
            print(f"| {name} | {median:.1f} | {max(times):.1f} |")
            if median > args.budget_ms:
                over.append(name)
    config.store.flushdb()
    if over:
        print(f"\nover the {args.budget_ms:.0f} ms budget: {', '.join(over)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
