"""One of several OS processes pushing the same unique job at once (tests/test_unique.py,
bench/unique_stress.py).

Usage: ``python unique_pusher.py REDIS_URL PUSHES UNIQUE_FOR``. Waits on a start token
(BLPOP ``test:go``) so every process starts pushing together, pushes ``UniqueRecord(1)``
with ``unique_for`` PUSHES times, and appends each accepted jid with the time it was
accepted to ``test:accepted`` (refused pushes return None and record nothing).
"""

from __future__ import annotations

import json
import sys
import time

import redis

from kiq.client import Client
from kiq.config import Config


def main() -> None:
    url, pushes, unique_for = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    r = redis.Redis.from_url(url)
    client = Client(Config(redis_url=url))
    item = {"class": "UniqueRecord", "args": [1], "unique_for": unique_for}
    if r.blpop(["test:go"], timeout=60) is None:
        raise SystemExit("no start token within 60 s")
    accepted = []
    for _ in range(pushes):
        jid = client.push(dict(item))
        if jid is not None:
            accepted.append(json.dumps([jid, time.time()]))
    if accepted:
        r.rpush("test:accepted", *accepted)
    r.rpush("test:finished", "1")


if __name__ == "__main__":
    main()
