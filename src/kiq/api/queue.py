"""Queues and the jobs in them: ``Queue`` (a Redis LIST) and ``JobRecord`` (one stored job).

Why JobRecord is here and not with the sorted sets: every other view of a job
(``SortedEntry`` in a set, ``Work`` running in a process) builds on it. It reads the
payload however Sidekiq or kiq wrote it, and shows ActiveJob and ActionMailer wrappers
as a person wants them (Sidekiq 8's ``JobRecord#display_class`` / ``display_args``).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator
from functools import cached_property
from typing import Any, Final

from kiq import payload as wire
from kiq import unique
from kiq.api.base import (
    PAGE_SIZE,
    config_or_default,
    latency_of,
    parse_job,
    str_or_none,
    to_datetime,
)
from kiq.config import Config
from kiq.errors import PayloadError

log = logging.getLogger(__name__)

ACTIVE_JOB_PREFIXES: Final = ("Sidekiq::ActiveJob::", "ActiveJob::QueueAdapters::")
MAILER_JOBS: Final = ("ActionMailer::DeliveryJob", "ActionMailer::MailDeliveryJob")


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
        self.config = config_or_default(config)
        self.key = self.config.keys.queue(name)

    def __repr__(self) -> str:
        return f"Queue({self.name!r})"

    @classmethod
    def all(cls, config: Config | None = None) -> list[Queue]:
        """Every queue in the ``queues`` set, by name (a push always SADDs it there)."""
        config = config_or_default(config)
        return [cls(name, config) for name in config.store.queue_names()]

    def size(self) -> int:
        """Jobs waiting (LLEN)."""
        return self.config.store.queue_size(self.name)

    def latency(self, now: float | None = None) -> float:
        """Seconds the oldest job has waited (its ``enqueued_at``); 0.0 when empty."""
        oldest = self.config.store.queue_oldest(self.name)
        if oldest is None:
            return 0.0
        return latency_of(parse_job(oldest)[0], wire.now() if now is None else now)

    def __iter__(self) -> Iterator[JobRecord]:
        for raws in self._raw_pages():
            for raw in raws:
                yield JobRecord(raw, self.name, self.config)

    def _raw_pages(self) -> Iterator[list[bytes]]:
        # Sidekiq's Queue#each: pages of 50 from the head, shifted back by however
        # many jobs left the list meanwhile, so deleting while iterating skips none.
        store = self.config.store
        initial = self.size()
        page = deleted = 0
        while True:
            start = max(page * PAGE_SIZE - deleted, 0)
            raws = store.queue_range(self.name, start, start + PAGE_SIZE - 1)
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
            raws = self.config.store.queue_range(self.name, -end - 1, -start - 1)[::-1]
        else:
            raws = self.config.store.queue_range(self.name, start, end)
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
        """Drop every job and the name from ``queues`` (MULTI UNLINK + SREM), then free
        the unique locks the dropped jobs held (read page by page first: a big queue
        costs one read of its jobs; jobs pushed in between keep their locks)."""
        locked = [raw for raws in self._raw_pages() for raw in raws if b'"unique_for"' in raw]
        self.config.store.queue_clear(self.name)
        unique.release_raws(self.config, locked)

    def paused(self) -> bool:
        """Is the queue in kiq's paused set? (kiq workers honour it; Sidekiq OSS does not.)"""
        return self.config.store.is_paused(self.name)

    def pause(self) -> None:
        """Stop kiq workers fetching from this queue, within one heartbeat."""
        self.config.store.pause(self.name)

    def unpause(self) -> None:
        """Let kiq workers fetch from this queue again."""
        self.config.store.unpause(self.name)


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
        self.payload, self.valid = parse_job(self.raw)
        self.config = config_or_default(config)
        p = self.payload
        self.queue = queue if queue is not None else str_or_none(p.get("queue"))
        self.klass, self.jid, self.bid = (
            str_or_none(p.get("class")),
            str_or_none(p.get("jid")),
            str_or_none(p.get("bid")),
        )
        self.error_class = str_or_none(p.get("error_class"))
        self.error_message = str_or_none(p.get("error_message"))
        count = p.get("retry_count")
        self.retry_count = count if isinstance(count, int) and not isinstance(count, bool) else None
        self.tags = [str(tag) for tag in p["tags"]] if isinstance(p.get("tags"), list) else []
        self.enqueued_at, self.failed_at = (
            to_datetime(p.get("enqueued_at")),
            to_datetime(p.get("failed_at")),
        )
        self.retried_at = to_datetime(p.get("retried_at"))
        # created_at falls back to enqueued_at, as Sidekiq's does.
        self.created_at = to_datetime(p.get("created_at")) or self.enqueued_at
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
        return latency_of(self.payload, wire.now() if now is None else now)

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
        removed = self.config.store.queue_remove(self.queue, self.raw)
        if removed:
            unique.release_raws(self.config, [self.raw])  # deleted: its unique lock is freed
        return removed


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
