"""What every page and action shares: the Config, links, rendering, forms and paging.

``action`` is the one door for changes: it parses the form, refuses cross-site
requests (kiq.web.security) and redirects after the change (post/redirect/get), so a
handler is a plain ``def`` that changes Redis through ``kiq.api`` and names a page.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates

from kiq import __version__
from kiq.config import Config, get_default
from kiq.web.security import CSRF_COOKIE, CSRF_FIELD, post_refusal

HERE: Final = Path(__file__).parent
PAGE_SIZES: Final = (25, 50, 100)


def config_of(request: Request) -> Config:
    config: Config | None = request.app.state.config
    return config if config is not None else get_default()


def root_of(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def render(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    """A page: the template with what the layout needs (links root, CSRF token, nav)."""
    config = config_of(request)
    context.setdefault("nav", "")
    context.update(
        root=root_of(request),
        csrf=request.state.csrf_token,
        csrf_field=CSRF_FIELD,
        version=__version__,
        redis_url=config.store.safe_url,
        now=datetime.now(UTC),
        query=request.query_params,
    )
    templates: Jinja2Templates = request.app.state.templates
    return templates.TemplateResponse(request, template, context, status_code=status)


def http_error(request: Request, exc: HTTPException) -> Response:
    if getattr(request.state, "csrf_token", None) is None:  # not behind Guard: plain text
        return PlainTextResponse(exc.detail, exc.status_code)
    return render(request, "error.html", exc.status_code, title=str(exc.status_code), error=exc)


Action = Callable[[Request, FormData], str]


def action(handler: Action) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint for a POST: parse the form, refuse cross-site requests, run ``handler``
    in the threadpool and redirect to the path it returns (relative to the root)."""

    async def endpoint(request: Request) -> Response:
        form = await request.form()
        field = form.get(CSRF_FIELD)
        refusal = post_refusal(
            request.headers,
            request.cookies.get(CSRF_COOKIE),
            field if isinstance(field, str) else None,
            request.app.state.tokens,
        )
        if refusal is not None:
            return PlainTextResponse(refusal, 403)
        target = await run_in_threadpool(handler, request, form)
        return RedirectResponse(root_of(request) + target, status_code=303)

    endpoint.__name__ = handler.__name__
    return endpoint


def int_param(request: Request, name: str, default: int, allowed: Iterable[int]) -> int:
    try:
        value = int(request.query_params.get(name, default))
    except ValueError:
        return default
    return value if value in allowed else default


class Pager:
    """``?page=N&count=M`` (1-based page) over ``total`` items."""

    def __init__(self, request: Request, total: int) -> None:
        self.count = int_param(request, "count", PAGE_SIZES[0], PAGE_SIZES)
        self.total = total
        self.pages = max(1, -(-total // self.count))
        try:
            page = int(request.query_params.get("page", 1))
        except ValueError:
            page = 1
        self.page = min(max(page, 1), self.pages)
        self.start = (self.page - 1) * self.count

    def window(self) -> list[int]:
        """The page numbers around the current one that the pager links to."""
        near = range(max(1, self.page - 2), min(self.pages, self.page + 2) + 1)
        return sorted({1, *near, self.pages})


def form_str(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""
