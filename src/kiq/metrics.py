"""Per-job-class execution metrics, in Sidekiq 7's and 8's Redis formats (sidekiq-wire.md §1.4).

Why: the Web UI's Metrics page (issue 6) shows, per job class, executions, failures
and time over the last hours, as Sidekiq 7+ does. Counting in Redis on every job would
cost a round trip per job, so a server middleware counts in memory and the launcher
``flush``-es the counts once per heartbeat, as Sidekiq's ExecutionTracker does.

Keys (built by ``kiq.keys.Keys``, written by ``Store.flush_metrics``; bounded: one
hash per minute plus one histogram per class per minute, all expiring after ``TTL`` =
8 hours; ``config.key_prefix`` is prepended):

  * ``j|%Y%m%d|%-H:%-M`` HASH: ``<Class>|p`` executions (successes and failures),
    ``<Class>|f`` failures, ``<Class>|ms`` milliseconds of *successful* runs only
    (a failure's time says little about the job's speed; Sidekiq leaves it out too).
  * ``<Class>-%d-%H:%-M`` STRING used as a BITFIELD of 26 unsigned 16-bit counters
    (``OVERFLOW SAT``): how many successful runs fell in each bucket of ``BUCKETS``.

Sidekiq 8 renamed them (same fields, same BITFIELD): ``j|%y%m%d|%-H:%M`` (minute
zero-padded; 8 hours), the 10-minute ``j|%y%m%d|%-H:<tens of minutes>`` (3 days) and
``h|<Class>-%-d-%-H:%-M`` (8 hours). Each flush writes the layouts the live Sidekiq
versions read (``kiq.peers``: 7's unless every live Sidekiq is 8+, 8's when one is, or
``timestamp_format: ms``), still in one pipeline; ``kiq.api.Metrics`` reads both.

The class is ``wrapped`` (ActiveJob) or ``class``, so Sidekiq 7's and 8's Web UIs
reading the same Redis show kiq's numbers next to their own. Times are UTC.

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
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple

from kiq import peers
from kiq.config import Config
from kiq.errors import IterationInterrupted, OverLimit

# The histogram's bucket bounds and labels are the histogram key's layout (kiq.keys).
from kiq.keys import BUCKETS as BUCKETS
from kiq.keys import LABELS as LABELS
from kiq.keys import METRICS_TTL
from kiq.keys import TOTALS_TTL as TOTALS_TTL
from kiq.payload import Payload

TTL: Final = METRICS_TTL  # seconds every metrics key lives (Sidekiq 7: SHORT_TERM)
TOTALS_MAX_CLASSES: Final = 1000  # classes with totals kept at most (most recently run)


def bucket_key(config: Config, at: datetime) -> str:
    """The minute hash for ``at`` (``config.keys.metric_bucket``)."""
    return config.keys.metric_bucket(at)


def histogram_key(config: Config, klass: str, at: datetime) -> str:
    """The histogram of ``klass`` for the minute ``at`` (``config.keys.histogram``)."""
    return config.keys.histogram(klass, at)


def bucket_index(ms: float) -> int:
    """The histogram bucket of a run that took ``ms`` milliseconds (the first bound above it)."""
    return bisect.bisect_right(BUCKETS, ms)


class _Keys(NamedTuple):
    """One (class, queue)'s counter keys (Metrics.record)."""

    p: str
    p_total: tuple[str, str]
    f: str
    f_total: tuple[str, str]
    ms: str


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
        # (class, queue) -> the keys record() adds to: built once, not three f-strings a job
        self._keys: dict[tuple[str, str], _Keys] = {}

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
        except OverLimit:
            raise  # rescheduled by the limiter, not a run (kiq.retry); counted when it runs
        except BaseException as exc:
            self.record(klass, _not_failed(job, exc, started), queue)
            raise
        self.record(klass, (time.monotonic() - started) * 1000, queue)

    async def acall(
        self,
        job: Any,
        payload: Payload,
        queue: str,
        call_next: Callable[[], Awaitable[Any]],
    ) -> Any:
        """The async chain's form (kiq.middleware.Chain.ainvoke): time the awaited job
        without wrapping its ``perform`` per run (an async capsule runs thousands)."""
        klass = str(payload.get("wrapped") or payload.get("class") or "?")
        started = time.monotonic()
        try:
            result = await call_next()
        except OverLimit:
            raise  # rescheduled by the limiter, not a run
        except BaseException as exc:
            self.record(klass, _not_failed(job, exc, started), queue)
            raise
        self.record(klass, (time.monotonic() - started) * 1000, queue)
        return result

    def _timed_coroutine(
        self, klass: str, perform: Callable[..., Coroutine[Any, Any, Any]], queue: str
    ) -> Callable[..., Coroutine[Any, Any, Any]]:
        @functools.wraps(perform)
        async def timed(*args: Any) -> Any:
            started = time.monotonic()
            try:
                result = await perform(*args)
            except OverLimit:
                raise
            except BaseException as exc:
                self.record(klass, _not_failed(perform, exc, started), queue)
                raise
            self.record(klass, (time.monotonic() - started) * 1000, queue)
            return result

        return timed

    def record(self, klass: str, ms: float | None, queue: str = "default") -> None:
        """Count one run of ``klass`` from ``queue``: ``ms`` it took, or None for a failure."""
        keys = self._keys.get((klass, queue))
        if keys is None:
            if len(self._keys) > 10_000:  # classes or queues named per job: stay bounded
                self._keys.clear()
            keys = self._keys[klass, queue] = _Keys(
                f"{klass}|p",
                (klass, f"p|{queue}"),
                f"{klass}|f",
                (klass, f"f|{queue}"),
                f"{klass}|ms",
            )
        with self._lock:
            self._counts[keys.p] += 1
            self._totals[keys.p_total] += 1
            if ms is None:
                self._counts[keys.f] += 1
                self._totals[keys.f_total] += 1
                return
            self._counts[keys.ms] += round(ms)
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
        try:
            layouts = peers.formats(config)  # cached: the heartbeat keeps it fresh
            config.store.flush_metrics(
                now,
                counts,
                grams,
                self._totals_fields(counts, grams, totals),
                max_classes=TOTALS_MAX_CLASSES,
                seven=layouts.metrics7,
                eight=layouts.metrics8,
            )
        except BaseException:
            self._restore(counts, grams, totals)
            raise
        return len(counts)

    @staticmethod
    def _totals_fields(
        counts: dict[str, int],
        grams: dict[str, list[int]],
        totals: dict[tuple[str, str], int],
    ) -> dict[str, dict[str, int]]:
        """Class -> the fields its cumulative totals hash gets added."""
        fields: defaultdict[str, dict[str, int]] = defaultdict(dict)
        for (klass, field), value in totals.items():
            fields[klass][field] = value
        for klass, gram in grams.items():
            fields[klass]["ms"] = counts.get(f"{klass}|ms", 0)
            fields[klass].update({f"h|{i}": n for i, n in enumerate(gram) if n})
        return fields

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


def _not_failed(job: Any, exc: BaseException, started: float) -> float | None:
    """The time of a run that ended early but did not fail (Sidekiq 7.3.1+ counts an
    interrupted iterable job's time and run, not a failure; kiq a cancelled job too),
    None for a failure. ``job`` is the job or its bound ``perform``."""
    owner = getattr(job, "__self__", job)
    if isinstance(exc, IterationInterrupted) or getattr(owner, "_kiq_cancelled", False):
        return (time.monotonic() - started) * 1000
    return None


def install(config: Config) -> Metrics:
    """Put a Metrics first in ``config.server_middleware`` (replacing one there); return it."""
    metrics = Metrics()
    config.server_middleware.prepend(metrics)
    return metrics
