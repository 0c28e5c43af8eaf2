"""Jobs for the browser tests, loaded by ``kiq worker -r <this file>``.

WebProgress reports progress while it waits for the test to release it, so the Busy
page has running jobs with progress bars to show (and to screenshot).
"""

from __future__ import annotations

import os
import time

import redis

import kiq

_redis = redis.Redis.from_url(os.environ.get("KIQ_REDIS_URL", "redis://127.0.0.1:6379/15"))
RELEASE = "test:web:release"


class WebProgress(kiq.Job, name="WebProgress"):
    """Report progress until the test sets ``test:web:release`` (at most 60 s)."""

    def perform(self, report: str, step: float) -> None:
        started = time.monotonic()
        while not _redis.exists(RELEASE) and time.monotonic() - started < 60:
            done = min(95.0, step * (time.monotonic() - started + 1))
            self.progress(done, f"{report}: {done:.0f}% of rows imported")
            time.sleep(0.05)
