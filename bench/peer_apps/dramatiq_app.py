"""Dramatiq 2.x on Redis: `dramatiq dramatiq_app -p 1 -t 10 -Q default`."""

from __future__ import annotations

import os
import time

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

URL = os.environ["BENCH_REDIS_URL"]
broker = RedisBroker(url=URL)
dramatiq.set_broker(broker)
_redis = redis.Redis.from_url(URL)


@dramatiq.actor(queue_name="default")
def noop(*args: object) -> None:
    pass


@dramatiq.actor(queue_name="default")
def latency(sent: float, key: str) -> None:
    _redis.rpush(key, repr(time.time() - sent))


def prepare() -> None:
    broker.client.ping()


def enqueue_one(i: int) -> None:
    noop.send(i)


def send_latency(sent: float, key: str) -> None:
    latency.send(sent, key)


if __name__ == "__main__":
    from _driver import run_as_script

    run_as_script("dramatiq_app")
