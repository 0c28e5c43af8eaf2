"""Per-job-class execution metrics, in Sidekiq 7's Redis format (shared/sidekiq-wire.md §1.4).

Why: the Web UI's Metrics page (issue 6) shows, per job class, executions, failures
and time over the last hours, as Sidekiq 7+ does. Counting in Redis on every job would
cost a round trip per job, so a server middleware counts in memory and the launcher
``flush``-es the counts once per heartbeat, as Sidekiq's ExecutionTracker does.

Keys (bounded: one hash per minute plus one histogram per class per minute, all
expiring after ``TTL`` = 8 hours; ``config.key_prefix`` is prepended):

  * ``j|%Y%m%d|%-H:%-M`` HASH: ``<Class>|p`` executions (successes and failures),
    ``<Class>|f`` failures, ``<Class>|ms`` milliseconds of *successful* runs only
    (a failure's time says little about the job's speed; Sidekiq leaves it out too).
  * ``<Class>-%d-%H:%-M`` STRING used as a BITFIELD of 26 unsigned 16-bit counters
    (``OVERFLOW SAT``): how many successful runs fell in each bucket of ``BUCKETS``.

The class is ``wrapped`` (ActiveJob) or ``class``, so Sidekiq 7's Web UI reading the
same Redis shows kiq's numbers next to its own. Times are UTC.

Cumulative totals, for Prometheus counters (issue 8), written by the same flush; kiq's
own keys, which Sidekiq neither reads nor writes:

  * ``kiq|totals`` ZSET: job class -> epoch seconds of its last flush; classes idle
    longer than ``TOTALS_TTL`` are dropped, and only the ``TOTALS_MAX_CLASSES`` most
    recent are kept, so a stream of generated class names cannot grow it unbounded.
  * ``kiq|totals|<Class>`` HASH, expiring ``TOTALS_TTL`` after the class last ran:
    ``p|<queue>`` executions and ``f|<queue>`` failures since the hash was created,
    ``ms`` milliseconds of successful runs, ``h|<i>`` successful runs in bucket ``i``
    of ``BUCKETS``. Counters only grow, so a scraper's ``rate()`` works across worker
    restarts; a hash that expired starts again from 0, which Prometheus reads as a reset.

Example::

    metrics = Metrics()                     # the Launcher installs one by default
    config.server_middleware.add(metrics)
    ...
    metrics.flush(config)                   # at each heartbeat
"""

from __future__ import annotations

import bisect
import functools
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, Final

from kiq.config import Config
from kiq.payload import Payload

TTL: Final = 8 * 3600  # seconds every metrics key lives (Sidekiq 7: SHORT_TERM, HISTOGRAM_TTL)
TOTALS_TTL: Final = 30 * 86400  # seconds a class's cumulative totals outlive its last run
TOTALS_MAX_CLASSES: Final = 1000  # classes with totals kept at most (most recently run)
# Upper bounds (ms, exclusive) of the histogram buckets; the last one is "Slow".
BUCKETS: Final = (
    20, 30, 45, 65, 100, 150, 225, 335, 500, 750, 1100, 1700, 2500, 3800, 5750,
    8500, 13000, 20000, 30000, 45000, 65000, 100000, 150000, 225000, 335000,
)  # fmt: skip
LABELS: Final = (
    "20ms", "30ms", "45ms", "65ms", "100ms", "150ms", "225ms", "335ms", "500ms", "750ms",
    "1.1s", "1.7s", "2.5s", "3.8s", "5.75s", "8.5s", "13s", "20s", "30s", "45s",
    "65s", "100s", "150s", "225s", "335s", "Slow",
)  # fmt: skip


def bucket_key(config: Config, at: datetime) -> str:
    """The minute hash for ``at`` (UTC), e.g. ``j|20240301|8:5``."""
    at = at.astimezone(UTC)
    return f"{config.key_prefix}j|{at:%Y%m%d}|{at.hour}:{at.minute}"


def histogram_key(config: Config, klass: str, at: datetime) -> str:
    """The histogram of ``klass`` for the minute ``at`` (UTC), e.g. ``HardJob-05-08:3``."""
    at = at.astimezone(UTC)
    return f"{config.key_prefix}{klass}-{at:%d}-{at:%H}:{at.minute}"


def totals_index_key(config: Config) -> str:
    """The ZSET of job classes that have cumulative totals (``kiq|totals``)."""
    return f"{config.key_prefix}kiq|totals"


def totals_key(config: Config, klass: str) -> str:
    """The cumulative totals of ``klass`` (``kiq|totals|<Class>``)."""
    return f"{config.key_prefix}kiq|totals|{klass}"


def bucket_index(ms: float) -> int:
    """The histogram bucket of a run that took ``ms`` milliseconds (the first bound above it)."""
    return bisect.bisect_right(BUCKETS, ms)


class Metrics:
    """Server middleware counting executions, failures and time per job class in memory.

    Thread-safe (processor threads and the event loop share it); ``flush`` moves the
    counts to Redis and resets them. ``async def perform`` jobs are timed too: the
    async chain runs a plain middleware only up to the job's start, so for them the
    middleware times the job's own coroutine instead.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: defaultdict[str, int] = defaultdict(int)  # "<Class>|p" -> n
        self._grams: dict[str, list[int]] = {}  # class -> counts per bucket
        self._totals: defaultdict[tuple[str, str], int] = defaultdict(int)  # (class, "p|q")

    def __call__(
        self, job: Any, payload: Payload, queue: str, call_next: Callable[[], None]
    ) -> None:
        klass = str(payload.get("wrapped") or payload.get("class") or "?")
        if getattr(type(job), "is_async", False):  # kiq.Job knows; cheaper than inspect
            job.perform = self._timed_coroutine(klass, job.perform, queue)
            call_next()
            return
        started = time.monotonic()
        try:
            call_next()
        except BaseException:
            self.record(klass, None, queue)
            raise
        self.record(klass, (time.monotonic() - started) * 1000, queue)

    def _timed_coroutine(
        self, klass: str, perform: Callable[..., Coroutine[Any, Any, Any]], queue: str
    ) -> Callable[..., Coroutine[Any, Any, Any]]:
        @functools.wraps(perform)
        async def timed(*args: Any) -> Any:
            started = time.monotonic()
            try:
                result = await perform(*args)
            except BaseException:
                self.record(klass, None, queue)
                raise
            self.record(klass, (time.monotonic() - started) * 1000, queue)
            return result

        return timed

    def record(self, klass: str, ms: float | None, queue: str = "default") -> None:
        """Count one run of ``klass`` from ``queue``: ``ms`` it took, or None for a failure."""
        with self._lock:
            self._counts[f"{klass}|p"] += 1
            self._totals[klass, f"p|{queue}"] += 1
            if ms is None:
                self._counts[f"{klass}|f"] += 1
                self._totals[klass, f"f|{queue}"] += 1
                return
            self._counts[f"{klass}|ms"] += round(ms)
            gram = self._grams.get(klass)
            if gram is None:
                gram = self._grams[klass] = [0] * (len(BUCKETS) + 1)
            gram[bucket_index(ms)] += 1

    def flush(self, config: Config, now: datetime | None = None) -> int:
        """Add the counts to this minute's keys in one pipeline; return how many fields.

        On a Redis error the counts are put back (to go out with the next beat) and the
        error is raised for the caller's outage handling.
        """
        with self._lock:
            counts, grams, totals = self._counts, self._grams, self._totals
            self._counts, self._grams, self._totals = defaultdict(int), {}, defaultdict(int)
        if not counts:
            return 0
        now = now or datetime.now(UTC)
        pipe = config.store.redis.pipeline(transaction=False)
        bucket = bucket_key(config, now)
        for field, value in counts.items():
            pipe.hincrby(bucket, field, value)
        pipe.expire(bucket, TTL)
        for klass, gram in grams.items():
            key = histogram_key(config, klass, now)
            args: list[str | int] = ["OVERFLOW", "SAT"]
            for index, n in enumerate(gram):
                if n:
                    args += ["INCRBY", "u16", f"#{index}", n]
            pipe.execute_command("BITFIELD", key, *args)  # type: ignore[no-untyped-call]  # untyped in redis-py
            pipe.expire(key, TTL)
        self._add_totals(pipe, config, now, counts, grams, totals)
        try:
            pipe.execute()
        except BaseException:
            self._restore(counts, grams, totals)
            raise
        return len(counts)

    @staticmethod
    def _add_totals(
        pipe: Any,
        config: Config,
        now: datetime,
        counts: dict[str, int],
        grams: dict[str, list[int]],
        totals: dict[tuple[str, str], int],
    ) -> None:
        fields: defaultdict[str, dict[str, int]] = defaultdict(dict)
        for (klass, field), value in totals.items():
            fields[klass][field] = value
        for klass, gram in grams.items():
            fields[klass]["ms"] = counts.get(f"{klass}|ms", 0)
            fields[klass].update({f"h|{i}": n for i, n in enumerate(gram) if n})
        index, stamp = totals_index_key(config), now.timestamp()
        for klass, values in fields.items():
            key = totals_key(config, klass)
            for field, value in values.items():
                pipe.hincrby(key, field, value)
            pipe.expire(key, TOTALS_TTL)
            pipe.zadd(index, {klass: stamp})
        pipe.zremrangebyscore(index, "-inf", stamp - TOTALS_TTL)
        pipe.zremrangebyrank(index, 0, -TOTALS_MAX_CLASSES - 1)
        pipe.expire(index, TOTALS_TTL)

    def _restore(
        self,
        counts: dict[str, int],
        grams: dict[str, list[int]],
        totals: dict[tuple[str, str], int],
    ) -> None:
        with self._lock:
            for key, value in totals.items():
                self._totals[key] += value
            for field, value in counts.items():
                self._counts[field] += value
            for klass, gram in grams.items():
                mine = self._grams.setdefault(klass, [0] * len(gram))
                self._grams[klass] = [a + b for a, b in zip(mine, gram, strict=True)]


def install(config: Config) -> Metrics:
    """Put a Metrics first in ``config.server_middleware`` (replacing one there); return it."""
    metrics = Metrics()
    config.server_middleware.prepend(metrics)
    return metrics
