"""The Web UI's routes: Sidekiq's pages (shared/sidekiq-wire.md §10), plus ours.

Pages are in kiq.web.pages and kiq.web.sets, plain ``def``s over ``kiq.api``; every
change is a POST through ``kiq.web.base.action``. Links are built from
``request.scope["root_path"]``, so the app works at any mount point: ``/``, ``/kiq``
in a Starlette or FastAPI app, or behind a proxy prefix.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Final

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from kiq.config import Config
from kiq.web import display
from kiq.web.base import HERE, action, config_of, http_error
from kiq.web.batches import batch_action, batch_page, batches, workflow_page, workflows
from kiq.web.failsafe import Failsafe
from kiq.web.limits import limits, release_lock
from kiq.web.pages import (
    busy,
    busy_action,
    cancel_action,
    dashboard,
    health,
    job_fate,
    metrics,
    metrics_job,
    queue_page,
    queue_post,
    queues,
    recurring,
    recurring_action,
    stats_json,
    stats_queues,
)
from kiq.web.security import Auth, Guard, Hosts, Tokens
from kiq.web.sets import DEAD, RETRIES, SCHEDULED, entry_key, set_routes


def create_app(
    config: Config | None = None,
    *,
    auth: Auth | None = None,
    prefix: str = "",
    secret: bytes | None = None,
    allowed_hosts: Iterable[str] | None = None,
) -> Starlette:
    """Build the Web UI as an ASGI app.

    Args:
        config: the Redis to show (default: ``kiq.get_default()`` when first needed).
        auth: ``auth(request) -> bool`` (sync or async), asked on every request;
            False answers 403 (401 with a challenge for ``BasicAuth``).
        prefix: serve under this path (``"/kiq"``) when run on its own; when mounted
            in another app, mount it there instead and leave this empty.
        secret: key signing the CSRF cookie; default ``KIQ_WEB_SECRET``, else random
            per process (set it when several server processes share the traffic).
        allowed_hosts: host names the UI answers to besides the loopback ones
            (``"kiq.example.com"``, ``"*.example.com"``, or ``"*"`` for any), against
            DNS rebinding (kiq.web.security). Default: with no ``auth``, only loopback
            names and the address the request reached; with ``auth``, any host. Give
            it when you mount the UI without ``auth`` in an app reached by name.

    Example::

        app = create_app(auth=BasicAuth("admin", "s3cret"))
        # uvicorn module:app, or app.mount("/kiq", create_app()) in Starlette/FastAPI
    """
    if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
        raise ValueError(f"prefix {prefix!r}: start it with '/' and do not end it with '/'")
    key = secret or os.environ.get("KIQ_WEB_SECRET", "").encode() or os.urandom(32)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(display.FILTERS, key=entry_key)
    env.globals["with_query"] = display.with_query
    app = Starlette(
        routes=ROUTES,
        middleware=[
            Middleware(
                Guard,
                auth=auth,
                tokens=Tokens(key),
                hosts=Hosts(allowed_hosts, any_host=auth is not None),
            ),
            Middleware(Failsafe),  # inside Guard: error pages get its headers
        ],
        exception_handlers={HTTPException: http_error},  # type: ignore[dict-item]
    )
    app.state.config = config
    app.state.tokens = Tokens(key)
    app.state.templates = Jinja2Templates(env=env)
    if not prefix:
        return app
    return Starlette(routes=[Mount(prefix, app=app)])


def metrics_or_scrape(request: Request) -> Response:
    """``/metrics``: the Metrics page, or the Prometheus scrape when the client asks for
    text/plain or OpenMetrics as Prometheus does (issue 8; needs the prometheus extra)."""
    try:
        from kiq import prometheus
    except ImportError:  # without prometheus-client there is only the page
        return metrics(request)
    accept = request.headers.get("accept")
    if not prometheus.wants_prometheus(accept):
        return metrics(request)
    body, content_type = prometheus.render(config_of(request), accept)
    return Response(body, media_type=content_type)


ROUTES: Final[list[BaseRoute]] = [
    Route("/", dashboard, name="dashboard"),
    Route("/health", health),
    Route("/stats", stats_json),
    Route("/stats/queues", stats_queues),
    Route("/busy", busy),
    Route("/busy", action(busy_action), methods=["POST"]),
    Route("/cancel", action(cancel_action), methods=["POST"]),  # issue 18
    Route("/jobs/{jid}", job_fate),
    Route("/queues", queues),
    # {name:path}: a queue, class or recurring job name may hold "/" (url_part encodes
    # it as %2F, which the server decodes before routing). A POST to a queue is its
    # pause/delete form or, with key_val, the delete of one job (<name>/delete).
    Route("/queues/{name:path}", queue_page),
    Route("/queues/{name:path}", action(queue_post), methods=["POST"]),
    *set_routes(RETRIES),
    *set_routes(SCHEDULED),
    *set_routes(DEAD),
    Route("/metrics", metrics_or_scrape),
    Route("/metrics/{name:path}", metrics_job),
    Route("/recurring", recurring),
    Route("/recurring/{name:path}", action(recurring_action), methods=["POST"]),
    Route("/limits", limits),
    Route("/limits/unique", action(release_lock), methods=["POST"]),
    Route("/batches", batches),
    Route("/batches/{bid:path}", batch_page),
    Route("/batches/{bid:path}", action(batch_action), methods=["POST"]),
    Route("/workflows", workflows),
    Route("/workflows/{wid:path}", workflow_page),
    Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
]
