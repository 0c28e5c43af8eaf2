"""Django: settings, ``manage.py kiq worker``, and enqueue after commit.

Add the app and, optionally, settings (any kiq Config field; queues as in
``config/sidekiq.yml``)::

    INSTALLED_APPS = [..., "kiq.integrations.django"]
    KIQ = {
        "redis_url": "redis://localhost:6379/0",
        "concurrency": 10,
        "queues": [["critical", 3], "default"],
        "enqueue_on_commit": True,
    }

At app ready, ``KIQ`` is applied to the default Config (over the ``KIQ_*``
environment, as ``kiq.configure`` would). ``manage.py kiq worker`` takes the flags of
``kiq worker``, which win over ``KIQ``; it imports every installed app's ``jobs``
module and keeps what app code set on the default Config (middleware, handlers,
lifecycle hooks).

A job pushed inside ``transaction.atomic()`` could run before the row it needs is
committed, or after the transaction rolled back. ``enqueue_on_commit(MyJob, id)``
prepares the push and makes it when the transaction commits (Django's
``transaction.on_commit``), returning the jid at once; ``"enqueue_on_commit": True``
does the same for every ``perform_async`` made inside an atomic block (Sidekiq:
``Sidekiq.transactional_push!``), except that such a call returns None, as any push
a client middleware holds back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

try:  # Django ships no type hints: its names are Any here
    from django.conf import settings  # type: ignore[import-untyped]
    from django.db import close_old_connections, transaction  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "kiq.integrations.django needs Django: pip install 'kiq[integrations]' (or django)"
    ) from exc

from kiq.client import Client
from kiq.config import Config, get_default
from kiq.integrations.deferred import DeferredPush, Enqueueable, is_releasing
from kiq.integrations.settings import apply, config_values
from kiq.payload import Payload

__all__ = [
    "CloseOldConnections",
    "OnCommitMiddleware",
    "apply_settings",
    "enqueue_on_commit",
    "settings_values",
]

SETTING: Final = "KIQ"
ON_COMMIT: Final = "enqueue_on_commit"  # the one KIQ key that is not a Config field


def settings_values(raw: object) -> dict[str, Any]:
    """Check ``settings.KIQ`` and turn it into Config field values (without ON_COMMIT)."""
    return config_values(raw, f"settings.{SETTING}", own=[ON_COMMIT])


def apply_settings(config: Config | None = None) -> Config:
    """Apply ``settings.KIQ`` to ``config`` (the default Config if None); the app's ready().

    Installs OnCommitMiddleware, outermost, when ``KIQ["enqueue_on_commit"]`` is true.
    """
    raw = getattr(settings, SETTING, {})
    target = apply(config or get_default(), settings_values(raw))
    if raw.get(ON_COMMIT):
        # None for the default: manage.py kiq worker replaces the default Config (its
        # flags may change the Redis URL), and deferred pushes must follow it.
        target.client_middleware.prepend(OnCommitMiddleware(config))
    return target


def enqueue_on_commit(job: Enqueueable, *args: Any, using: str | None = None) -> str:
    """Push the job when the current transaction commits (at once outside one); return its jid.

    A rollback drops it, and so does rolling back the savepoint it was made in.
    ``using`` names the database whose transaction counts (default: ``"default"``).

    Example::

        with transaction.atomic():
            order = Order.objects.create(...)
            jid = enqueue_on_commit(ConfirmOrderJob, order.id)
            enqueue_on_commit(ConfirmOrderJob.set(queue="urgent"), order.id)
    """
    deferred = DeferredPush.prepare(job, args)
    transaction.on_commit(deferred, using=using)
    return deferred.jid


class OnCommitMiddleware:
    """Client middleware: hold back pushes made in an atomic block until it commits.

    Installed by ``KIQ["enqueue_on_commit"] = True``. Outside an atomic block a push
    goes through unchanged. Inside one, the push is stopped (``perform_async`` returns
    None) and made again, through the whole chain, from ``transaction.on_commit``.
    """

    def __init__(self, config: Config | None = None, using: str | None = None) -> None:
        self.config = config  # None: the default Config when the push is made
        self.using = using

    def __call__(
        self,
        job: str,
        payload: Payload,
        queue: str,
        call_next: Callable[[], Payload | None],
    ) -> Payload | None:
        if is_releasing() or not transaction.get_connection(self.using).in_atomic_block:
            return call_next()
        client = Client(self.config or get_default())
        transaction.on_commit(DeferredPush(client, payload), using=self.using)
        return None


class CloseOldConnections:
    """Server middleware for ``manage.py kiq worker``: Django's per-request connection care.

    A job is the worker's request: closing connections that broke or outlived
    ``CONN_MAX_AGE`` before and after each one is what Django does around every
    request (``django.db.close_old_connections`` on request_started/finished).
    """

    def __call__(
        self, job: Any, payload: Payload, queue: str, call_next: Callable[[], None]
    ) -> None:
        close_old_connections()
        try:
            call_next()
        finally:
            close_old_connections()
