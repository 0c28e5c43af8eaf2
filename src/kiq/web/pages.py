"""Sidekiq's pages other than the sorted sets: dashboard, busy, queues, metrics, recurring.

Each is a plain ``def`` over ``kiq.api`` (Starlette runs it in its threadpool, so the
blocking Redis client is fine behind ASGI); queue pages page in Redis (one LRANGE).
"""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import islice
from typing import Any, Final

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from kiq import api
from kiq.config import Config
from kiq.errors import JobNotFound, KiqError
from kiq.web import display
from kiq.web.base import Pager, config_of, form_str, int_param, render

BUSY_LIMIT: Final = 500  # running jobs listed on the Busy page
HISTORY_DAYS: Final = {7: "1 week", 30: "1 month", 90: "3 months"}
METRICS_WINDOWS: Final = {60: "1 hour", 120: "2 hours", 240: "4 hours", 480: "8 hours"}


def dashboard(request: Request) -> Response:
    if request.method == "HEAD":
        return health(request)
    config = config_of(request)
    days = int_param(request, "days", 7, HISTORY_DAYS)
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
    config = config_of(request)
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
    return JSONResponse(api.Stats(config_of(request)).queues())


# -- busy ----------------------------------------------------------------------------


def busy(request: Request) -> Response:
    config = config_of(request)
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
        iterations=api.iterations(jids, config),
        limit=BUSY_LIMIT,
        leader=api.ProcessSet(config, clean=False).leader(),
    )


def busy_action(request: Request, form: FormData) -> str:
    verb = form_str(form, "action")
    if verb not in ("quiet", "stop"):
        raise HTTPException(400, f"unknown action {verb!r}; use quiet or stop")
    config = config_of(request)
    identity = form_str(form, "identity")
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


def cancel_action(request: Request, form: FormData) -> str:
    """The Cancel button (Busy page, job page): ``kiq.api.cancel``, then the job's page."""
    jid = form_str(form, "jid")
    try:
        api.cancel(jid, config_of(request))
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from exc
    return f"/jobs/{display.url_part(jid)}"


def job_fate(request: Request) -> Response:
    """One job by jid: how it ended if cancelled or expired (``kiq|fate|<jid>``) and its
    iterable state (``it-<jid>``) if it has one; 404 when kiq knows neither."""
    config = config_of(request)
    jid = request.path_params["jid"]
    fate = api.fate(jid, config)
    state = api.iterations([jid], config).get(jid)
    if not fate and state is None:
        raise HTTPException(
            404,
            f"No record of job {jid}: it was not cancelled or expired, or that was over "
            f"30 days ago; look in Busy, Queues, Scheduled, Retries and Dead",
        )
    job = api.JobRecord(fate["job"], fate.get("queue", ""), config) if fate.get("job") else None
    return render(
        request,
        "fate.html",
        title=f"Job {jid}",
        nav="busy",
        jid=jid,
        fate=fate,
        state=state,
        job=job,
        at=datetime.fromtimestamp(float(fate["at"]), UTC) if fate.get("at") else None,
    )


# -- queues --------------------------------------------------------------------------


def queues(request: Request) -> Response:
    return render(
        request,
        "queues.html",
        title="Queues",
        nav="queues",
        queues=api.queue_summaries(config_of(request)),
    )


def queue_page(request: Request) -> Response:
    name = request.path_params["name"]
    queue = api.Queue(name, config_of(request))
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


def queue_post(request: Request, form: FormData) -> str:
    """``POST /queues/<name>``: pause, resume or delete the queue; with ``key_val``,
    ``POST /queues/<name>/delete`` deletes that one job. The form, not the path, tells
    them apart, so a queue may be named ``x/delete`` (its path is ``x%2Fdelete``)."""
    name = request.path_params["name"]
    if "key_val" in form and name.endswith("/delete"):
        return queue_delete_job(name.removesuffix("/delete"), request, form)
    return queue_action(name, request, form)


def queue_action(name: str, request: Request, form: FormData) -> str:
    queue = api.Queue(name, config_of(request))
    verb = form_str(form, "action")
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


def queue_delete_job(name: str, request: Request, form: FormData) -> str:
    raw = form_str(form, "key_val")
    if raw:
        api.JobRecord(raw, name, config_of(request)).delete()
    return f"/queues/{display.url_part(name)}"


def metrics(request: Request) -> Response:
    config = config_of(request)
    minutes = int_param(request, "minutes", 60, METRICS_WINDOWS)
    substr = request.query_params.get("substr", "").strip()
    result = api.Metrics(config).top_jobs(minutes, class_filter=substr or None)
    top = result.jobs[:5]
    chart = display.line_chart(
        [f"{m:%H:%M}" for m in result.minutes],
        [(job.klass, f"series-{i}", job.series["p"]) for i, job in enumerate(top)],
        marks=deploy_marks(config, result.minutes),
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


def deploy_marks(config: Config, minutes: list[datetime]) -> list[tuple[float, str]]:
    """Deploys in the window as (index into ``minutes``, label), for the chart's marks."""
    first = minutes[0].replace(second=0, microsecond=0)
    marks = api.deploy_marks(first, minutes[-1], config)
    return [((mark.at - first).total_seconds() / 60, mark.label) for mark in marks]


def metrics_job(request: Request) -> Response:
    config = config_of(request)
    name = request.path_params["name"]
    minutes = int_param(request, "minutes", 60, METRICS_WINDOWS)
    data = api.Metrics(config).for_job(name, minutes)
    chart = display.line_chart(
        [f"{m:%H:%M}" for m in data.minutes],
        [
            ("Executions", "processed", data.metrics.series["p"]),
            ("Failures", "failed", data.metrics.series["f"]),
        ],
        marks=deploy_marks(config, data.minutes),
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
        entries=list(api.cron_set(config_of(request))),
    )


def recurring_action(request: Request, form: FormData) -> str:
    try:
        entry = api.cron_set(config_of(request)).get(request.path_params["name"])
    except JobNotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    if entry.problem is not None:
        raise HTTPException(400, f"recurring job {entry.name!r}: {entry.problem}; fix its hash")
    verb = form_str(form, "action")
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
    api.Queue("default", config_of(request)).size()
    return PlainTextResponse("OK")
