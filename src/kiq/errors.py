"""Errors raised by kiq.

Hierarchy (httpx style: one base a user can catch, a few leaves worth catching)::

    KiqError
      ConfigError          bad or conflicting settings; raised at start-up with the key,
                           the value and what is allowed
      JobArgumentError     job arguments that are not native JSON (raised by push)
      PayloadError         a payload read from Redis that is not a Sidekiq job, or whose
                           field kiq cannot read (payload.py lists the rules)
      UnknownJobError      a payload names a class that no kiq Job registered
      JobNotFound          an api lookup by jid found nothing
      RedisUnavailable     Redis cannot be reached; the message names the URL (never
                           the password) and the timeout that expired
      JobTimeout           raised inside a job that ran past its ``timeout``
      Discard              raise it from ``perform`` to end the job without a retry
      JobFailed            ``Result.get()``: the job failed for good (kiq.results, with
                           the remote class, message and traceback)
      ResultTimeout        ``Result.get(timeout=)`` passed first (also a TimeoutError)
      JobExpired           a job that reached a worker after its ``expires_at``: dropped
      JobCancelled         raise it from a job that saw ``self.cancelled()``: recorded as
                           cancelled, never retried (docs/iterable.md)
      OverLimit            a limiter (kiq.Limiter) refused the call; ``retry_in`` says
                           when to try again; inside a job it reschedules the job
    Shutdown (BaseException)
                           raised into processor threads at the hard-shutdown deadline;
                           user code must not catch it, so it is not an Exception
    IterationInterrupted (BaseException)
                           an iterable job saved its cursor and stops early (quiet, TERM,
                           ``max_iteration_runtime``); the worker puts it back in its
                           queue at once, not as a failure (Sidekiq's ``Interrupted``)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class KiqError(Exception):
    """Base class of every error kiq raises on purpose."""


class ConfigError(KiqError):
    """A setting is invalid; the message says which key, which value and what is allowed."""


class JobArgumentError(KiqError, TypeError):
    """Arguments to a job are not native JSON types (Sidekiq: strict_args!)."""


class PayloadError(KiqError, ValueError):
    """A payload in Redis is not a job kiq can run: not JSON, or a field of the wrong type.

    Sidekiq sends invalid JSON to the dead set; kiq does the same with a job whose field
    (``retry_count``, ``timeout``...) it cannot read. ``job`` is the decoded object when
    there was one, so the dead set can keep it with the message.
    """

    def __init__(self, message: str, job: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.job = job


class UnknownJobError(KiqError, LookupError):
    """No Job is registered under the payload's ``class`` (Sidekiq: NameError, retried)."""


class JobNotFound(KiqError, LookupError):
    """An admin API lookup by jid found nothing."""


class RedisUnavailable(KiqError, ConnectionError):
    """Redis could not be reached within the configured timeouts."""


class JobTimeout(KiqError, TimeoutError):
    """A job ran longer than its ``timeout`` option; it is retried like any error."""


class Discard(KiqError):
    """Raise from ``perform`` to stop a job for good: no retry, no dead set.

    This is the Python form of the brief's ``rescue InvalidRecipientError; return``
    made explicit, so the log and the death handlers still see why::

        def perform(self, user_id: int) -> None:
            if not (user := User.get(user_id)):
                raise kiq.Discard(f"user {user_id} is gone")
    """


class OverLimit(KiqError):
    """A limiter (``kiq.Limiter``) is at its limit and ``wait_timeout`` passed.

    ``limiter`` is the limiter's name, ``retry_in`` the seconds until the limit is
    likely to allow a call again (the limiter's own estimate: when the oldest holder's
    lock or the window ends). Raised out of ``within_limit``; inside a job the worker
    catches it and reschedules the job instead of counting a failure (docs/limits.md).
    """

    def __init__(
        self,
        limiter: str,
        retry_in: float,
        message: str | None = None,
        *,
        reschedule: int = 20,
        backoff: Callable[[int, float], float] | None = None,
    ) -> None:
        self.limiter = limiter
        self.retry_in = max(0.0, float(retry_in))
        self.reschedule = reschedule  # reschedules of a job before it fails normally
        self.backoff = backoff  # (times rescheduled so far, retry_in) -> delay in seconds
        super().__init__(
            message
            or f"limiter {limiter!r} is over its limit; try again in {self.retry_in:.3f}s "
            f"(raise wait_timeout to wait longer inside the call)"
        )


class Shutdown(BaseException):
    """Raised into busy processor threads when the shutdown deadline passes.

    The job it interrupts has already been pushed back to its queue, so it is
    never retried; deriving from BaseException keeps ``except Exception`` in
    user code from swallowing it.
    """


class JobCancelled(KiqError):
    """Raise from ``perform`` once ``self.cancelled()`` is true (``kiq.api.cancel``).

    The job ends recorded as cancelled (``kiq|fate|<jid>``), neither failed nor retried;
    returning normally after seeing ``cancelled()`` is recorded the same way.
    """


class IterationInterrupted(BaseException):
    """An iterable job flushed its cursor and stops before its end (Sidekiq: Interrupted).

    Raised by ``kiq.IterableJob`` when the process quiets or stops, or when the job
    has run ``max_iteration_runtime`` seconds; the worker moves the same payload (same
    jid) back to its queue at once, counts a run but not a failure, and the next run
    resumes from the cursor. A BaseException so that ``except Exception`` in a
    middleware or a hook does not turn it into a failure.
    """


class JobExpired(KiqError):
    """A job reached a worker after its ``expires_at`` (Sidekiq Pro's ``expires_in``).

    Never raised into job code: the worker drops the job unrun, logs it, counts it in
    ``kiq|stat|expired`` and records it in ``kiq|fate|<jid>`` (docs/iterable.md).
    """


class BatchError(KiqError):
    """A batch cannot take this: it expired, was invalidated, or never existed."""
