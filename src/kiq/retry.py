"""Decide what happens to a failed job: retry later, the dead set, or discard.

Sidekiq's rules, exactly (shared/sidekiq-wire.md §6):
  1. ``retry`` false/absent-and-class-false: no retry and no dead set; death handlers run.
  2. ``max`` = ``retry`` if it is an integer, else ``config.max_retries`` (25).
     ``retry: 0`` is Ruby-truthy: retries on, zero of them, so the first failure dies.
  3. Error fields: ``error_message`` (first 10,000 chars), ``error_class``,
     ``failed_at`` + ``retry_count = 0`` on the first failure, then ``retried_at`` and
     ``retry_count += 1``; ``error_backtrace`` (zlib + Base64 of a JSON array of
     lines) when ``backtrace`` is true or a line count; ``queue`` becomes
     ``retry_queue`` or the queue the job came from.
  4. Exhausted when ``retry_count >= max``, or (7.1.3+) when ``retry_for`` is set and
     ``failed_at + retry_for`` has passed; otherwise the delay is the job's
     ``retry_in(count, exc, payload)`` (seconds, ``"discard"`` or ``"kill"``) or
     ``count**4 + 15``, plus jitter ``randrange(10) * (count + 1)`` (6.4/7.x), and the
     job is ZADDed to ``retry`` at now + delay.
  5. Exhausted: ``retries_exhausted(payload, exc)`` (may return ``"discard"``); unless
     ``dead`` is literally false or it was discarded, ZADD ``dead`` and trim (one
     WARNING line names the job and its error); then the death handlers.

The payload's fields were checked when it was read (``payload.loads``), so the values
read here have their documented types. A job the worker could not read at all is
buried by ``bury``: in the dead set, with the reason, without running.

``kiq.Discard`` (or an exception listed in the job's ``discard_on``) ends the job at
once without retry or dead set: the brief's "rescue and return", made visible.

``kiq.OverLimit`` (a limiter full past its ``wait_timeout``, kiq.limiter) is not a
failure while the job has been rescheduled fewer than the limiter's ``reschedule``
times: ``reschedule_limited`` puts it in ``schedule`` after the limiter's backoff with
``overrated`` + 1 (Sidekiq Enterprise's field): no retry_count, no error handlers, a
count in ``kiq|limited``. Past that bound it fails like any error.
"""

from __future__ import annotations

import logging
import random
import traceback
from typing import TYPE_CHECKING, Any, Final, Literal

from kiq import payload as wire
from kiq import unique
from kiq.client import timestamp
from kiq.config import Config
from kiq.errors import Discard, OverLimit, PayloadError
from kiq.handlers import call_each
from kiq.payload import Payload, encode_backtrace

if TYPE_CHECKING:
    from kiq.job import Job

log = logging.getLogger(__name__)

MAX_MESSAGE: Final = 10_000  # characters of error_message kept (Sidekiq)
REFUSED: Final = "kiq.PayloadError"  # error_class of a job buried unread (see bury)
Outcome = Literal["retry", "dead", "discard", "dropped"]


def backoff(count: int, rng: random.Random | None = None) -> float:
    """Sidekiq 6.4's default delay: count**4 + 15 + rand(10) * (count + 1) seconds."""
    return float(count**4 + 15 + jitter(count, rng))


def jitter(count: int, rng: random.Random | None = None) -> int:
    """What Sidekiq 6.4/7.x adds to every delay, custom or default: rand(10) * (count + 1)."""
    return (rng or random).randrange(10) * (count + 1)


def backtrace_lines(exc: BaseException) -> list[str]:
    """Frames as Ruby-style lines (``file:line:in `func'``), innermost first like Ruby."""
    frames = traceback.extract_tb(exc.__traceback__)
    return [f"{f.filename}:{f.lineno}:in `{f.name}'" for f in reversed(frames)]


def error_class(exc: BaseException) -> str:
    return type(exc).__qualname__


def error_message(exc: BaseException) -> str:
    try:
        return str(exc)[:MAX_MESSAGE]
    except Exception:
        return "!!! ERROR MESSAGE THREW AN ERROR !!!"


class RetryHandler:
    """Apply the rules above for one failed job; writes go through ``config.store``."""

    def __init__(self, config: Config) -> None:
        self.config = config

    @staticmethod
    def is_limited(payload: Payload | None, exc: BaseException | None) -> bool:
        """Is this a limiter's refusal to reschedule (not a failure)? See the docstring."""
        return (
            isinstance(exc, OverLimit)
            and payload is not None
            and int(payload.get("overrated", 0)) < exc.reschedule
        )

    def reschedule_limited(self, raw: bytes, exc: OverLimit, now: float | None = None) -> float:
        """Put a job a limiter refused back in ``schedule``; returns the delay in seconds."""
        payload = wire.loads(raw)  # the original, as ``handle``
        overrated = int(payload.get("overrated", 0))
        try:
            delay = float(exc.backoff(overrated, exc.retry_in)) if exc.backoff else exc.retry_in
        except Exception:
            log.exception("the backoff of limiter %r failed; using its retry_in", exc.limiter)
            delay = exc.retry_in
        if not 0 <= delay < wire.MAX_RETRY_FOR:  # NaN, negative, never: the limiter's own
            delay = exc.retry_in
        payload["overrated"] = overrated + 1
        now = wire.now() if now is None else now
        klass = str(payload.get("wrapped") or payload.get("class") or "?")
        self.config.store.reschedule_limited(now + delay, wire.dumps(payload), klass)
        return delay

    def handle(
        self,
        raw: bytes,
        queue: str,
        exc: BaseException,
        job_class: type[Job] | None,
        now: float | None = None,
    ) -> Outcome:
        """Record the failure of ``raw`` (as fetched from ``queue``); return what was done.

        Error handlers run last, with the payload as recorded (retry_count, error
        fields), as Sidekiq's do after its retry bookkeeping.
        """
        payload = wire.loads(raw)  # the original, not what middleware may have changed
        locked = unique.is_unique(payload)
        original = dict(payload) if locked else payload  # _decide stamps the payload
        try:
            outcome = self._decide(payload, queue, exc, job_class, now)
            if locked and outcome != "retry":  # the job has ended: free its unique lock
                unique.release(self.config, original)
            return outcome
        finally:
            self._notify_error(exc, payload, queue)

    def _decide(
        self,
        payload: Payload,
        queue: str,
        exc: BaseException,
        job_class: type[Job] | None,
        now: float | None,
    ) -> Outcome:
        if isinstance(exc, Discard) or (job_class and isinstance(exc, job_class.discard_on)):
            return self._discard(payload, exc)
        option = payload.get("retry", job_class.options.get("retry") if job_class else True)
        if option is None or option is False:
            self._notify_death(payload, exc)
            return "dropped"
        now = wire.now() if now is None else now
        count = self._stamp(payload, queue, exc, now)
        limit = option if type(option) is int else self.config.max_retries
        if count >= limit or self._past_retry_for(payload, now):
            return self._exhausted(payload, exc, job_class, now)
        delay = self._custom_delay(payload, exc, job_class, count)
        if delay == "discard":
            return self._discard(payload, exc)
        if delay == "kill":
            return self._exhausted(payload, exc, job_class, now)
        if type(delay) in (int, float) and 0 < delay < wire.MAX_RETRY_FOR:
            seconds = float(delay) + jitter(count)
        else:  # none, not a number, or one that would never come (inf, 1e300)
            seconds = backoff(count)
        self.config.store.add_retry(now + seconds, wire.dumps(payload))
        return "retry"

    @staticmethod
    def _past_retry_for(payload: Payload, now: float) -> bool:
        """Sidekiq 7.1.3+: a job with ``retry_for`` stops once its first failure is that old."""
        window = payload.get("retry_for")
        if window is None:
            return False
        first = wire.to_seconds(payload.get("failed_at"))
        return first is not None and first + window < now

    def _custom_delay(
        self, payload: Payload, exc: BaseException, job_class: type[Job] | None, count: int
    ) -> Any:
        if job_class is None:
            return None
        try:
            return job_class.retry_in(count, exc, payload)
        except Exception:
            # Sidekiq: an error inside sidekiq_retry_in is logged and the default delay
            # used; letting it escape would leave the failure unrecorded.
            log.exception("retry_in of %s failed; using the default delay", payload["class"])
            return None

    def _stamp(self, payload: Payload, queue: str, exc: BaseException, now: float) -> int:
        payload["queue"] = payload.get("retry_queue") or queue
        payload["error_message"] = error_message(exc)
        payload["error_class"] = error_class(exc)
        stamp = timestamp(self.config, now)
        if "retry_count" in payload:  # an int >= 0: payload.loads checked it
            payload["retried_at"] = stamp
            payload["retry_count"] += 1
        else:
            payload["failed_at"] = stamp
            payload["retry_count"] = 0
        option = payload.get("backtrace")  # absent, a bool or an int (payload.loads)
        if option is not None and option is not False:
            lines = backtrace_lines(exc)
            if option is not True:
                lines = lines[:option]
            payload["error_backtrace"] = encode_backtrace(lines)
        count: int = payload["retry_count"]
        return count

    def _exhausted(
        self, payload: Payload, exc: BaseException, job_class: type[Job] | None, now: float
    ) -> Outcome:
        verdict = None
        if job_class is not None:
            try:
                verdict = job_class.retries_exhausted(payload, exc)
            except Exception:
                log.exception("retries_exhausted of %s failed", payload.get("class"))
        if payload.get("dead") is False or verdict == "discard":
            payload["discarded_at"] = timestamp(self.config, now)
            self._notify_death(payload, exc)
            return "discard"
        self.kill(payload, exc, now)
        return "dead"

    def kill(self, payload: Payload, exc: BaseException, now: float | None = None) -> None:
        """Send a job to the dead set (trimmed), say so in the log, tell the death handlers."""
        now = wire.now() if now is None else now
        self.config.store.add_dead(
            wire.dumps(payload), now, self.config.dead_max_jobs, self.config.dead_timeout
        )
        _log_dead(payload, payload.get("queue"), error_class(exc), error_message(exc))
        self._notify_death(payload, exc)

    def bury(self, raw: bytes, queue: str, exc: PayloadError) -> None:
        """A job the worker could not read: to the dead set unrun, and the error handlers.

        Sidekiq buries invalid JSON as it was; kiq does too, and a job whose fields it
        could not read (``exc.job``) is buried with the reason as its error, so the
        dead set and the Web UI say why (``error_class`` ``kiq.PayloadError``). The
        death handlers are not told (Sidekiq: the job never ran).
        """
        job = exc.job
        if job is None:
            member = raw
            job = {}
        else:
            job = dict(job)
            job["error_class"] = REFUSED
            job["error_message"] = str(exc)[:MAX_MESSAGE]
            job.setdefault("failed_at", timestamp(self.config))
            member = wire.dumps(job)
        self.config.store.add_dead(
            member, wire.now(), self.config.dead_max_jobs, self.config.dead_timeout
        )
        if exc.job is not None and unique.is_unique(exc.job) and "queue" in exc.job:
            unique.release(self.config, exc.job)  # it will never run: free its unique lock
        _log_dead(job, queue, REFUSED, str(exc))
        context = {"context": "Invalid JSON for job", "jobstr": raw, "queue": queue}
        call_each(self.config.error_handlers, "error handler", exc, context)

    def _discard(self, payload: Payload, exc: BaseException) -> Outcome:
        log.warning("discarded: %s: %s", error_class(exc), error_message(exc))
        self._notify_death(payload, exc)
        return "discard"

    def _notify_error(self, exc: BaseException, payload: Payload, queue: str) -> None:
        context = {"context": "Job raised exception", "job": payload, "queue": queue}
        call_each(self.config.error_handlers, "error handler", exc, context)

    def _notify_death(self, payload: Payload, exc: BaseException) -> None:
        call_each(self.config.death_handlers, "death handler", payload, exc)


def _log_dead(job: Payload, queue: object, error: str, message: str) -> None:
    # One line per job moved to the dead set (issue 12: there was none). The values are
    # the payload's own: kiq.log escapes what it prints.
    log.warning(
        "dead: class=%s jid=%s queue=%s error=%s: %s",
        job.get("class", "?"),
        job.get("jid", "?"),
        queue,
        error,
        message,
    )
