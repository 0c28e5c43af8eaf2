"""Celery 5 on Redis, thread pool: `celery -A celery_app worker -P threads -c 10 -Q default`."""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

URL = os.environ["BENCH_REDIS_URL"]
app = Celery("celery_app", broker=URL)
app.conf.update(task_default_queue="default", broker_connection_retry_on_startup=True)
_redis = redis.Redis.from_url(URL)


@app.task(name="bench.noop")
def noop(*args: object) -> None:
    pass


@app.task(name="bench.latency")
def latency(sent: float, key: str) -> None:
    _redis.rpush(key, repr(time.time() - sent))


def prepare() -> None:
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=3)


def enqueue_one(i: int) -> None:
    noop.delay(i)


def send_latency(sent: float, key: str) -> None:
    latency.delay(sent, key)


if __name__ == "__main__":
    from _driver import run_as_script

    run_as_script("celery_app")
