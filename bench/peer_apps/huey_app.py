"""Huey on Redis, 10 threads: `huey_consumer huey_app.huey -w 10 -k thread`."""

from __future__ import annotations

import os
import time

import redis
from huey import RedisHuey

URL = os.environ["BENCH_REDIS_URL"]
huey = RedisHuey("bench", url=URL)
_redis = redis.Redis.from_url(URL)


@huey.task()
def noop(*args: object) -> None:
    pass


@huey.task()
def latency(sent: float, key: str) -> None:
    _redis.rpush(key, repr(time.time() - sent))


def prepare() -> None:
    _redis.ping()


def enqueue_one(i: int) -> None:
    noop(i)


def send_latency(sent: float, key: str) -> None:
    latency(sent, key)


if __name__ == "__main__":
    from _driver import run_as_script

    run_as_script("huey_app")
