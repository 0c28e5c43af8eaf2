"""One OS process waiting on a concurrent limiter (tests/test_limits.py's hand-off tests).

Usage: ``python limit_waiter.py REDIS_URL NAME LOCK_TIMEOUT``: takes a slot of the
concurrent limiter ``NAME`` of 1 (waiting up to 30 s), appends its pid to ``test:got``
when it holds it, and releases it at once. The tests SIGKILL it while it waits, or let
it be handed the slot.
"""

from __future__ import annotations

import os
import sys

import redis

import kiq
from kiq.config import Config


def main() -> None:
    url, name, lock_timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
    limiter = kiq.Limiter.concurrent(
        name, 1, wait_timeout=30, lock_timeout=lock_timeout, config=Config(redis_url=url)
    )
    with limiter.within_limit():
        redis.Redis.from_url(url).rpush("test:got", str(os.getpid()))


if __name__ == "__main__":
    main()
