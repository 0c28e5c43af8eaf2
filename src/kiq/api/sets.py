"""The sorted sets of jobs: ``schedule``, ``retry`` and ``dead`` (and the recurring jobs).

Why their own module: entries are found by score and jid (several jobs may share a
score), and every move out of a set is one step in Redis: to a queue, the job is
prepared first (client middleware run, nothing written), then removed and pushed by
one script (``Store.move_due``, the poller's); to ``dead``, removed and added by one
script (``Store.set_kill``). Only the caller whose removal succeeds moves a member, so
no admin action can lose or double a job, even if its process dies mid-way (Sidekiq's
``SortedSet``, ``JobSet``, ``ScheduledSet``, ``RetrySet``, ``DeadSet``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from kiq import payload as wire
from kiq import unique
from kiq.api.base import PAGE_SIZE, config_or_default, parse_job, to_epoch
from kiq.api.queue import JobRecord
from kiq.client import Client
from kiq.config import Config
from kiq.errors import JobNotFound, PayloadError
from kiq.handlers import call_each
from kiq.payload import Payload

if TYPE_CHECKING:
    from kiq.crontab import CronSet

log = logging.getLogger(__name__)

SCAN_COUNT: Final = 100  # ZSCAN COUNT hint (Sidekiq's scan)
KILL_BATCH: Final = 100  # members moved per round trip by kill_all


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
        return self._to_queue(lower_retry_count=True)

    def add_to_queue(self) -> str | None:
        """Push the job to its queue now, unchanged (the Web UI's "Add to queue")."""
        return self._to_queue(lower_retry_count=False)

    def kill(self) -> None:
        """Move the entry to the dead set (trimmed; death handlers are told)."""
        wire.loads(self.raw)  # an unreadable member stays where it is
        config = self.config
        now = wire.now()
        for member in self.parent.candidates(self.score, self.jid, prefer=self.raw):
            if config.store.set_kill(
                self.parent.name, member, now, config.dead_max_jobs, config.dead_timeout
            ):
                unique.release_raws(config, [member])  # dead: its unique lock is freed
                DeadSet(config).notify([member])
                return
        raise self.parent._gone(self.score, self.jid)

    def reschedule(self, at: datetime | float) -> None:
        """Give this member a new score; ZADD XX, so it never adds a second copy."""
        score = to_epoch(at)
        if not self.config.store.set_rescore(self.parent.name, self.raw, score):
            raise self.parent._gone(self.score, self.jid)
        self.score = score

    def _to_queue(self, *, lower_retry_count: bool) -> str | None:
        wire.loads(self.raw)  # an unreadable member stays where it is
        client = Client(self.config)
        for member in self.parent.candidates(self.score, self.jid, prefer=self.raw):
            job = _prepare(client, wire.loads(member), lower_retry_count)
            if self.config.store.move_due(self.parent.name, member, job):
                return None if job is None else _jid(job)
        raise self.parent._gone(self.score, self.jid)


def _prepare(client: Client, payload: Payload, lower_retry_count: bool) -> tuple[str, bytes] | None:
    """The job to push for ``payload`` (None: a client middleware stopped it), unwritten.

    A manual retry lowers ``retry_count`` by one: it must not use up the retry budget.
    """
    count = payload.get("retry_count")
    if lower_retry_count and isinstance(count, int) and not isinstance(count, bool):
        payload["retry_count"] = count - 1
    return client.prepare(payload)


def _jid(job: tuple[str, bytes]) -> str:
    return str(wire.loads(job[1])["jid"])


class JobSet:
    """Base of ScheduledSet, RetrySet and DeadSet: a ZSET of job JSON by epoch seconds.

    Iteration yields SortedEntry highest score first, 50 per ZRANGE.
    """

    def __init__(self, name: str, config: Config | None = None) -> None:
        self.name = name  # the Redis key, e.g. "retry" (with any key prefix)
        self.config = config_or_default(config)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def size(self) -> int:
        """Entries in the set (ZCARD)."""
        return self.config.store.set_size(self.name)

    def __iter__(self) -> Iterator[SortedEntry]:
        store = self.config.store
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
            entries = store.set_range(self.name, start, end)
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
        entries = self.config.store.set_range(self.name, start, start + count - 1, desc=reverse)
        return [SortedEntry(self, score, raw) for raw, score in entries]

    def scan(self, substr: str, count: int = SCAN_COUNT) -> Iterator[SortedEntry]:
        """Entries whose JSON contains ``substr`` (ZSCAN MATCH; a ``*`` in it is a glob)."""
        match = substr if "*" in substr else f"*{substr}*"
        for raw, score in self.config.store.set_scan(self.name, match, count):
            yield SortedEntry(self, score, raw)

    def fetch(
        self, score: float | tuple[float, float], jid: str | None = None
    ) -> list[SortedEntry]:
        """Entries at ``score`` (or within ``(min, max)``), optionally only this jid."""
        low, high = score if isinstance(score, tuple) else (score, score)
        entries = self.config.store.set_at_score(self.name, low, high)
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
        self.config.store.set_add(self.name, {wire.dumps(payload): to_epoch(at)})

    def delete_by_value(self, raw: bytes | str) -> bool:
        """ZREM this exact member (and free its unique lock); False if it was not there."""
        removed = self.config.store.set_remove(self.name, raw)
        if removed:
            unique.release_raws(self.config, [raw])
        return removed

    def delete_by_jid(self, score: float, jid: str) -> bool:
        """Remove the job with this jid at this score (the Web UI's ``<score>-<jid>`` key)."""
        try:
            member = self.remove(score, jid)
        except JobNotFound:
            return False
        unique.release_raws(self.config, [member])  # deleted: its unique lock is freed
        return True

    def remove(self, score: float, jid: str | None, prefer: bytes | None = None) -> bytes:
        """Take the member at ``score`` whose jid matches (``prefer`` first); return it.

        Only the caller whose ZREM succeeds gets the member, so a job that the poller
        (or another admin) took at the same moment is never pushed twice.
        """
        for member in self.candidates(score, jid, prefer):
            if self.config.store.set_remove(self.name, member):
                return member
        raise self._gone(score, jid)

    def candidates(self, score: float, jid: str | None, prefer: bytes | None = None) -> list[bytes]:
        """The members at ``score`` whose jid matches, ``prefer`` first (if still there).

        Sidekiq finds entries by score + jid because several jobs may share a score.
        """
        members = [raw for raw, _ in self.config.store.set_at_score(self.name, score, score)]
        found = [prefer] if prefer is not None and prefer in members else []
        if jid is not None:
            needle = jid.encode()
            found += [
                m
                for m in members
                if m != prefer and needle in m and parse_job(m)[0].get("jid") == jid
            ]
        return found

    def _gone(self, score: float, jid: str | None) -> JobNotFound:
        return JobNotFound(
            f"job {jid} is no longer in {self.name!r} at score {score}: it was run, "
            f"retried, deleted or rescheduled since it was read; reload the set"
        )

    def clear(self) -> None:
        """Drop every entry (UNLINK), then free the unique locks of those that held one.

        The unique ones are found first by a server-side match (ZSCAN MATCH), so a set of
        plain jobs costs no more than before. A lock is freed only if the deleted job
        still holds it (compare-and-delete on its jid).
        """
        locked = [entry.raw for entry in self.scan('"unique_for"')]
        self.config.store.set_clear(self.name)
        unique.release_raws(self.config, locked)

    def delete_all(self) -> None:
        """The Web UI's "Delete All": the same as ``clear()``."""
        self.clear()

    def retry_all(self) -> int:
        """Push every entry to its queue with ``retry_count`` lowered by one; return how many.

        One at a time from the lowest score, as Sidekiq 7.3.5+, bounded by the size at
        the start so entries added meanwhile wait for the next call; each is removed and
        pushed in one step (``Store.move_due``). A member that is not a job stays; a
        failed push (a middleware raising, Redis away) leaves its member and raises.
        """
        return self._push_all(lower_retry_count=True)

    def add_all_to_queue(self) -> int:
        """Push every entry to its queue unchanged (the Web UI's "Add All to Queue")."""
        return self._push_all(lower_retry_count=False)

    def _push_all(self, *, lower_retry_count: bool) -> int:
        store = self.config.store
        client = Client(self.config)
        skipped = pushed = 0  # members that are not jobs stay, lowest first
        for _ in range(self.size()):
            entries = store.set_range(self.name, skipped, skipped)
            if not entries:
                break
            raw = entries[0][0]
            try:
                payload = wire.loads(raw)
            except PayloadError:
                log.warning("retry_all: %s holds a member that is not a job", self.name)
                skipped += 1
                continue
            job = _prepare(client, payload, lower_retry_count)
            if store.move_due(self.name, raw, job):  # False: someone else moved it
                pushed += 1
        return pushed


class _PendingSet(JobSet):
    """Sets whose entries have yet to run (schedule, retry): they can all be killed."""

    def kill_all(self, *, notify: bool = False) -> int:
        """Move every entry to the dead set, trimming once at the end; return how many.

        In batches of KILL_BATCH, each moved in one step (``Store.set_kill_lowest``:
        ZPOPMIN + ZADD dead in one script), as Sidekiq 7.3.5+ does one at a time,
        without telling the death handlers by default.
        """
        config = self.config
        dead = DeadSet(config)
        moved = 0
        remaining = self.size()
        try:
            while remaining > 0:
                batch = config.store.set_kill_lowest(
                    self.name, min(KILL_BATCH, remaining), wire.now()
                )
                if not batch:
                    break
                remaining -= len(batch)
                moved += len(batch)
                unique.release_raws(config, batch)  # dead: their unique locks are freed
                if notify:
                    dead.notify(batch)
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
        config = config_or_default(config)
        super().__init__(config.keys.schedule, config)


class RetrySet(_PendingSet):
    """Failed jobs waiting for their next attempt (the ``retry`` ZSET, score = retry at).

    Example::

        RetrySet().retry_all()
        RetrySet().find_job("b4a577edbccf1d805744efa9").kill()
    """

    def __init__(self, config: Config | None = None) -> None:
        config = config_or_default(config)
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
        config = config_or_default(config)
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
        config = self.config
        config.store.bury(raws, now, config.dead_max_jobs, config.dead_timeout, trim=trim)
        if notify:
            self.notify(raws, exc)

    def notify(self, raws: list[bytes], exc: BaseException | None = None) -> None:
        """Call ``config.death_handlers`` for each job (``RuntimeError("Job killed by
        API")`` as Sidekiq passes, unless ``exc``); a failing handler is logged."""
        error = exc or RuntimeError("Job killed by API")
        for raw in raws:
            self._notify(parse_job(raw)[0], error)

    def trim(self, now: float | None = None) -> None:
        """Drop entries older than ``dead_timeout`` and all but the newest ``dead_max_jobs``."""
        config = self.config
        now = wire.now() if now is None else now
        config.store.trim_dead(now, config.dead_max_jobs, config.dead_timeout)

    def _notify(self, payload: Payload, exc: BaseException) -> None:
        call_each(self.config.death_handlers, "death handler", payload, exc)


def cron_set(config: Config | None = None) -> CronSet:
    """The recurring jobs (``kiq.crontab.CronSet``: list, enable/disable, enqueue now).

    Imported on first use: recurring jobs bring the cron parser, which the rest of the
    admin API does not need.
    """
    from kiq.crontab import CronSet

    return CronSet(config_or_default(config))
