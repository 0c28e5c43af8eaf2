"""Starlette and FastAPI: a lifespan that configures kiq and can mount the Web UI.

::

    from kiq.integrations.starlette import kiq_lifespan

    app = Starlette(routes=routes, lifespan=kiq_lifespan({"redis_url": REDIS_URL}))
    app = FastAPI(lifespan=kiq_lifespan(settings.kiq, web="/kiq", web_auth=is_admin))

    @app.post("/signup")
    async def signup(...):
        jid = await WelcomeEmail.aperform_async(user.id)   # or kiq.AsyncClient().push(...)

At startup the settings (Config field names; queues as in ``config/sidekiq.yml``)
are applied to the default Config, which ``MyJob.aperform_async`` uses, and that
Config is put on ``app.state.kiq``. Async views enqueue with the ``a``-prefixed
verbs (``aperform_async``, ``aperform_in``, ``aperform_at``, ``aperform_bulk``) or
``kiq.AsyncClient``: the Redis write is awaited on the app's own loop, never blocking
it. At shutdown the loop's Redis connections are closed.

The Web UI (``kiq.web``, the ``web`` extra) is mounted when ``web`` names a path; it
lets whoever reaches it retry and delete jobs, so give ``web_auth`` (``request ->
bool``) or mount it behind your own authentication. Mounting it yourself is one
line: ``app.mount("/kiq", kiq.web.create_app(auth=is_admin))``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeAlias

try:
    from starlette.applications import Starlette
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "kiq.integrations.starlette needs Starlette (or FastAPI): pip install 'kiq[integrations]'"
    ) from exc

from kiq.config import Config, get_default
from kiq.integrations.settings import apply, config_values

__all__ = ["kiq_lifespan", "mount_web"]

log = logging.getLogger(__name__)

State: TypeAlias = Mapping[str, Any] | None
Lifespan: TypeAlias = Callable[[Starlette], AbstractAsyncContextManager[State]]
Auth: TypeAlias = Callable[..., Any]  # request -> bool, sync or async (kiq.web's auth)


def kiq_lifespan(
    settings: Mapping[str, Any] | None = None,
    *,
    web: str | None = None,
    web_auth: Auth | None = None,
    lifespan: Lifespan | None = None,
) -> Lifespan:
    """A lifespan for ``Starlette(lifespan=...)`` / ``FastAPI(lifespan=...)``.

    Args:
        settings: kiq settings applied to the default Config at startup.
        web: mount the Web UI at this path (e.g. ``"/kiq"``) if kiq.web is installed.
        web_auth: the Web UI's ``auth(request) -> bool``, asked on every request.
        lifespan: the app's own lifespan, run inside this one; its state is passed on.
    """

    @asynccontextmanager
    async def run(app: Starlette) -> AsyncIterator[State]:
        config = apply(get_default(), config_values(settings or {}, "kiq_lifespan settings"))
        app.state.kiq = config
        if web is not None:
            mount_web(app, web, config=config, auth=web_auth)
        try:
            if lifespan is None:
                yield None
            else:
                async with lifespan(app) as state:
                    yield state
        finally:
            await _close(config)

    return run


def mount_web(
    app: Starlette, path: str = "/kiq", *, config: Config | None = None, auth: Auth | None = None
) -> bool:
    """Mount kiq's Web UI at ``path`` if ``kiq.web`` can be imported; say why if not."""
    try:
        from kiq.web import create_app
    except ImportError as exc:
        log.warning("kiq Web UI not mounted at %s: %s", path, exc)
        return False
    app.mount(path, create_app(config, auth=auth), name="kiq")
    return True


async def _close(config: Config) -> None:
    # Only a store that was opened: reading config.store would connect, or even start
    # the embedded server, just to close it.
    store = config._store
    if store is not None:
        await store.aclose()
        config.close()
