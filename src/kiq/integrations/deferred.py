"""A push prepared now and made later: the core of enqueue-after-commit.

Django's ``enqueue_on_commit`` and SQLAlchemy's ``enqueue_after_commit`` both prepare
the job when the caller asks, inside the transaction: the arguments are checked (a
bad one fails at the call site, not in a commit hook) and the jid is fixed, so the
caller gets it at once, as Sidekiq's transactional push returns it. Nothing reaches
Redis until the commit hook calls the DeferredPush; client middleware runs then, as
in Sidekiq, where the whole push is deferred (``Sidekiq.transactional_push!``).

A rolled-back transaction simply never calls it: the job never existed.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeAlias

from kiq.client import Client
from kiq.job import FunctionJob, Job, Setter
from kiq.payload import Payload

# What the helpers accept as the job: a Job class, a @kiq.job function, or
# ``MyJob.set(queue=...)`` for per-call options.
Enqueueable: TypeAlias = "type[Job] | FunctionJob[..., Any] | Setter"

# True while a DeferredPush runs, so a middleware that defers pushes made inside a
# transaction (Django's OnCommitMiddleware) lets this one through even when the hook
# runs inside an atomic block (Django's captureOnCommitCallbacks(execute=True)).
_releasing: contextvars.ContextVar[bool] = contextvars.ContextVar("kiq_releasing", default=False)


def is_releasing() -> bool:
    """Whether the current push is a deferred one being made now."""
    return _releasing.get()


@contextmanager
def releasing() -> Iterator[None]:
    token = _releasing.set(True)
    try:
        yield
    finally:
        _releasing.reset(token)


@dataclass(frozen=True, slots=True)
class DeferredPush:
    """One job, normalized now, pushed when called.

    Example::

        deferred = DeferredPush.prepare(WelcomeEmail, [user.id])
        on_commit(deferred)          # any hook that calls it once
        deferred.jid                 # known before the push
    """

    client: Client
    payload: Payload

    @classmethod
    def prepare(cls, job: Enqueueable, args: Sequence[Any]) -> DeferredPush:
        setter = job if isinstance(job, Setter) else job.set()
        # Setter's item and client carry its options, wait/wait_until and config= exactly
        # as perform_async would use them; only the write is postponed.
        client = setter._client()
        return cls(client, client.normalize(setter._item(args)))

    @property
    def jid(self) -> str:
        jid: str = self.payload["jid"]
        return jid

    def __call__(self) -> str | None:
        with releasing():
            return self.client.push(dict(self.payload))
