"""Limiters, queue limits and unique locks as read models (issue 16 point 4).

What the Web UI's Limits page, Prometheus and a console show: each limiter's kind,
limit, what is in use now and its counts (got in at once, after a wait, refused) in
total and per minute; the jobs rescheduled by a full limiter; each queue limit with
the jobs holding its permits; the unique locks (how many, look one up by job, release
one). Every Redis command is a ``config.store`` method (kiq.store.limits).

Example::

    from kiq import api

    for limiter in api.limiters():
        print(limiter.name, limiter.kind, limiter.in_use, "/", limiter.limit)
    lock = api.unique_lock({"class": "ImportFileJob", "queue": "default", "args": [7]})
    if lock is not None:
        lock.release()
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from kiq import unique
from kiq.api.base import config_or_default
from kiq.config import Config

HISTORY_MINUTES: Final = 10  # minutes of per-minute counts each limiter carries


@dataclass(frozen=True, slots=True)
class MinuteCounts:
    """One UTC minute of a limiter: calls let in, of them after waiting, and refused."""

    at: datetime
    held: int
    waited: int
    overlimit: int


@dataclass(frozen=True, slots=True)
class LimiterInfo:
    """One limiter as stored: definition, use now, and its counts."""

    name: str
    kind: str
    limit: int
    interval: float  # seconds; a concurrent limiter's lock timeout
    in_use: float  # holders (concurrent), calls this window/bucket level (the others)
    held: int  # calls let in, ever (while the limiter's keys lived)
    immediate: int  # of them at once
    waited: int  # of them after waiting
    overlimit: int  # calls refused (OverLimit raised)
    wait_seconds: float  # total time the waiting calls waited
    last_used: datetime | None
    minutes: list[MinuteCounts] = field(default_factory=list)  # oldest first


def _number(fields: dict[str, str], name: str) -> float:
    try:
        return float(fields.get(name) or 0)
    except ValueError:
        return 0.0


def _in_use(kind: str, fields: dict[str, str], holders: int, now_ms: int) -> float:
    if kind == "concurrent":
        return float(holders)
    interval = max(1.0, _number(fields, "interval"))
    if kind == "bucket":
        return _number(fields, "n") if _number(fields, "w") == now_ms // interval else 0.0
    if kind == "window":
        return float(holders)
    drained = (now_ms - _number(fields, "at")) * _number(fields, "limit") / interval
    return max(0.0, round(_number(fields, "level") - drained, 3))


def limiters(
    config: Config | None = None, *, count: int = 200, minutes: int = HISTORY_MINUTES
) -> list[LimiterInfo]:
    """The ``count`` most recently used limiters, newest first, with ``minutes`` of history.

    Names whose keys have expired are dropped from the index on the way.
    """
    config = config_or_default(config)
    store = config.store
    names = store.limiter_names(count)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    stamps = [now - timedelta(minutes=i) for i in range(minutes - 1, -1, -1)]
    now_ms = int(time.time() * 1000)
    details = store.limiter_details([n for n, _ in names], stamps, now_ms)
    found: list[LimiterInfo] = []
    gone: list[str] = []
    for (name, last), (fields, holders, counts) in zip(names, details, strict=True):
        if not fields:
            gone.append(name)
            continue
        kind = fields.get("kind", "?")
        found.append(
            LimiterInfo(
                name=name,
                kind=kind,
                limit=int(_number(fields, "limit")),
                interval=_number(fields, "interval") / 1000,
                in_use=_in_use(kind, fields, holders, now_ms),
                held=int(_number(fields, "held")),
                immediate=int(_number(fields, "immediate")),
                waited=int(_number(fields, "waited")),
                overlimit=int(_number(fields, "overlimit")),
                wait_seconds=_number(fields, "wait_ms") / 1000,
                last_used=datetime.fromtimestamp(last, UTC) if last else None,
                minutes=[
                    MinuteCounts(at, held, waited, over)
                    for at, (held, waited, over) in zip(stamps, counts, strict=True)
                ],
            )
        )
    store.forget_limiters(gone)
    return found


def limited_jobs(config: Config | None = None) -> dict[str, int]:
    """Jobs rescheduled because a limiter was full, by job class (and ``total``)."""
    return config_or_default(config).store.limited_counts()


@dataclass(frozen=True, slots=True)
class QueueLimitInfo:
    """A queue limit of this Config, with the jobs holding its permits now."""

    queue: str
    concurrency: int  # 0: none
    rate: int  # 0: none
    per: float
    in_use: int


def queue_limits(config: Config | None = None) -> list[QueueLimitInfo]:
    """The ``limits`` of this Config (give the Web UI's Config the workers' file to see
    theirs), each with the jobs every live permit holder has in progress."""
    config = config_or_default(config)
    names = sorted(config.limits)
    usage = config.store.queue_limit_usage(names, int(time.time() * 1000)) if names else []
    return [
        QueueLimitInfo(name, limit.concurrency, limit.rate, limit.per, used)
        for (name, limit), used in zip(((n, config.limits[n]) for n in names), usage, strict=True)
    ]


@dataclass(frozen=True, slots=True)
class UniqueLock:
    """A unique job's lock: its key, the jid holding it and the seconds it has left."""

    key: str
    jid: str
    ttl: float
    config: Config

    def release(self) -> bool:
        """Free the lock if ``jid`` still holds it (compare-and-delete); True if freed.

        The job itself is left where it is: a copy pushed afterwards is no longer refused.
        """
        return self.config.store.unique_release([(self.key, self.jid)]) == 1


@dataclass(frozen=True, slots=True)
class UniqueLocks:
    """How many unique locks exist, and the first ones found."""

    total: int
    locks: list[UniqueLock]


def unique_locks(config: Config | None = None, *, count: int = 100) -> UniqueLocks:
    """Count every ``unique:*`` lock (SCAN) and return up to ``count`` of them."""
    config = config_or_default(config)
    total, rows = config.store.unique_locks(count)
    return UniqueLocks(total, [UniqueLock(k, jid, ms / 1000, config) for k, jid, ms in rows])


def unique_lock(payload: dict[str, Any], config: Config | None = None) -> UniqueLock | None:
    """The lock a job with this ``class``, ``queue`` and ``args`` takes, if it is held.

    ``payload`` may be a stored job's payload (``JobRecord.payload``) or just
    ``{"class": ..., "queue": ..., "args": [...]}``; the class's ``unique_args`` hook
    applies when the class is imported here.
    """
    config = config_or_default(config)
    job = {"queue": "default", "args": [], **payload}
    key = config.store.keys.unique(unique.digest(job))
    held = config.store.unique_holder(key)
    return None if held is None else UniqueLock(key, held[0], held[1] / 1000, config)
