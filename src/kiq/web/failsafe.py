"""Error pages: a 503 while Redis is away, a readable 500 for anything else.

Why a middleware of its own, inside Guard: Starlette hands an unhandled exception to
its ServerErrorMiddleware, which sits outside every user middleware, so its bare
"Internal Server Error" carried neither the security headers nor a word on what went
wrong, and a Redis outage looked like a bug (issue 12). Here the exception is caught
before it leaves the app, so the page passes through Guard (headers, CSRF state) and
is rendered with the layout:

  * Redis unreachable, failing over, loading, out of memory or busy
    (``kiq.store.is_transient``, or kiq's own ``RedisUnavailable``): 503 with
    ``Retry-After``, naming Redis by its URL without the password; a page that was
    read (GET) reloads itself every few seconds, and the next request reconnects, so
    the UI comes back on its own with Redis.
  * Anything else: 500 naming the exception's class only (a message may hold data);
    the traceback goes to the ``kiq.web`` log, never to the browser.

A failure after the response has started cannot be turned into a page; it is
re-raised for the ASGI server to log and close the connection.
"""

from __future__ import annotations

import logging
import time
from typing import Final

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiq.errors import RedisUnavailable
from kiq.store import is_transient
from kiq.web.base import config_of, render

log = logging.getLogger("kiq.web")

RETRY_AFTER: Final = 5  # seconds: Retry-After, and the reload of a page that was read
LOG_EVERY: Final = 30.0  # seconds between two log lines about the same outage


def redis_down(exc: BaseException) -> bool:
    return isinstance(exc, RedisUnavailable) or is_transient(exc)


class Failsafe:
    """ASGI middleware: turn an exception escaping a page into an error page."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._outage_logged = -LOG_EVERY

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise
            request = Request(scope, receive)
            response = await run_in_threadpool(self.page, request, exc)
            await response(scope, receive, send)

    def page(self, request: Request, exc: Exception) -> Response:
        """The error page for ``exc`` (plain text if even the page cannot be drawn)."""
        if redis_down(exc):
            # A reload of a POST would send the form again: there the person decides.
            refresh = RETRY_AFTER if request.method in ("GET", "HEAD") else 0
            status, detail = 503, self._unavailable(request, exc, refresh)
            headers = {"retry-after": str(RETRY_AFTER), "cache-control": "no-store"}
        else:
            log.error("Web UI: %s %s failed", request.method, request.url.path, exc_info=exc)
            status, refresh, headers = 500, 0, {}
            detail = (
                f"Internal error ({type(exc).__name__}) while answering this page. "
                "The server log (logger kiq.web) has the traceback."
            )
        try:
            error = HTTPException(status, detail)
            page = render(
                request, "error.html", status, title=str(status), error=error, refresh=refresh
            )
        except Exception:
            log.exception("Web UI: the error page itself failed")
            return PlainTextResponse(detail, status, headers=headers)
        page.headers.update(headers)
        return page

    def _unavailable(self, request: Request, exc: Exception, refresh: int) -> str:
        try:
            url = config_of(request).store.safe_url
        except Exception:  # no usable config: say so without a URL
            url = "(the configured URL)"
        now = time.monotonic()
        if now - self._outage_logged >= LOG_EVERY:
            self._outage_logged = now
            log.warning("Web UI: Redis at %s is unavailable: %s", url, exc)
        why = f"Redis at {url} is unreachable or cannot serve requests right now"
        if refresh:
            retry = f"this page reloads every {refresh} seconds until Redis answers"
        else:
            retry = "the action may not have been carried out: check, then send it again"
        return f"{why} ({type(exc).__name__}: {exc}). The Web UI retries on each request; {retry}."
