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
    Shutdown (BaseException)
                           raised into processor threads at the hard-shutdown deadline;
                           user code must not catch it, so it is not an Exception
"""

from __future__ import annotations

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


class Shutdown(BaseException):
    """Raised into busy processor threads when the shutdown deadline passes.

    The job it interrupts has already been pushed back to its queue, so it is
    never retried; deriving from BaseException keeps ``except Exception`` in
    user code from swallowing it.
    """


class BatchError(KiqError):
    """A batch cannot take this: it expired, was invalidated, or never existed."""
