"""Counters and metrics: ``stat:*``, Sidekiq 7's per-minute metrics, kiq's totals, deploys.

Why one file: everything a dashboard or a scraper counts is written here by the
heartbeat's flush (one pipeline each for the counters and the per-class metrics) and
read here by the admin API, so the key layout of each counter is used in one place.
The counting itself (in memory, per job) is ``kiq.metrics``'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

from kiq.keys import (
    DEPLOY_LOCK_TTL,
    DEPLOY_MARK_TTL,
    METRICS_MID_TTL,
    METRICS_TTL,
    STAT_TTL,
    TOTALS_TTL,
)
from kiq.store.connection import Connection


class Counters(Connection):
    """The counters half of ``Store`` (see the module docstring)."""

    # -- stat:processed / stat:failed -------------------------------------------------
    def flush_stats(self, processed: int, failed: int, day: date) -> None:
        """INCRBY the totals and the day's counters (which expire after 5 years).

        One pipeline, not a MULTI: counters only add, and a flush cut short is a
        statistic off by a few, never a job lost."""
        pipe = self._pipeline()
        for kind, count in (("processed", processed), ("failed", failed)):
            if count:
                pipe.incrby(self.keys.stat(kind), count)
                pipe.incrby(self.keys.stat_daily(kind, day), count)
                pipe.expire(self.keys.stat_daily(kind, day), STAT_TTL)
        if len(pipe):
            pipe.execute()

    def stats(self) -> list[Any]:
        """One pipeline for the dashboard: processed, failed, ZCARD schedule/retry/dead,
        SCARD processes and the oldest job of ``default`` (Sidekiq 6.4's Stats)."""
        k = self.keys
        pipe = self._pipeline()
        pipe.get(k.stat("processed"))
        pipe.get(k.stat("failed"))
        pipe.zcard(k.schedule)
        pipe.zcard(k.retry)
        pipe.zcard(k.dead)
        pipe.scard(k.processes)
        pipe.lindex(k.queue("default"), -1)
        return list(pipe.execute())

    def daily_stats(self, kind: str, days: Sequence[date]) -> list[bytes | None]:
        """``stat:<kind>:<day>`` for each day (MGET)."""
        return list(self._r.mget([self.keys.stat_daily(kind, day) for day in days]))

    def reset_stats(self, kinds: Sequence[str]) -> None:
        """Set ``stat:<kind>`` to 0 for each kind (MSET)."""
        self._r.mset({self.keys.stat(kind): 0 for kind in kinds})

    # -- per-class metrics (kiq.metrics writes, kiq.api.Metrics reads) --------------------
    def flush_metrics(
        self,
        at: datetime,
        counts: Mapping[str, int],
        grams: Mapping[str, Sequence[int]],
        totals: Mapping[str, Mapping[str, int]],
        *,
        max_classes: int,
        seven: bool = True,
        eight: bool = False,
    ) -> None:
        """Add one flush's counts to the minute of ``at``, in one pipeline.

        ``counts``: ``<Class>|p``/``|f``/``|ms`` -> n for the minute hash; ``grams``:
        class -> runs per histogram bucket (a BITFIELD of saturating u16 counters);
        ``totals``: class -> cumulative fields (``p|<queue>``, ``f|<queue>``, ``ms``,
        ``h|<i>``). The totals index keeps the ``max_classes`` most recently run.
        ``seven``/``eight``: write Sidekiq 7's keys, Sidekiq 8's (its minute hash, its
        10-minute hash, its histogram), or both (kiq.peers decides which).
        Not a MULTI: each command only adds, and a flush cut short by an outage is
        put back by the caller and sent again (so counts may be added twice, never lost
        silently); the per-minute keys are statistics, not jobs.
        """
        k = self.keys
        pipe = self._pipeline()
        buckets: list[tuple[str, int]] = []
        if seven:
            buckets.append((k.metric_bucket(at), METRICS_TTL))
        if eight:
            buckets += [
                (k.metric_bucket8_mid(at), METRICS_MID_TTL),
                (k.metric_bucket8(at), METRICS_TTL),
            ]
        for bucket, ttl in buckets:
            for field, value in counts.items():
                pipe.hincrby(bucket, field, value)
            pipe.expire(bucket, ttl)
        for klass, gram in grams.items():
            args: list[str | int] = ["OVERFLOW", "SAT"]
            for i, n in enumerate(gram):
                if n:
                    args += ["INCRBY", "u16", f"#{i}", n]
            keys = ([k.histogram(klass, at)] if seven else []) + (
                [k.histogram8(klass, at)] if eight else []
            )
            for key in keys:
                pipe.execute_command("BITFIELD", key, *args)
                pipe.expire(key, METRICS_TTL)
        index, stamp = k.totals_index, at.timestamp()
        for klass, values in totals.items():
            key = k.totals(klass)
            for name, count in values.items():
                pipe.hincrby(key, name, count)
            pipe.expire(key, TOTALS_TTL)
            pipe.zadd(index, {klass: stamp})
        pipe.zremrangebyscore(index, "-inf", stamp - TOTALS_TTL)
        pipe.zremrangebyrank(index, 0, -max_classes - 1)
        pipe.expire(index, TOTALS_TTL)
        pipe.execute()

    def metric_minutes(self, times: Sequence[datetime]) -> list[dict[bytes, bytes]]:
        """Each minute's ``<Class>|p``/``|f``/``|ms`` fields, Sidekiq 7's and 8's keys merged.

        One pipeline: HGETALL of both minute hashes. A field in both takes the larger
        value, not the sum: kiq writes both layouts of the same runs when Sidekiq 7 and
        8 share the Redis (a Sidekiq 7 and a Sidekiq 8 running the same class in the
        same minute then show the busier of the two).
        """
        pipe = self._pipeline()
        for at in times:
            pipe.hgetall(self.keys.metric_bucket(at))
            pipe.hgetall(self.keys.metric_bucket8(at))
        replies = pipe.execute()
        return [_larger(replies[i], replies[i + 1]) for i in range(0, len(replies), 2)]

    def metric_job(
        self, klass: str, times: Sequence[datetime], buckets: int
    ) -> list[tuple[list[bytes | None], list[int]]]:
        """Per minute: ``<klass>|p``/``|f``/``|ms`` and the ``buckets`` histogram counters,
        each the larger of Sidekiq 7's and 8's keys (as ``metric_minutes``)."""
        k = self.keys
        pipe = self._pipeline()
        rest = [("u16", f"#{i}") for i in range(1, buckets)]
        fields = [f"{klass}|{m}" for m in ("p", "f", "ms")]
        for at in times:
            pipe.hmget(k.metric_bucket(at), fields)
            pipe.bitfield_ro(k.histogram(klass, at), "u16", "#0", items=rest)
            pipe.hmget(k.metric_bucket8(at), fields)
            pipe.bitfield_ro(k.histogram8(klass, at), "u16", "#0", items=rest)
        replies = pipe.execute()
        found: list[tuple[list[bytes | None], list[int]]] = []
        for i in range(0, len(replies), 4):
            values7, gram7, values8, gram8 = replies[i : i + 4]
            values = [
                b if a is None or (b is not None and _int(b) > _int(a)) else a
                for a, b in zip(values7, values8, strict=True)
            ]
            found.append((values, [max(a, b) for a, b in zip(gram7, gram8, strict=True)]))
        return found

    def totals(self) -> list[tuple[str, dict[bytes, bytes]]]:
        """Every class in the totals index, by name, with its totals hash ({} if expired)."""
        classes = sorted(
            k.decode(errors="replace") for k in self._r.zrange(self.keys.totals_index, 0, -1)
        )
        pipe = self._pipeline()
        for klass in classes:
            pipe.hgetall(self.keys.totals(klass))
        return list(zip(classes, pipe.execute(), strict=True))

    # -- deploy marks (Sidekiq::Deploy) ---------------------------------------------------
    def deploy_mark(self, label: str, stamp: str, day: date) -> bool:
        """Sidekiq::Deploy.mark!: SET deploylock-<label> NX EX 60, then HSETNX the day's
        marks. False when the lock was held. Two steps, safe: the lock only keeps a
        rollout to one mark a minute; a crash between them loses one mark, not a job."""
        if not self._r.set(self.keys.deploy_lock(label), stamp, nx=True, ex=DEPLOY_LOCK_TTL):
            return False
        key = self.keys.deploy_marks(day)
        pipe = self._pipeline(transaction=True)
        pipe.hsetnx(key, stamp, label)
        pipe.expire(key, DEPLOY_MARK_TTL)
        pipe.execute()
        return True

    def deploy_marks(self, days: Sequence[date]) -> list[dict[bytes, bytes]]:
        """HGETALL of each day's marks (ISO minute -> label)."""
        pipe = self._pipeline()
        for day in days:
            pipe.hgetall(self.keys.deploy_marks(day))
        return list(pipe.execute())


def _int(value: bytes) -> int:
    try:
        return int(value)
    except ValueError:
        return 0


def _larger(a: dict[bytes, bytes], b: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """Field by field, the larger count of two minute hashes (see ``metric_minutes``)."""
    if not b:
        return a
    merged = dict(a)
    for field, value in b.items():
        if field not in merged or _int(value) > _int(merged[field]):
            merged[field] = value
    return merged
