"""The Web UI's routes: Sidekiq's pages (shared/sidekiq-wire.md §10), plus ours.

Every page is a plain ``def`` over ``kiq.api`` (Starlette runs it in its threadpool,
so the blocking Redis client is fine behind ASGI) rendered by a Jinja2 template;
every change is a POST handled by a plain ``def`` too, after ``action`` has parsed the
form and refused cross-site requests, and answered with a redirect (post/redirect/get).
Paging is done in Redis (one LRANGE or ZRANGE per page), so a page costs the same with
100 jobs or 100,000.

Links are built from ``request.scope["root_path"]``, so the app works at any mount
point: ``/``, ``/kiq`` in a Starlette or FastAPI app, or behind a proxy prefix.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any, Final

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from kiq import __version__, api
from kiq.config import Config, get_default
from kiq.errors import JobNotFound, KiqError
from kiq.web import display
from kiq.web.security import CSRF_COOKIE, CSRF_FIELD, Auth, Guard, Tokens, post_refusal

HERE: Final = Path(__file__).parent
PAGE_SIZES: Final = (25, 50, 100)
FILTER_LIMIT: Final = 1000  # matches read by a substring filter (a ZSCAN of the whole set)
SCAN_COUNT: Final = 1000  # ZSCAN COUNT hint: 10 round trips for 10,000 retries, not 100
BUSY_LIMIT: Final = 500  # running jobs listed on the Busy page
HISTORY_DAYS: Final = {7: "1 week", 30: "1 month", 90: "3 months"}
METRICS_WINDOWS: Final = {60: "1 hour", 120: "2 hours", 240: "4 hours", 480: "8 hours"}


def create_app(
    config: Config | None = None,
    *,
    auth: Auth | None = None,
    prefix: str = "",
    secret: bytes | None = None,
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
        middleware=[Middleware(Guard, auth=auth, tokens=Tokens(key))],
        exception_handlers={HTTPException: _http_error},  # type: ignore[dict-item]
    )
    app.state.config = config
    app.state.tokens = Tokens(key)
    app.state.templates = Jinja2Templates(env=env)
    if not prefix:
        return app
    return Starlette(routes=[Mount(prefix, app=app)])


# -- plumbing ------------------------------------------------------------------------


def _config(request: Request) -> Config:
    config: Config | None = request.app.state.config
    return config if config is not None else get_default()


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def render(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    """A page: the template with what the layout needs (links root, CSRF token, nav)."""
    config = _config(request)
    context.setdefault("nav", "")
    context.update(
        root=_root(request),
        csrf=request.state.csrf_token,
        csrf_field=CSRF_FIELD,
        version=__version__,
        redis_url=config.store.safe_url,
        now=datetime.now(UTC),
        query=request.query_params,
    )
    templates: Jinja2Templates = request.app.state.templates
    return templates.TemplateResponse(request, template, context, status_code=status)


def _http_error(request: Request, exc: HTTPException) -> Response:
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
        return RedirectResponse(_root(request) + target, status_code=303)

    endpoint.__name__ = handler.__name__
    return endpoint


def _int_param(request: Request, name: str, default: int, allowed: Iterable[int]) -> int:
    try:
        value = int(request.query_params.get(name, default))
    except ValueError:
        return default
    return value if value in allowed else default


class Pager:
    """``?page=N&count=M`` (1-based page) over ``total`` items."""

    def __init__(self, request: Request, total: int) -> None:
        self.count = _int_param(request, "count", PAGE_SIZES[0], PAGE_SIZES)
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


def _form_str(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


# -- dashboard -----------------------------------------------------------------------


def dashboard(request: Request) -> Response:
    if request.method == "HEAD":
        return health(request)
    config = _config(request)
    days = _int_param(request, "days", 7, HISTORY_DAYS)
    history = api.History(days, config=config)
    processed, failed = history.processed(), history.failed()
    dates = list(reversed(processed))
    chart = display.line_chart(
        [d[5:] for d in dates],
        [
            ("Processed", "processed", [processed[d] for d in dates]),
            ("Failed", "failed", [failed[d] for d in dates]),
        ],
    )
    return render(
        request,
        "dashboard.html",
        title="Dashboard",
        nav="dashboard",
        stats=_stats(config),
        redis=api.redis_info(config),
        days=days,
        day_choices=HISTORY_DAYS,
        history=chart,
        poll_choices=(2, 5, 10, 20),
    )


def _stats(config: Config) -> dict[str, Any]:
    stats = api.Stats(config)
    return {
        "processed": stats.processed,
        "failed": stats.failed,
        "busy": stats.workers_size,
        "processes": stats.processes_size,
        "enqueued": stats.enqueued,
        "scheduled": stats.scheduled_size,
        "retries": stats.retry_size,
        "dead": stats.dead_size,
        "default_latency": round(stats.default_queue_latency, 3),
    }


def stats_json(request: Request) -> Response:
    """Sidekiq's ``/stats`` JSON (the live graph polls it), same keys."""
    config = _config(request)
    info = api.redis_info(config)
    return JSONResponse(
        {
            "sidekiq": _stats(config),
            "redis": {
                "server": info.server,
                "redis_version": info.version,
                "uptime_in_days": info.uptime_days,
                "connected_clients": info.connections,
                "used_memory_human": info.memory,
                "used_memory_peak_human": info.peak_memory,
            },
            "server_utc_time": datetime.now(UTC).strftime("%H:%M:%S UTC"),
        },
        headers={"cache-control": "no-store"},
    )


def stats_queues(request: Request) -> Response:
    return JSONResponse(api.Stats(_config(request)).queues())


# -- busy ----------------------------------------------------------------------------


def busy(request: Request) -> Response:
    config = _config(request)
    processes = list(api.ProcessSet(config))
    works = list(islice(api.WorkSet(config), BUSY_LIMIT))
    jids = [str(work.payload.get("jid")) for _, _, work in works if work.payload.get("jid")]
    return render(
        request,
        "busy.html",
        title="Busy",
        nav="busy",
        processes=processes,
        works=works,
        progress=api.progress(jids, config),
        limit=BUSY_LIMIT,
        leader=api.ProcessSet(config, clean=False).leader(),
    )


def busy_action(request: Request, form: FormData) -> str:
    verb = _form_str(form, "action")
    if verb not in ("quiet", "stop"):
        raise HTTPException(400, f"unknown action {verb!r}; use quiet or stop")
    config = _config(request)
    identity = _form_str(form, "identity")
    if identity:
        process = api.ProcessSet.get(identity, config)
        if process is None:
            raise HTTPException(404, f"process {identity} is gone")
        try:
            process.quiet() if verb == "quiet" else process.stop()
        except KiqError as exc:
            raise HTTPException(400, str(exc)) from exc
    else:
        for process in api.ProcessSet(config):
            if not process.embedded:
                process.quiet() if verb == "quiet" else process.stop()
    return "/busy"


# -- queues --------------------------------------------------------------------------


def queues(request: Request) -> Response:
    return render(
        request,
        "queues.html",
        title="Queues",
        nav="queues",
        queues=api.queue_summaries(_config(request)),
    )


def queue_page(request: Request) -> Response:
    name = request.path_params["name"]
    queue = api.Queue(name, _config(request))
    pager = Pager(request, queue.size())
    asc = request.query_params.get("direction") == "asc"
    return render(
        request,
        "queue.html",
        title=f"Queue {name}",
        nav="queues",
        queue=queue,
        jobs=queue.page(pager.start, pager.count, reverse=asc),
        pager=pager,
        direction="asc" if asc else "desc",
        paused=queue.paused(),
        latency=queue.latency(),
    )


def queue_action(request: Request, form: FormData) -> str:
    name = request.path_params["name"]
    queue = api.Queue(name, _config(request))
    verb = _form_str(form, "action")
    if verb == "delete":
        queue.clear()
        return "/queues"
    if verb == "pause":
        queue.pause()
    elif verb == "unpause":
        queue.unpause()
    else:
        raise HTTPException(400, f"unknown action {verb!r}; use delete, pause or unpause")
    return "/queues"


def queue_delete_job(request: Request, form: FormData) -> str:
    name = request.path_params["name"]
    raw = _form_str(form, "key_val")
    if raw:
        api.JobRecord(raw, name, _config(request)).delete()
    return f"/queues/{display.url_part(name)}"


# -- retries, scheduled, dead --------------------------------------------------------


class SetKind:
    """What one sorted-set page shows and allows."""

    def __init__(
        self,
        path: str,
        title: str,
        make: Callable[[Config], api.JobSet],
        actions: dict[str, str],
        empty: str,
    ) -> None:
        self.path, self.title, self.make, self.actions = path, title, make, actions
        self.empty = empty
        self.descending = path == "morgue"  # newest deaths first; due soonest first otherwise


RETRIES = SetKind(
    "retries",
    "Retries",
    api.RetrySet,
    {"retry": "Retry now", "delete": "Delete", "kill": "Kill"},
    "No retries: nothing is waiting to be retried.",
)
SCHEDULED = SetKind(
    "scheduled",
    "Scheduled",
    api.ScheduledSet,
    {"add_to_queue": "Add to queue", "delete": "Delete", "kill": "Kill"},
    "No scheduled jobs.",
)
DEAD = SetKind(
    "morgue", "Dead", api.DeadSet, {"retry": "Retry now", "delete": "Delete"}, "No dead jobs."
)


def set_page(kind: SetKind, request: Request) -> Response:
    jobset = kind.make(_config(request))
    direction = request.query_params.get("direction")
    descending = kind.descending if direction not in ("asc", "desc") else direction == "desc"
    substr = request.query_params.get("substr", "").strip()
    if substr:
        matches = sorted(
            islice(jobset.scan(substr, count=SCAN_COUNT), FILTER_LIMIT),
            key=lambda e: e.score,
            reverse=descending,
        )
        pager = Pager(request, len(matches))
        entries = matches[pager.start : pager.start + pager.count]
    else:
        pager = Pager(request, jobset.size())
        entries = jobset.page(pager.start, pager.count, reverse=descending)
    return render(
        request,
        "sorted_set.html",
        title=kind.title,
        nav=kind.path,
        kind=kind,
        entries=entries,
        pager=pager,
        direction="desc" if descending else "asc",
        substr=substr,
        filter_limit=FILTER_LIMIT,
    )


def _entry(jobset: api.JobSet, key: str) -> api.SortedEntry:
    """The entry behind a ``<score>-<jid>`` key, or 404."""
    score, _, jid = key.rpartition("-")
    try:
        found = jobset.fetch(float(score), jid or None)
    except ValueError:
        found = []
    if not found:
        raise HTTPException(
            404, "This job is no longer here: it ran, was retried, deleted or moved meanwhile."
        )
    return found[0]


def entry_key(entry: api.SortedEntry) -> str:
    return f"{entry.score!r}-{entry.jid}"


def job_page(kind: SetKind, request: Request) -> Response:
    entry = _entry(kind.make(_config(request)), request.path_params["key"])
    try:
        backtrace, backtrace_error = entry.error_backtrace, None
    except KiqError as exc:
        backtrace, backtrace_error = None, str(exc)
    return render(
        request,
        "job.html",
        title=f"{kind.title}: {entry.display_class}",
        nav=kind.path,
        kind=kind,
        entry=entry,
        backtrace=backtrace,
        backtrace_error=backtrace_error,
    )


def _apply(kind: SetKind, entry: api.SortedEntry, verb: str) -> None:
    if verb not in kind.actions:
        raise HTTPException(400, f"{kind.title}: unknown action {verb!r}; use {list(kind.actions)}")
    try:
        if verb == "retry":
            entry.retry()
        elif verb == "add_to_queue":
            entry.add_to_queue()
        elif verb == "kill":
            entry.kill()
        else:
            entry.delete()
    except JobNotFound:
        pass  # someone (the poller, another admin) moved it first: nothing left to do


def set_bulk(kind: SetKind, request: Request, form: FormData) -> str:
    jobset = kind.make(_config(request))
    verb = _form_str(form, "action")
    for key in form.getlist("key"):
        if isinstance(key, str):
            try:
                entry = _entry(jobset, key)
            except HTTPException:
                continue
            _apply(kind, entry, verb)
    return f"/{kind.path}"


def set_one(kind: SetKind, request: Request, form: FormData) -> str:
    jobset = kind.make(_config(request))
    try:
        entry = _entry(jobset, request.path_params["key"])
    except HTTPException:
        return f"/{kind.path}"
    _apply(kind, entry, _form_str(form, "action"))
    return f"/{kind.path}"


def set_all(kind: SetKind, request: Request, _form: FormData) -> str:
    verb = request.path_params["action"]
    if verb not in kind.actions:
        raise HTTPException(400, f"{kind.title}: unknown action {verb!r}; use {list(kind.actions)}")
    jobset = kind.make(_config(request))
    if verb == "delete":
        jobset.clear()
    elif verb == "retry":
        jobset.retry_all()
    elif verb == "add_to_queue":
        jobset.add_all_to_queue()
    elif isinstance(jobset, api.RetrySet | api.ScheduledSet):
        jobset.kill_all()
    return f"/{kind.path}"


# -- metrics -------------------------------------------------------------------------


def metrics(request: Request) -> Response:
    config = _config(request)
    minutes = _int_param(request, "minutes", 60, METRICS_WINDOWS)
    substr = request.query_params.get("substr", "").strip()
    result = api.Metrics(config).top_jobs(minutes, class_filter=substr or None)
    top = result.jobs[:5]
    chart = display.line_chart(
        [f"{m:%H:%M}" for m in result.minutes],
        [(job.klass, f"series-{i}", job.series["p"]) for i, job in enumerate(top)],
    )
    return render(
        request,
        "metrics.html",
        title="Metrics",
        nav="metrics",
        result=result,
        chart=chart,
        minutes=minutes,
        windows=METRICS_WINDOWS,
        substr=substr,
    )


def metrics_job(request: Request) -> Response:
    config = _config(request)
    name = request.path_params["name"]
    minutes = _int_param(request, "minutes", 60, METRICS_WINDOWS)
    data = api.Metrics(config).for_job(name, minutes)
    chart = display.line_chart(
        [f"{m:%H:%M}" for m in data.minutes],
        [
            ("Executions", "processed", data.metrics.series["p"]),
            ("Failures", "failed", data.metrics.series["f"]),
        ],
    )
    return render(
        request,
        "metrics_job.html",
        title=f"Metrics: {name}",
        nav="metrics",
        name=name,
        data=data,
        chart=chart,
        bars=display.bar_chart(data.labels, data.counts),
        minutes=minutes,
        windows=METRICS_WINDOWS,
    )


# -- recurring jobs ------------------------------------------------------------------


def recurring(request: Request) -> Response:
    return render(
        request,
        "recurring.html",
        title="Recurring jobs",
        nav="recurring",
        entries=list(api.cron_set(_config(request))),
    )


def recurring_action(request: Request, form: FormData) -> str:
    try:
        entry = api.cron_set(_config(request)).get(request.path_params["name"])
    except JobNotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    verb = _form_str(form, "action")
    if verb == "enqueue":
        entry.enqueue_now()
    elif verb == "enable":
        entry.enable()
    elif verb == "disable":
        entry.disable()
    else:
        raise HTTPException(400, f"unknown action {verb!r}; use enqueue, enable or disable")
    return "/recurring"


def health(request: Request) -> Response:
    """``HEAD /`` and ``GET /health``: Redis answers (Sidekiq: LLEN queue:default)."""
    api.Queue("default", _config(request)).size()
    return PlainTextResponse("OK")


def _set_routes(kind: SetKind) -> list[BaseRoute]:
    def page(request: Request) -> Response:
        return set_page(kind, request)

    def job(request: Request) -> Response:
        return job_page(kind, request)

    def bulk(request: Request, form: FormData) -> str:
        return set_bulk(kind, request, form)

    def one(request: Request, form: FormData) -> str:
        return set_one(kind, request, form)

    def every(request: Request, form: FormData) -> str:
        return set_all(kind, request, form)

    base = f"/{kind.path}"
    return [
        Route(base, page, name=kind.path),
        Route(base, action(bulk), methods=["POST"]),
        Route(f"{base}/all/{{action}}", action(every), methods=["POST"]),
        Route(f"{base}/{{key}}", job),
        Route(f"{base}/{{key}}", action(one), methods=["POST"]),
    ]


ROUTES: Final[list[BaseRoute]] = [
    Route("/", dashboard, name="dashboard"),
    Route("/health", health),
    Route("/stats", stats_json),
    Route("/stats/queues", stats_queues),
    Route("/busy", busy),
    Route("/busy", action(busy_action), methods=["POST"]),
    Route("/queues", queues),
    Route("/queues/{name}", queue_page),
    Route("/queues/{name}", action(queue_action), methods=["POST"]),
    Route("/queues/{name}/delete", action(queue_delete_job), methods=["POST"]),
    *_set_routes(RETRIES),
    *_set_routes(SCHEDULED),
    *_set_routes(DEAD),
    Route("/metrics", metrics),
    Route("/metrics/{name}", metrics_job),
    Route("/recurring", recurring),
    Route("/recurring/{name}", action(recurring_action), methods=["POST"]),
    Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
]
