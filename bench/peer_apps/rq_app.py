"""RQ 2.x: `rq worker -w rq.worker.SimpleWorker -u $BENCH_REDIS_URL default` (1 slot)."""

from __future__ import annotations

import os
import time

import redis
from rq import Queue

URL = os.environ["BENCH_REDIS_URL"]
_redis = redis.Redis.from_url(URL)
queue = Queue("default", connection=_redis)


def noop(*args: object) -> None:
    pass


def latency(sent: float, key: str) -> None:
    _redis.rpush(key, repr(time.time() - sent))


def prepare() -> None:
    _redis.ping()


def enqueue_one(i: int) -> None:
    queue.enqueue(noop, i)


def fill(n: int) -> None:
    for start in range(0, n, 1000):
        queue.enqueue_many(
            [Queue.prepare_data(noop, (i,)) for i in range(start, min(n, start + 1000))]
        )


def send_latency(sent: float, key: str) -> None:
    queue.enqueue(latency, sent, key)


if __name__ == "__main__":
    from _driver import run_as_script

    run_as_script("rq_app")
