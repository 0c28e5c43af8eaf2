"""The admin and read model: Sidekiq's ``sidekiq/api.rb`` in Python.

What Redis holds, seen as objects: ``Stats`` and ``History`` for the dashboard,
``Queue`` and ``JobRecord`` for queues, ``ScheduledSet``/``RetrySet``/``DeadSet`` and
``SortedEntry`` for the sorted sets, ``ProcessSet``/``Process`` for heartbeats and
``WorkSet``/``Work`` for running jobs; for the Web UI also ``queue_summaries``,
``redis_info``, ``progress``, ``cron_set`` and the per-class ``Metrics``; for
operations ``job_totals`` (the Prometheus counters) and ``deploy_mark``. The Web UI
renders these and nothing else, so the dashboard and the Python API cannot drift
apart (STYLE C.2).

It reads what Ruby Sidekiq 6.4, 7.x and 8.x write as well as kiq's own data
(shared/sidekiq-wire.md §1, §2, §8): payload times as float seconds or integer
milliseconds, busy jobs under ``<identity>:work`` or ``<identity>:workers``,
``concurrency`` in ``info`` or as a hash field, MIME or strict Base64 backtraces and
ActiveJob ``wrapped`` payloads. Each call does the Redis work Sidekiq's does, and pages
in Redis, so one page of a 100,000-job queue costs one LRANGE.

Every class takes an optional ``config`` (default: ``kiq.config.get_default()``);
Redis is reached as ``config.store.redis`` and key names come from ``config.keys``.

Example::

    from kiq.api import Queue, RetrySet, Stats

    stats = Stats()
    print(stats.processed, stats.failed, stats.enqueued)
    for entry in RetrySet():
        if entry.error_class == "TimeoutError":
            entry.retry()
    Queue("low").clear()
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, Final

from kiq import payload as wire
from kiq.client import Client
from kiq.config import Config, get_default
from kiq.errors import JobNotFound, KiqError, PayloadError
from kiq.keys import SIGNAL_TTL
from kiq.metrics import BUCKETS, LABELS, bucket_key, histogram_key, totals_index_key, totals_key
from kiq.payload import Payload

if TYPE_CHECKING:
    from kiq.recurring import CronSet

log = logging.getLogger(__name__)

PAGE_SIZE: Final = 50  # entries per LRANGE/ZRANGE while iterating (Sidekiq's page size)
SCAN_COUNT: Final = 100  # ZSCAN COUNT hint (Sidekiq's scan)
KILL_BATCH: Final = 100  # members moved per round trip by kill_all
HISTORY_MAX_DAYS: Final = 1825  # daily stat keys live 5 years (Sidekiq's limit too)
ACTIVE_JOB_PREFIXES: Final = ("Sidekiq::ActiveJob::", "ActiveJob::QueueAdapters::")
MAILER_JOBS: Final = ("ActionMailer::DeliveryJob", "ActionMailer::MailDeliveryJob")
PROCESS_FIELDS: Final = ("info", "concurrency", "busy", "beat", "quiet", "rss", "rtt_us")


def _config(config: Config | None) -> Config:
    return config if config is not None else get_default()


def _redis(config: Config) -> Any:
    # redis-py types every reply as ``bytes | str`` (or an Awaitable); the Store's
    # client never decodes, so replies are bytes and are converted where they are read.
    return config.store.redis


def _parse(raw: bytes) -> tuple[Payload, bool]:
    """(payload, valid). Like Sidekiq, a member that is not a JSON object reads as {}."""
    try:
        return wire.loads(raw), True
    except PayloadError:
        pass
    try:
        data = json.loads(raw)
    except ValueError:
        return {}, False
    return (data, True) if isinstance(data, dict) else ({}, False)


def _time(value: object) -> datetime | None:
    """A payload time (float seconds or int ms, as Sidekiq 8 reads them) as a UTC datetime."""
    seconds = wire.to_seconds(value)
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


def _epoch(at: datetime | float) -> float:
    if isinstance(at, datetime):
        if at.tzinfo is None:
            raise ValueError(
                f"{at!r} has no time zone; pass an aware datetime such as "
                f"datetime.now(UTC) + timedelta(hours=1), or epoch seconds"
            )
        return at.timestamp()
    return float(at)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _float(value: str | None) -> float | None:
    try:
        return float(value or "")
    except ValueError:
        return None


def _int(value: object) -> int:
    """A count from Redis or JSON (bytes, str, int); 0 when absent or not a number."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, bool) or not isinstance(value, int | str):
        return 0
    try:
        return int(value)
    except ValueError:
        return 0


def _latency(payload: Mapping[str, Any], now: float) -> float:
    """now - enqueued_at, else created_at (Sidekiq 8); 0 when neither is present."""
    for name in ("enqueued_at", "created_at"):
        seconds = wire.to_seconds(payload.get(name))
        if seconds is not None:
            return now - seconds
    return 0.0


def _members(config: Config, key: str) -> list[str]:
    """A SET read with SSCAN (never blocking Redis), de-duplicated and sorted."""
    return sorted({m.decode() for m in _redis(config).sscan_iter(key)})


def _busy_total(config: Config) -> int:
    """Σ ``busy`` over the heartbeat hashes: as fresh as the last beat (Sidekiq the same)."""
    identities = _members(config, config.keys.processes)
    pipe = _redis(config).pipeline(transaction=False)
    for identity in identities:
        pipe.hget(config.keys.process(identity), "busy")
    return sum(_int(busy) for busy in pipe.execute())


# -- Stats ------------------------------------------------------------------------------


class Stats:
    """Cluster counters, as on Sidekiq's dashboard.

    The cheap numbers (``processed``, ``failed``, ``scheduled_size``, ``retry_size``,
    ``dead_size``, ``processes_size``, ``default_queue_latency``) come from one
    pipeline when the Stats is built (Sidekiq 6.4); ``enqueued`` and ``workers_size``
    scan every queue or process, so they are loaded only when read. A Stats is a
    snapshot: build a new one to refresh.

    Example::

        stats = Stats()
        stats.processed, stats.failed, stats.retry_size, stats.default_queue_latency
        stats.queues()      # {"critical": 12, "default": 3}
        stats.reset()       # processed and failed back to 0
    """

    def __init__(self, config: Config | None = None) -> None:
        self.config = _config(config)
        k = self.config.keys
        pipe = _redis(self.config).pipeline(transaction=False)
        pipe.get(k.stat("processed"))
        pipe.get(k.stat("failed"))
        pipe.zcard(k.schedule)
        pipe.zcard(k.retry)
        pipe.zcard(k.dead)
        pipe.scard(k.processes)  # may count a dead process until ProcessSet prunes it
        pipe.lindex(k.queue("default"), -1)
        replies = pipe.execute()
        self.processed, self.failed, self.scheduled_size, self.retry_size = map(_int, replies[:4])
        self.dead_size, self.processes_size = _int(replies[4]), _int(replies[5])
        oldest = replies[6]
        # Seconds the oldest job in ``default`` has waited; 0.0 when it is empty.
        self.default_queue_latency = _latency(_parse(oldest)[0], wire.now()) if oldest else 0.0

    @cached_property
    def enqueued(self) -> int:
        """Jobs waiting in every queue of the ``queues`` set."""
        return sum(self.queues().values())

    @cached_property
    def workers_size(self) -> int:
        """Jobs running now, summed from each process's last heartbeat."""
        return _busy_total(self.config)

    def queues(self) -> dict[str, int]:
        """Queue name -> size, largest first (ties by name)."""
        names = _members(self.config, self.config.keys.queues)
        pipe = _redis(self.config).pipeline(transaction=False)
        for name in names:
            pipe.llen(self.config.keys.queue(name))
        sizes = pipe.execute()
        return dict(sorted(zip(names, sizes, strict=True), key=lambda p: (-p[1], p[0])))

    def reset(self, *names: str) -> None:
        """Set ``stat:processed`` and/or ``stat:failed`` to 0 (default: both)."""
        chosen = names or ("processed", "failed")
        unknown = set(chosen) - {"processed", "failed"}
        if unknown:
            raise ValueError(f"Stats.reset: {sorted(unknown)} unknown; use 'processed', 'failed'")
        _redis(self.config).mset({self.config.keys.stat(name): 0 for name in chosen})
        for name in chosen:
            setattr(self, name, 0)


class History:
    """Daily processed/failed counts (UTC days), newest first.

    Example::

        History(7).processed()    # {"2024-03-01": 120, "2024-02-29": 98, ...}
        History(30, start_date=date(2024, 2, 1)).failed()
    """

    def __init__(
        self, days: int, start_date: date | None = None, config: Config | None = None
    ) -> None:
        if not 1 <= days <= HISTORY_MAX_DAYS:
            raise ValueError(
                f"History: days={days} is out of range; use 1..{HISTORY_MAX_DAYS} "
                f"(daily stats are kept 5 years)"
            )
        self.days = days
        self.start_date = start_date or datetime.now(UTC).date()
        self.config = _config(config)

    def processed(self) -> dict[str, int]:
        """``{"YYYY-MM-DD": jobs processed that day}`` (failures count as processed too)."""
        return self._by_date("processed")

    def failed(self) -> dict[str, int]:
        """``{"YYYY-MM-DD": jobs that failed that day}``."""
        return self._by_date("failed")

    def _by_date(self, kind: str) -> dict[str, int]:
        days = [self.start_date - timedelta(days=i) for i in range(self.days)]
        keys = [self.config.keys.stat_daily(kind, day) for day in days]
        values = _redis(self.config).mget(keys)
        return {day.isoformat(): _int(v) for day, v in zip(days, values, strict=True)}


# -- Queues and job records -----------------------------------------------------------


class Queue:
    """A queue (the LIST ``queue:<name>``), newest job first.

    Example::

        queue = Queue("default")
        queue.size(), queue.latency()
        for job in queue:
            if job.klass == "Billing::ChargeJob" and job.args[0] == 7:
                job.delete()
        queue.page(0, 25)      # the Web UI's first page
        queue.clear()
    """

    def __init__(self, name: str = "default", config: Config | None = None) -> None:
        self.name = name
        self.config = _config(config)
        self.key = self.config.keys.queue(name)

    def __repr__(self) -> str:
        return f"Queue({self.name!r})"

    @classmethod
    def all(cls, config: Config | None = None) -> list[Queue]:
        """Every queue in the ``queues`` set, by name (a push always SADDs it there)."""
        config = _config(config)
        return [cls(name, config) for name in _members(config, config.keys.queues)]

    def size(self) -> int:
        """Jobs waiting (LLEN)."""
        return int(_redis(self.config).llen(self.key))

    def latency(self, now: float | None = None) -> float:
        """Seconds the oldest job has waited (its ``enqueued_at``); 0.0 when empty."""
        oldest = _redis(self.config).lindex(self.key, -1)
        if oldest is None:
            return 0.0
        return _latency(_parse(oldest)[0], wire.now() if now is None else now)

    def __iter__(self) -> Iterator[JobRecord]:
        for raws in self._raw_pages():
            for raw in raws:
                yield JobRecord(raw, self.name, self.config)

    def _raw_pages(self) -> Iterator[list[bytes]]:
        # Sidekiq's Queue#each: pages of 50 from the head, shifted back by however
        # many jobs left the list meanwhile, so deleting while iterating skips none.
        redis = _redis(self.config)
        initial = self.size()
        page = deleted = 0
        while True:
            start = max(page * PAGE_SIZE - deleted, 0)
            raws = redis.lrange(self.key, start, start + PAGE_SIZE - 1)
            if not raws:
                return
            page += 1
            yield raws
            deleted = initial - self.size()

    def page(self, start: int, count: int, *, reverse: bool = False) -> list[JobRecord]:
        """``count`` jobs from offset ``start``, newest first (``reverse``: oldest first).

        One LRANGE, whatever the queue's length (Sidekiq's Paginator).
        """
        if count <= 0 or start < 0:
            return []
        end = start + count - 1
        if reverse:
            raws = _redis(self.config).lrange(self.key, -end - 1, -start - 1)[::-1]
        else:
            raws = _redis(self.config).lrange(self.key, start, end)
        return [JobRecord(raw, self.name, self.config) for raw in raws]

    def find_job(self, jid: str) -> JobRecord | None:
        """The job with this jid, or None. Reads the whole queue: slow on big queues."""
        needle = jid.encode()
        for raws in self._raw_pages():
            for raw in raws:
                if needle in raw and (record := JobRecord(raw, self.name, self.config)).jid == jid:
                    return record
        return None

    def clear(self) -> None:
        """Drop every job and the name from ``queues`` (MULTI UNLINK + SREM)."""
        pipe = _redis(self.config).pipeline(transaction=True)
        pipe.unlink(self.key)
        pipe.srem(self.config.keys.queues, self.name)
        pipe.execute()

    def paused(self) -> bool:
        """Is the queue in kiq's paused set? (kiq workers honour it; Sidekiq OSS does not.)"""
        return bool(_redis(self.config).sismember(self.config.keys.paused, self.name))

    def pause(self) -> None:
        """Stop kiq workers fetching from this queue, within one heartbeat."""
        _redis(self.config).sadd(self.config.keys.paused, self.name)

    def unpause(self) -> None:
        """Let kiq workers fetch from this queue again."""
        _redis(self.config).srem(self.config.keys.paused, self.name)


class JobRecord:
    """One stored job: the raw string as Redis holds it, plus its parsed payload.

    Attributes (None when absent): ``klass``, ``jid``, ``bid``, ``queue``, ``args``,
    ``tags``, ``error_class``, ``error_message``, ``retry_count``, and the times
    ``enqueued_at``, ``created_at``, ``failed_at``, ``retried_at`` as UTC datetimes
    whichever way they were written (float seconds by Sidekiq 6.4/7.x and kiq, integer
    milliseconds by Sidekiq 8). A member that is not valid JSON reads as an empty
    payload whose ``args`` is ``[raw]`` (Sidekiq).

    Example::

        job = Queue("default").page(0, 1)[0]
        job.display_class, job.display_args, job.enqueued_at, job["retry"]
        job.delete()
    """

    def __init__(
        self, raw: bytes | str, queue: str | None = None, config: Config | None = None
    ) -> None:
        self.raw = raw.encode() if isinstance(raw, str) else raw
        self.payload, self.valid = _parse(self.raw)
        self.config = _config(config)
        p = self.payload
        self.queue = queue if queue is not None else _str(p.get("queue"))
        self.klass, self.jid, self.bid = (
            _str(p.get("class")),
            _str(p.get("jid")),
            _str(p.get("bid")),
        )
        self.error_class = _str(p.get("error_class"))
        self.error_message = _str(p.get("error_message"))
        count = p.get("retry_count")
        self.retry_count = count if isinstance(count, int) and not isinstance(count, bool) else None
        self.tags = [str(tag) for tag in p["tags"]] if isinstance(p.get("tags"), list) else []
        self.enqueued_at, self.failed_at = _time(p.get("enqueued_at")), _time(p.get("failed_at"))
        self.retried_at = _time(p.get("retried_at"))
        # created_at falls back to enqueued_at, as Sidekiq's does.
        self.created_at = _time(p.get("created_at")) or self.enqueued_at
        args = p.get("args")
        self.args: list[Any] = (
            [self.value] if not self.valid else args if isinstance(args, list) else []
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(jid={self.jid!r}, class={self.display_class!r})"

    def __getitem__(self, name: str) -> Any:
        """A payload field; a missing one reads as None, like Sidekiq's ``[]``."""
        return self.payload.get(name)

    @property
    def value(self) -> str:
        """The raw JSON as text (what the Web UI posts back to delete a queued job)."""
        return self.raw.decode(errors="replace")

    def latency(self, now: float | None = None) -> float:
        """Seconds since ``enqueued_at`` (else ``created_at``); 0.0 if it has neither."""
        return _latency(self.payload, wire.now() if now is None else now)

    @cached_property
    def display_class(self) -> str:
        """``display_class``, else the ActiveJob class (``Mailer#method`` for mail), else class."""
        override = self.payload.get("display_class")
        if isinstance(override, str):
            return override
        klass = self.klass or ""
        if klass.startswith(ACTIVE_JOB_PREFIXES):
            args = self.args
            job_class = self.payload.get("wrapped") or (args[0] if args else None)
            if job_class in MAILER_JOBS:
                try:
                    return "#".join(str(part) for part in args[0]["arguments"][:2])
                except (LookupError, TypeError):
                    pass
            if isinstance(job_class, str):
                return job_class
        return klass

    @cached_property
    def display_args(self) -> list[Any]:
        """Arguments as a person wants them: ActiveJob unwrapped, encrypted ones hidden."""
        args = self.args
        if (self.klass or "").startswith(ACTIVE_JOB_PREFIXES):
            try:
                return _active_job_args(self.payload.get("wrapped"), args)
            except (LookupError, TypeError, AttributeError):
                return args
        if self.payload.get("encrypt") and args:
            return [*args[:-1], "[encrypted data]"]
        return args

    @cached_property
    def error_backtrace(self) -> list[str] | None:
        """The decoded backtrace lines (strict or MIME Base64, or an old plain array)."""
        value = self.payload.get("error_backtrace")
        if value is None:
            return None
        if isinstance(value, list):
            return [str(line) for line in value]
        try:
            return wire.decode_backtrace(str(value))
        except (ValueError, zlib.error) as exc:
            raise PayloadError(
                f"job {self.jid}: error_backtrace is not Base64(zlib(JSON array)) as Sidekiq "
                f"writes it ({exc}); it starts {str(value)[:40]!r}"
            ) from exc

    def delete(self) -> bool:
        """Remove this exact job from its queue (LREM needs the stored bytes)."""
        if self.queue is None:
            return False
        removed = _redis(self.config).lrem(self.config.keys.queue(self.queue), 1, self.raw)
        return bool(removed)


def _active_job_args(wrapped: object, args: list[Any]) -> list[Any]:
    # Sidekiq 8's JobRecord#display_args for ActiveJob and ActionMailer wrappers.
    job_args: list[Any] = _unwrap_aj(args[0]["arguments"]) if wrapped else []
    kind = wrapped or args[0]
    if kind == "ActionMailer::DeliveryJob":
        return job_args[3:]  # drop mailer class, method and "deliver_now"
    if kind == "ActionMailer::MailDeliveryJob":
        params = job_args[3]
        return [params.get("params"), params.get("args")]
    return job_args


def _unwrap_aj(value: Any) -> Any:
    """ActiveJob's serialised arguments, minus its ``_aj_*`` bookkeeping keys."""
    if isinstance(value, list):
        return [_unwrap_aj(item) for item in value]
    if isinstance(value, dict):
        if len(value) == 1 and "_aj_globalid" in value:
            return value["_aj_globalid"]
        return {k: _unwrap_aj(v) for k, v in value.items() if not k.startswith("_aj_")}
    return value


# -- Sorted sets: schedule, retry, dead -----------------------------------------------


class SortedEntry(JobRecord):
    """A job in ``schedule``, ``retry`` or ``dead``, with its ``score`` (epoch seconds).

    Example::

        for entry in RetrySet():
            entry.at, entry.error_class, entry.retry_count
        entry.retry()                  # back to its queue, retry_count - 1
        entry.reschedule(time.time() + 60)
        entry.kill()                   # to the dead set
    """

    def __init__(self, parent: JobSet, score: float, raw: bytes | str) -> None:
        super().__init__(raw, None, parent.config)
        self.parent = parent
        self.score = float(score)

    @property
    def at(self) -> datetime:
        """When the entry is due (schedule, retry) or when it died (dead)."""
        return datetime.fromtimestamp(self.score, UTC)

    @property
    def id(self) -> str:
        """``"<score>|<jid>"``, Sidekiq's entry id."""
        return f"{self.score}|{self.jid}"

    def delete(self) -> bool:
        """Remove this exact member (ZREM the stored bytes)."""
        return self.parent.delete_by_value(self.raw)

    def retry(self) -> str | None:
        """Push the job to its queue now, with ``retry_count`` lowered by one.

        A manual retry must not use up the job's retry budget (Sidekiq). Returns the
        jid, or None if a client middleware stopped the push; raises JobNotFound if
        someone else moved the entry first.
        """
        raw = self._take()
        payload = wire.loads(raw)
        count = payload.get("retry_count")
        if isinstance(count, int) and not isinstance(count, bool):
            payload["retry_count"] = count - 1
        return self._push(payload, raw)

    def add_to_queue(self) -> str | None:
        """Push the job to its queue now, unchanged (the Web UI's "Add to queue")."""
        raw = self._take()
        return self._push(wire.loads(raw), raw)

    def kill(self) -> None:
        """Move the entry to the dead set (trimmed; death handlers are told)."""
        DeadSet(self.config).kill(self._take())

    def reschedule(self, at: datetime | float) -> None:
        """Give this member a new score; ZADD XX, so it never adds a second copy."""
        score = _epoch(at)
        pipe = _redis(self.config).pipeline(transaction=True)
        pipe.zadd(self.parent.name, {self.raw: score}, xx=True)
        pipe.zscore(self.parent.name, self.raw)
        if pipe.execute()[1] is None:
            raise self.parent._gone(self.score, self.jid)
        self.score = score

    def _take(self) -> bytes:
        # Check before removing, so an unreadable member stays where it is.
        wire.loads(self.raw)
        return self.parent.remove(self.score, self.jid, prefer=self.raw)

    def _push(self, payload: Payload, raw: bytes) -> str | None:
        try:
            return Client(self.config).push(payload)
        except BaseException:
            # Never lose a job: if the push failed, the member goes back where it was.
            _redis(self.config).zadd(self.parent.name, {raw: self.score})
            raise


class JobSet:
    """Base of ScheduledSet, RetrySet and DeadSet: a ZSET of job JSON by epoch seconds.

    Iteration yields SortedEntry highest score first, 50 per ZRANGE.
    """

    def __init__(self, name: str, config: Config | None = None) -> None:
        self.name = name  # the Redis key, e.g. "retry" (with any key prefix)
        self.config = _config(config)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def size(self) -> int:
        """Entries in the set (ZCARD)."""
        return int(_redis(self.config).zcard(self.name))

    def __iter__(self) -> Iterator[SortedEntry]:
        redis = _redis(self.config)
        initial = self.size()
        page = -1
        deleted = 0
        while True:
            start = page * PAGE_SIZE + deleted
            end = start + PAGE_SIZE - 1
            if end >= 0:  # the window ran past the highest member
                if start >= 0:
                    return
                end = -1
            entries = redis.zrange(self.name, start, end, withscores=True)
            if not entries:
                return
            page -= 1
            for raw, score in reversed(entries):
                yield SortedEntry(self, score, raw)
            deleted = initial - self.size()

    def page(self, start: int, count: int, *, reverse: bool = False) -> list[SortedEntry]:
        """``count`` entries from offset ``start``, lowest score first (``reverse``: highest).

        One ZRANGE, whatever the set's size (Sidekiq's Paginator; the dead set is shown
        with ``reverse=True``).
        """
        if count <= 0 or start < 0:
            return []
        entries = _redis(self.config).zrange(
            self.name, start, start + count - 1, desc=reverse, withscores=True
        )
        return [SortedEntry(self, score, raw) for raw, score in entries]

    def scan(self, substr: str, count: int = SCAN_COUNT) -> Iterator[SortedEntry]:
        """Entries whose JSON contains ``substr`` (ZSCAN MATCH; a ``*`` in it is a glob)."""
        match = substr if "*" in substr else f"*{substr}*"
        redis = _redis(self.config)
        for raw, score in redis.zscan_iter(self.name, match=match, count=count):
            yield SortedEntry(self, score, raw)

    def fetch(
        self, score: float | tuple[float, float], jid: str | None = None
    ) -> list[SortedEntry]:
        """Entries at ``score`` (or within ``(min, max)``), optionally only this jid."""
        low, high = score if isinstance(score, tuple) else (score, score)
        entries = _redis(self.config).zrange(self.name, low, high, byscore=True, withscores=True)
        found = [SortedEntry(self, s, raw) for raw, s in entries]
        return [e for e in found if e.jid == jid] if jid is not None else found

    def find_job(self, jid: str) -> SortedEntry | None:
        """The entry with this jid, or None (ZSCAN MATCH ``*<jid>*``)."""
        for entry in self.scan(jid):
            if entry.jid == jid:
                return entry
        return None

    def schedule(self, at: datetime | float, payload: Mapping[str, Any]) -> None:
        """Add a job to this set at ``at`` (ZADD)."""
        _redis(self.config).zadd(self.name, {wire.dumps(payload): _epoch(at)})

    def delete_by_value(self, raw: bytes | str) -> bool:
        """ZREM this exact member; False if it was not there."""
        removed = _redis(self.config).zrem(self.name, raw)
        return bool(removed)

    def delete_by_jid(self, score: float, jid: str) -> bool:
        """Remove the job with this jid at this score (the Web UI's ``<score>-<jid>`` key)."""
        try:
            self.remove(score, jid)
        except JobNotFound:
            return False
        return True

    def remove(self, score: float, jid: str | None, prefer: bytes | None = None) -> bytes:
        """Take the member at ``score`` whose jid matches (``prefer`` first); return it.

        Sidekiq finds entries by score + jid because several jobs may share a score.
        Only the caller whose ZREM succeeds gets the member, so a job that the poller
        (or another admin) took at the same moment is never pushed twice.
        """
        redis = _redis(self.config)
        members = redis.zrange(self.name, score, score, byscore=True)
        candidates = [prefer] if prefer is not None and prefer in members else []
        if jid is not None:
            needle = jid.encode()
            candidates += [
                m for m in members if m != prefer and needle in m and _parse(m)[0].get("jid") == jid
            ]
        for member in candidates:
            if redis.zrem(self.name, member):
                return member
        raise self._gone(score, jid)

    def _gone(self, score: float, jid: str | None) -> JobNotFound:
        return JobNotFound(
            f"job {jid} is no longer in {self.name!r} at score {score}: it was run, "
            f"retried, deleted or rescheduled since it was read; reload the set"
        )

    def clear(self) -> None:
        """Drop every entry (UNLINK)."""
        _redis(self.config).unlink(self.name)

    def delete_all(self) -> None:
        """The Web UI's "Delete All": the same as ``clear()``."""
        self.clear()

    def retry_all(self) -> int:
        """Push every entry to its queue with ``retry_count`` lowered by one; return how many.

        ZPOPMIN one at a time, as Sidekiq 7.3.5+, bounded by the size at the start so
        entries added meanwhile wait for the next call. A member that is not a job is
        put back; a failed push puts its member back and raises.
        """
        return self._push_all(lower_retry_count=True)

    def add_all_to_queue(self) -> int:
        """Push every entry to its queue unchanged (the Web UI's "Add All to Queue")."""
        return self._push_all(lower_retry_count=False)

    def _push_all(self, *, lower_retry_count: bool) -> int:
        redis = _redis(self.config)
        client = Client(self.config)
        skipped: dict[bytes, float] = {}
        pushed = 0
        try:
            for _ in range(self.size()):
                popped = redis.zpopmin(self.name, 1)
                if not popped:
                    break
                raw, score = popped[0]
                try:
                    payload = wire.loads(raw)
                except PayloadError:
                    log.warning("retry_all: %s holds a member that is not a job", self.name)
                    skipped[raw] = score
                    continue
                count = payload.get("retry_count")
                if lower_retry_count and isinstance(count, int) and not isinstance(count, bool):
                    payload["retry_count"] = count - 1
                try:
                    client.push(payload)
                except BaseException:
                    skipped[raw] = score
                    raise
                pushed += 1
        finally:
            if skipped:
                redis.zadd(self.name, skipped)
        return pushed


class _PendingSet(JobSet):
    """Sets whose entries have yet to run (schedule, retry): they can all be killed."""

    def kill_all(self, *, notify: bool = False) -> int:
        """Move every entry to the dead set, trimming once at the end; return how many.

        ZPOPMIN in batches, then one MULTI adding them to ``dead`` (Sidekiq 7.3.5+ does
        the same one at a time, without telling the death handlers by default).
        """
        redis = _redis(self.config)
        dead = DeadSet(self.config)
        moved = 0
        remaining = self.size()
        try:
            while remaining > 0:
                popped = redis.zpopmin(self.name, min(KILL_BATCH, remaining))
                if not popped:
                    break
                remaining -= len(popped)
                dead.bury([raw for raw, _ in popped], notify=notify, trim=False)
                moved += len(popped)
        finally:
            dead.trim()
        return moved


class ScheduledSet(_PendingSet):
    """Jobs pushed with ``perform_in``/``perform_at`` (the ``schedule`` ZSET, score = run at).

    Example::

        for entry in ScheduledSet().scan("ChargeJob"):
            entry.add_to_queue()
    """

    def __init__(self, config: Config | None = None) -> None:
        config = _config(config)
        super().__init__(config.keys.schedule, config)


class RetrySet(_PendingSet):
    """Failed jobs waiting for their next attempt (the ``retry`` ZSET, score = retry at).

    Example::

        RetrySet().retry_all()
        RetrySet().find_job("b4a577edbccf1d805744efa9").kill()
    """

    def __init__(self, config: Config | None = None) -> None:
        config = _config(config)
        super().__init__(config.keys.retry, config)


class DeadSet(JobSet):
    """Jobs that ran out of retries (the ``dead`` ZSET, score = death time).

    Kept to ``config.dead_max_jobs`` entries no older than ``config.dead_timeout``;
    trimming happens whenever something is added, as in Sidekiq.

    Example::

        DeadSet().kill(raw_json)            # add, trim, tell the death handlers
        DeadSet().page(0, 25, reverse=True) # newest deaths first
    """

    def __init__(self, config: Config | None = None) -> None:
        config = _config(config)
        super().__init__(config.keys.dead, config)

    def kill(
        self,
        job: bytes | str | Mapping[str, Any],
        *,
        notify: bool = True,
        exc: BaseException | None = None,
        trim: bool = True,
        now: float | None = None,
    ) -> None:
        """Add a job (raw JSON or payload) now; trim; call ``config.death_handlers``.

        The handlers get the payload and ``exc``, or ``RuntimeError("Job killed by
        API")`` as Sidekiq passes.
        """
        raw = job.encode() if isinstance(job, str) else job
        self.bury([raw if isinstance(raw, bytes) else wire.dumps(raw)], notify, trim, exc, now)

    def bury(
        self,
        raws: list[bytes],
        notify: bool = True,
        trim: bool = True,
        exc: BaseException | None = None,
        now: float | None = None,
    ) -> None:
        """Add several raw jobs in one MULTI, then notify (the engine of kill/kill_all)."""
        now = wire.now() if now is None else now
        pipe = _redis(self.config).pipeline(transaction=True)
        pipe.zadd(self.name, dict.fromkeys(raws, now))
        if trim:
            self._trim(pipe, now)
        pipe.execute()
        if notify:
            error = exc or RuntimeError("Job killed by API")
            for raw in raws:
                self._notify(_parse(raw)[0], error)

    def trim(self, now: float | None = None) -> None:
        """Drop entries older than ``dead_timeout`` and all but the newest ``dead_max_jobs``."""
        pipe = _redis(self.config).pipeline(transaction=True)
        self._trim(pipe, wire.now() if now is None else now)
        pipe.execute()

    def _trim(self, pipe: Any, now: float) -> None:
        pipe.zremrangebyscore(self.name, "-inf", now - self.config.dead_timeout)
        pipe.zremrangebyrank(self.name, 0, -(self.config.dead_max_jobs + 1))

    def _notify(self, payload: Payload, exc: BaseException) -> None:
        for handler in self.config.death_handlers:
            try:
                handler(payload, exc)
            except Exception:
                log.exception("death handler %r failed", handler)


# -- Processes and running work --------------------------------------------------------


@dataclass(slots=True)
class Process:
    """One live process (kiq or Sidekiq), as its last heartbeat described it.

    ``concurrency`` is the hash field (Sidekiq 8.1.2+) else ``info.concurrency``;
    ``queues``/``weights`` come from ``capsules`` (8.0.9+) else ``info``; ``stopping``
    is the ``quiet`` field read as a bool; ``rss`` is in KB; times are UTC datetimes.

    Example::

        for process in ProcessSet():
            process.identity, process.busy, process.concurrency, process.queues
            if process.tag == "old-release":
                process.quiet()     # TSTP within one heartbeat
    """

    identity: str
    hostname: str | None
    pid: int | None
    tag: str | None
    labels: list[str]
    started_at: datetime | None
    concurrency: int
    queues: list[str]
    weights: list[dict[str, int]]
    capsules: dict[str, Any] | None
    busy: int
    beat: datetime | None
    stopping: bool
    rss: int
    rtt_us: int
    version: str | None
    embedded: bool
    info: dict[str, Any] = field(repr=False)
    fields: dict[str, str | None] = field(repr=False)
    config: Config = field(repr=False, compare=False)

    @classmethod
    def from_hash(cls, identity: str, values: list[bytes | None], config: Config) -> Process | None:
        """Build from HMGET PROCESS_FIELDS; None when the hash expired or is unreadable."""
        f = {
            name: None if value is None else value.decode(errors="replace")
            for name, value in zip(PROCESS_FIELDS, values, strict=True)
        }
        try:
            info = json.loads(f.pop("info") or "null")
        except ValueError:
            log.warning("process %s: its info field is not JSON; skipped", identity)
            return None
        if not isinstance(info, dict):
            return None
        capsules = info.get("capsules") if isinstance(info.get("capsules"), dict) else None
        if capsules:
            weights = [dict(cap.get("weights") or {}) for cap in capsules.values()]
            queues = list(dict.fromkeys(q for w in weights for q in w))
        else:
            weights, queues = list(info.get("weights") or []), list(info.get("queues") or [])
        concurrency = f["concurrency"] if f["concurrency"] is not None else info.get("concurrency")
        return cls(
            identity=identity,
            hostname=info.get("hostname"),
            pid=info.get("pid"),
            tag=info.get("tag"),
            labels=list(info.get("labels") or []),
            started_at=_time(info.get("started_at")),
            concurrency=_int(concurrency),
            queues=queues,
            weights=weights,
            capsules=capsules,
            busy=_int(f["busy"]),
            beat=_time(_float(f["beat"])),
            stopping=f["quiet"] == "true",
            rss=_int(f["rss"]),
            rtt_us=_int(f["rtt_us"]),
            version=info.get("version"),
            embedded=info.get("embedded") is True,
            info=info,
            fields=f,
            config=config,
        )

    def __getitem__(self, name: str) -> Any:
        """A heartbeat field or ``info`` key (fields win); None when absent."""
        value = self.fields.get(name)
        return value if value is not None else self.info.get(name)

    def quiet(self) -> None:
        """Ask the process to stop taking jobs (TSTP at its next heartbeat)."""
        self._signal("TSTP")

    def stop(self) -> None:
        """Ask the process to shut down gracefully (TERM at its next heartbeat)."""
        self._signal("TERM")

    def dump_threads(self) -> None:
        """Ask the process to log every thread's stack (TTIN at its next heartbeat)."""
        self._signal("TTIN")

    def _signal(self, name: str) -> None:
        if self.embedded:
            raise KiqError(
                f"process {self.identity} is embedded in an application and ignores remote "
                f"signals; quiet or stop it through that application instead"
            )
        key = self.config.keys.signals(self.identity)
        pipe = _redis(self.config).pipeline(transaction=True)
        pipe.lpush(key, name)
        pipe.expire(key, SIGNAL_TTL)
        pipe.execute()


class ProcessSet:
    """Every live process, by identity; built after pruning processes whose hash expired.

    Example::

        processes = ProcessSet()
        processes.size(), processes.total_concurrency(), processes.total_rss()
        for process in processes:
            process.stop()
    """

    def __init__(self, config: Config | None = None, *, clean: bool = True) -> None:
        self.config = _config(config)
        if clean:
            self.cleanup()

    def cleanup(self) -> int:
        """SREM members of ``processes`` whose heartbeat hash has expired; return how many.

        A process that died without clearing itself stays in the set until someone
        prunes it (Sidekiq: ProcessSet.new, at most once a minute in 6.5+).
        """
        k = self.config.keys
        redis = _redis(self.config)
        identities = _members(self.config, k.processes)
        pipe = redis.pipeline(transaction=False)
        for identity in identities:
            pipe.hexists(k.process(identity), "info")
        alive = pipe.execute()
        dead = [i for i, ok in zip(identities, alive, strict=True) if not ok]
        return int(redis.srem(k.processes, *dead)) if dead else 0

    @classmethod
    def get(cls, identity: str, config: Config | None = None) -> Process | None:
        """One process by identity, or None if it is not registered and alive."""
        config = _config(config)
        pipe = _redis(config).pipeline(transaction=True)
        pipe.sismember(config.keys.processes, identity)
        pipe.hmget(config.keys.process(identity), PROCESS_FIELDS)
        member, values = pipe.execute()
        return Process.from_hash(identity, values, config) if member else None

    def __iter__(self) -> Iterator[Process]:
        k = self.config.keys
        identities = _members(self.config, k.processes)
        pipe = _redis(self.config).pipeline(transaction=False)
        for identity in identities:
            pipe.hmget(k.process(identity), PROCESS_FIELDS)
        for identity, values in zip(identities, pipe.execute(), strict=True):
            if (process := Process.from_hash(identity, values, self.config)) is not None:
                yield process

    def size(self) -> int:
        """SCARD ``processes`` (after the constructor's prune)."""
        return int(_redis(self.config).scard(self.config.keys.processes))

    def total_concurrency(self) -> int:
        """Σ threads of every live process."""
        return sum(process.concurrency for process in self)

    def total_rss(self) -> int:
        """Σ resident memory in KB."""
        return sum(process.rss for process in self)

    def leader(self) -> str | None:
        """The Sidekiq Enterprise leader's identity, if one is elected."""
        value = _redis(self.config).get(self.config.keys.leader)
        return value.decode() if value else None


@dataclass(frozen=True, slots=True)
class Work:
    """A job running now: where, since when, and its payload."""

    process_id: str
    thread_id: str
    queue: str
    run_at: datetime
    payload: Payload
    raw: bytes = field(repr=False)
    config: Config = field(repr=False, compare=False)

    @property
    def job(self) -> JobRecord:
        """The running job's payload as a JobRecord (display_class, display_args...)."""
        return JobRecord(self.raw, self.queue, self.config)


class WorkSet:
    """Jobs running now across the cluster, oldest start first.

    Read from ``<identity>:work`` (Sidekiq 6.5+, kiq), else ``<identity>:workers``
    (Sidekiq 6.4); only as fresh as each process's last heartbeat.

    Example::

        for process_id, thread_id, work in WorkSet():
            print(process_id, thread_id, work.queue, work.run_at, work.job.display_class)
        WorkSet().find_work("b4a577edbccf1d805744efa9")
    """

    def __init__(self, config: Config | None = None) -> None:
        self.config = _config(config)

    def __iter__(self) -> Iterator[tuple[str, str, Work]]:
        k = self.config.keys
        identities = _members(self.config, k.processes)
        pipe = _redis(self.config).pipeline(transaction=False)
        for identity in identities:
            pipe.hgetall(k.work(identity))
            pipe.hgetall(k.workers(identity))
        replies = pipe.execute()
        works: list[Work] = []
        for index, identity in enumerate(identities):
            threads = replies[2 * index] or replies[2 * index + 1]
            for tid, value in threads.items():
                if (work := self._work(identity, tid.decode(), value)) is not None:
                    works.append(work)
        works.sort(key=lambda work: work.run_at)
        for work in works:
            yield work.process_id, work.thread_id, work

    def _work(self, identity: str, tid: str, value: bytes) -> Work | None:
        try:
            data = json.loads(value)
            job = data["payload"]
            # The payload has been a JSON string since Sidekiq #4316; older ones an object.
            raw = job.encode() if isinstance(job, str) else wire.dumps(job)
            payload = _parse(raw)[0]
            run_at = _time(data.get("run_at")) or datetime.fromtimestamp(0, UTC)
            queue = str(data.get("queue") or payload.get("queue") or "")
        except (ValueError, LookupError, TypeError, AttributeError):
            log.warning("process %s thread %s: busy entry is unreadable; skipped", identity, tid)
            return None
        return Work(identity, tid, queue, run_at, payload, raw, self.config)

    def size(self) -> int:
        """Σ ``busy`` of every process (Sidekiq: WorkSet#size)."""
        return _busy_total(self.config)

    def find_work(self, jid: str) -> Work | None:
        """The running job with this jid, or None."""
        for _, _, work in self:
            if work.payload.get("jid") == jid:
                return work
        return None


# -- Web UI extras: queue summaries, Redis facts, progress, recurring, metrics ----------


@dataclass(frozen=True, slots=True)
class QueueSummary:
    """One row of the Queues page."""

    name: str
    size: int
    latency: float  # seconds the oldest job has waited
    paused: bool


def queue_summaries(config: Config | None = None, now: float | None = None) -> list[QueueSummary]:
    """Every queue with its size, latency and paused flag, by name, in one pipeline.

    Sidekiq 8.1's ``Stats#queue_summaries``: LLEN, LINDEX -1 and SISMEMBER per queue.
    """
    config = _config(config)
    names = _members(config, config.keys.queues)
    pipe = _redis(config).pipeline(transaction=False)
    for name in names:
        pipe.llen(config.keys.queue(name))
        pipe.lindex(config.keys.queue(name), -1)
        pipe.sismember(config.keys.paused, name)
    replies = pipe.execute()
    now = wire.now() if now is None else now
    summaries = []
    for index, name in enumerate(names):
        size, oldest, paused = replies[3 * index : 3 * index + 3]
        latency = _latency(_parse(oldest)[0], now) if oldest else 0.0
        summaries.append(QueueSummary(name, _int(size), latency, bool(paused)))
    return summaries


@dataclass(frozen=True, slots=True)
class RedisInfo:
    """What the dashboard shows about the server (from INFO)."""

    server: str  # "Redis", "Valkey" or "Dragonfly"
    version: str
    uptime_days: int
    connections: int
    memory: str  # used_memory_human, e.g. "1.52M"
    peak_memory: str  # used_memory_peak_human


def redis_info(config: Config | None = None) -> RedisInfo:
    """The server's name, version, uptime, clients and memory (one INFO)."""
    info = _redis(_config(config)).info()
    server = "Redis"
    if "valkey_version" in info or info.get("server_name") == "valkey":
        server = "Valkey"
    elif "dragonfly_version" in info:
        server = "Dragonfly"
    version = info.get("valkey_version") or info.get("redis_version") or "?"
    return RedisInfo(
        server=server,
        version=str(version),
        uptime_days=_int(info.get("uptime_in_days")),
        connections=_int(info.get("connected_clients")),
        memory=str(info.get("used_memory_human", "?")),
        peak_memory=str(info.get("used_memory_peak_human", "?")),
    )


def progress(jids: list[str], config: Config | None = None) -> dict[str, dict[str, Any]]:
    """The last progress each job reported (``Job.progress``), by jid; none: left out.

    One pipelined HGETALL of ``kiq|progress|<jid>`` per job; each value has
    ``percent`` (0-100), ``message``, ``class`` and ``at`` (epoch seconds).
    """
    config = _config(config)
    pipe = _redis(config).pipeline(transaction=False)
    for jid in jids:
        pipe.hgetall(config.keys.progress(jid))
    found: dict[str, dict[str, Any]] = {}
    for jid, raw in zip(jids, pipe.execute(), strict=True):
        if not raw:
            continue
        data = {k.decode(): v.decode(errors="replace") for k, v in raw.items()}
        found[jid] = {
            "jid": jid,
            "percent": _float(data.get("percent")) or 0.0,
            "message": data.get("message", ""),
            "class": data.get("class", ""),
            "at": _float(data.get("at")) or 0.0,
        }
    return found


def cron_set(config: Config | None = None) -> CronSet:
    """The recurring jobs (``kiq.recurring.CronSet``: list, enable/disable, enqueue now).

    Imported on first use: recurring jobs bring the cron parser, which the rest of the
    admin API does not need.
    """
    from kiq.recurring import CronSet

    return CronSet(_config(config))


@dataclass(slots=True)
class JobMetrics:
    """One job class over a window: totals, and per-minute values (oldest minute first).

    ``processed`` counts every execution (failures too), ``total_ms`` only successful
    ones, so ``avg_ms`` is the mean time of a successful run (Sidekiq's definition).
    """

    klass: str
    processed: int
    failed: int
    total_ms: int
    series: dict[str, list[int]]  # "p", "f", "ms" -> one value per minute

    @classmethod
    def empty(cls, klass: str, minutes: int) -> JobMetrics:
        return cls(klass, 0, 0, 0, {m: [0] * minutes for m in ("p", "f", "ms")})

    @property
    def succeeded(self) -> int:
        return self.processed - self.failed

    @property
    def avg_ms(self) -> float:
        return self.total_ms / self.succeeded if self.succeeded > 0 else 0.0

    def add(self, metric: str, minute: int, value: int) -> None:
        if metric not in self.series:
            return
        self.series[metric][minute] += value
        if metric == "p":
            self.processed += value
        elif metric == "f":
            self.failed += value
        else:
            self.total_ms += value


@dataclass(frozen=True, slots=True)
class MetricsResult:
    """``Metrics.top_jobs``: the minutes read (oldest first) and each class, slowest total first."""

    minutes: list[datetime]
    jobs: list[JobMetrics]


@dataclass(frozen=True, slots=True)
class JobHistogram:
    """``Metrics.for_job``: one class's totals and execution-time histogram.

    ``counts[i]`` is how many successful runs took less than ``kiq.metrics.BUCKETS[i]``
    ms (the last: longer), labelled ``labels[i]``; ``per_minute`` has the same counts
    for each minute of ``minutes``.
    """

    klass: str
    minutes: list[datetime]
    metrics: JobMetrics
    labels: tuple[str, ...]
    counts: list[int]
    per_minute: list[list[int]]


class Metrics:
    """Read the per-class metrics the workers write (``kiq.metrics``, Sidekiq 7's keys).

    Windows are whole minutes ending with the current one, at most 480 (the keys live
    8 hours). Each call is one pipeline: an HGETALL per minute (plus a BITFIELD_RO per
    minute for ``for_job``).

    Example::

        result = Metrics().top_jobs(minutes=60)
        for job in result.jobs:
            job.klass, job.processed, job.failed, job.total_ms, job.avg_ms
        Metrics().for_job("HardJob", minutes=120).counts
    """

    MAX_MINUTES: Final = 480

    def __init__(self, config: Config | None = None, now: datetime | None = None) -> None:
        self.config = _config(config)
        self.now = now or datetime.now(UTC)

    def _minutes(self, minutes: int) -> list[datetime]:
        if not 1 <= minutes <= self.MAX_MINUTES:
            raise ValueError(
                f"Metrics: minutes={minutes} is out of range; use 1..{self.MAX_MINUTES} "
                f"(metrics are kept 8 hours)"
            )
        return [self.now - timedelta(minutes=i) for i in range(minutes - 1, -1, -1)]

    def top_jobs(self, minutes: int = 60, class_filter: str | None = None) -> MetricsResult:
        """Every class seen in the window (optionally those containing ``class_filter``)."""
        times = self._minutes(minutes)
        pipe = _redis(self.config).pipeline(transaction=False)
        for at in times:
            pipe.hgetall(bucket_key(self.config, at))
        jobs: dict[str, JobMetrics] = {}
        needle = (class_filter or "").lower()
        for index, fields in enumerate(pipe.execute()):
            for name, value in fields.items():
                klass, _, metric = name.decode(errors="replace").rpartition("|")
                if needle and needle not in klass.lower():
                    continue
                if klass not in jobs:
                    jobs[klass] = JobMetrics.empty(klass, minutes)
                jobs[klass].add(metric, index, _int(value))
        ranked = sorted(jobs.values(), key=lambda j: (-j.total_ms, -j.processed, j.klass))
        return MetricsResult(times, ranked)

    def for_job(self, klass: str, minutes: int = 60) -> JobHistogram:
        """One class: its totals per minute and the histogram of its run times."""
        times = self._minutes(minutes)
        redis = _redis(self.config)
        pipe = redis.pipeline(transaction=False)
        rest = [("u16", f"#{i}") for i in range(1, len(BUCKETS) + 1)]
        for at in times:
            pipe.hmget(bucket_key(self.config, at), [f"{klass}|{m}" for m in ("p", "f", "ms")])
            pipe.bitfield_ro(histogram_key(self.config, klass, at), "u16", "#0", items=rest)
        replies = pipe.execute()
        metrics = JobMetrics.empty(klass, minutes)
        per_minute: list[list[int]] = []
        for index in range(minutes):
            for metric, value in zip(("p", "f", "ms"), replies[2 * index], strict=True):
                metrics.add(metric, index, _int(value))
            per_minute.append([_int(n) for n in replies[2 * index + 1]])
        counts = [sum(column) for column in zip(*per_minute, strict=True)]
        return JobHistogram(klass, times, metrics, LABELS, counts, per_minute)


@dataclass(frozen=True, slots=True)
class JobTotals:
    """One job class's cumulative counters (``kiq.metrics`` totals), for Prometheus.

    ``processed`` and ``failed`` are by queue (``processed`` counts failures too, as
    Sidekiq's ``p``); ``total_ms`` and ``buckets`` cover successful runs only, with
    ``buckets[i]`` the runs shorter than ``kiq.metrics.BUCKETS[i]`` ms (the last: longer).
    """

    klass: str
    processed: dict[str, int]
    failed: dict[str, int]
    total_ms: int
    buckets: list[int]


def job_totals(config: Config | None = None) -> list[JobTotals]:
    """Every job class with cumulative totals, by name (one ZRANGE, one pipelined HGETALL each).

    Only kiq processes write these (Ruby Sidekiq keeps its per-minute buckets only).
    """
    config = _config(config)
    redis = _redis(config)
    classes = sorted(
        k.decode(errors="replace") for k in redis.zrange(totals_index_key(config), 0, -1)
    )
    pipe = redis.pipeline(transaction=False)
    for klass in classes:
        pipe.hgetall(totals_key(config, klass))
    found: list[JobTotals] = []
    for klass, raw in zip(classes, pipe.execute(), strict=True):
        if not raw:
            continue  # expired since the ZRANGE; pruned at the next flush
        processed: dict[str, int] = {}
        failed: dict[str, int] = {}
        buckets = [0] * (len(BUCKETS) + 1)
        total_ms = 0
        for name, value in raw.items():
            kind, _, rest = name.decode(errors="replace").partition("|")
            if kind == "p":
                processed[rest] = _int(value)
            elif kind == "f":
                failed[rest] = _int(value)
            elif kind == "ms":
                total_ms = _int(value)
            elif kind == "h" and rest.isdigit() and int(rest) < len(buckets):
                buckets[int(rest)] = _int(value)
        found.append(JobTotals(klass, processed, failed, total_ms, buckets))
    return found


# -- Deploy marks (Sidekiq 7's Sidekiq::Deploy) ------------------------------------------

DEPLOY_MARK_TTL: Final = 90 * 86400  # seconds a day's marks are kept (Sidekiq: MARK_TTL)
DEPLOY_LOCK_TTL: Final = 60  # seconds during which a label is marked at most once


@dataclass(frozen=True, slots=True)
class DeployMark:
    """A deploy shown on the metrics graph: the minute it happened (UTC) and its label."""

    at: datetime
    label: str


def deploy_mark(label: str, at: datetime | None = None, config: Config | None = None) -> bool:
    """Record a deploy at ``at`` (default now), shown on the Web UI's metrics graphs.

    Sidekiq's ``Sidekiq::Deploy.mark!`` exactly (shared/sidekiq-wire.md §1.4), so
    Sidekiq's own Web UI shows kiq's marks too: the time is floored to the minute, so
    every process of a rollout marking the same deploy makes one mark; ``deploylock-<label>``
    (SET NX EX 60) keeps a label to one mark a minute. Returns False when the lock was
    already held (someone marked this label within the last minute).

    Example::

        kiq.api.deploy_mark("v1.2")          # from a deploy script, or `kiq mark v1.2`
    """
    if not label:
        raise ValueError("deploy_mark needs a label, such as a version or a git sha")
    config = _config(config)
    whence = (at or datetime.now(UTC)).astimezone(UTC).replace(second=0, microsecond=0)
    stamp = whence.strftime("%Y-%m-%dT%H:%M:%SZ")  # Ruby's Time#iso8601 for UTC
    redis = _redis(config)
    prefix = config.key_prefix
    if not redis.set(f"{prefix}deploylock-{label}", stamp, nx=True, ex=DEPLOY_LOCK_TTL):
        return False
    key = f"{prefix}{whence:%Y%m%d}-marks"
    pipe = redis.pipeline(transaction=True)
    pipe.hsetnx(key, stamp, label)
    pipe.expire(key, DEPLOY_MARK_TTL)
    pipe.execute()
    return True


def deploy_marks(
    since: datetime, until: datetime | None = None, config: Config | None = None
) -> list[DeployMark]:
    """The deploy marks between ``since`` and ``until`` (default now), oldest first.

    One HGETALL of ``YYYYMMDD-marks`` per UTC day in the window, pipelined.
    """
    config = _config(config)
    until = (until or datetime.now(UTC)).astimezone(UTC)
    # Marks live DEPLOY_MARK_TTL: days before that hold nothing to read.
    since = max(since.astimezone(UTC), until - timedelta(seconds=DEPLOY_MARK_TTL + 86400))
    days: list[date] = []
    day = since.date()
    while day <= until.date():
        days.append(day)
        day += timedelta(days=1)
    pipe = _redis(config).pipeline(transaction=False)
    for day in days:
        pipe.hgetall(f"{config.key_prefix}{day:%Y%m%d}-marks")
    marks: list[DeployMark] = []
    for raw in pipe.execute():
        for stamp, label in raw.items():
            try:
                at = datetime.fromisoformat(stamp.decode().replace("Z", "+00:00"))
            except ValueError:
                continue
            if since - timedelta(minutes=1) < at <= until:
                marks.append(DeployMark(at.astimezone(UTC), label.decode(errors="replace")))
    return sorted(marks, key=lambda mark: mark.at)
