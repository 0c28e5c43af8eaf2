"""Outage: log once when Redis goes away and once when it is back, with the downtime.

Every loop that talks to Redis (fetcher, waiters, heartbeat, poller) reports here
instead of logging each failed attempt, so a minute-long restart is two lines, not
thousands (issue 4).

Every loop reports errors, but only loops whose success proves Redis takes writes
report recovery: the heartbeat and the waiters' BLMOVE. A fetch or poll that found
nothing to move writes nothing, so it also succeeds against a server that answers
writes with READONLY (a demoted primary), and reporting it would log "back" and
"unreachable" alternately for the whole failover.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("kiq")


class Outage:
    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        self._since: float | None = None

    @property
    def down(self) -> bool:
        return self._since is not None

    def error(self, exc: BaseException) -> None:
        with self._lock:
            if self._since is not None:
                return
            self._since = time.monotonic()
        log.warning("Redis is unreachable at %s (%s); retrying with backoff", self.url, exc)

    def ok(self, sent: float | None = None) -> None:
        """Call only after a command that writes succeeded (see the module docstring).

        ``sent`` is when (monotonic) that command was sent: Redis was back by then, so
        the downtime logged is from the first error to it, not to the moment a loop
        happened to notice (a waiter's BLMOVE blocks 2 s, a beat comes every 5 s: a 6 s
        outage was reported as 10 s, issue 12).
        """
        if self._since is None:
            return
        now = time.monotonic()
        with self._lock:
            since, self._since = self._since, None
        if since is not None:
            downtime = max(0.0, (now if sent is None else min(sent, now)) - since)
            log.warning("Redis is back at %s after %.1f s downtime", self.url, downtime)
