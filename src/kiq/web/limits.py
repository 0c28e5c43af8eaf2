"""The Limits page (issue 16 point 4): limiters, queue limits and unique locks.

A plain ``def`` over ``kiq.api`` like every page: each limiter with its kind, limit,
use now and its counts of the last minutes; the queue limits of the UI's Config; the
unique locks (how many, the first ones, a lookup by job) with a Release button, which
is a POST through ``kiq.web.base.action`` like every change.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from kiq import api
from kiq.web.base import config_of, form_str, render


def limits(request: Request) -> Response:
    config = config_of(request)
    found, problem = _lookup(request)
    return render(
        request,
        "limits.html",
        title="Limits",
        nav="limits",
        limiters=api.limiters(config),
        limited=api.limited_jobs(config),
        queue_limits=api.queue_limits(config),
        locks=api.unique_locks(config),
        lookup=found,
        lookup_problem=problem,
        lookup_query={k: request.query_params.get(k, "") for k in ("class", "queue", "args")},
    )


def _lookup(request: Request) -> tuple[api.UniqueLock | None, str]:
    """The lock of the job named in the query (class, queue, args JSON), if asked."""
    klass = request.query_params.get("class", "")
    if not klass:
        return None, ""
    try:
        args: Any = json.loads(request.query_params.get("args") or "[]")
    except ValueError:
        return None, 'args must be a JSON array, e.g. [7] or ["a.csv"]'
    if not isinstance(args, list):
        return None, "args must be a JSON array, e.g. [7]"
    job = {"class": klass, "queue": request.query_params.get("queue") or "default", "args": args}
    lock = api.unique_lock(job, config_of(request))
    return lock, "" if lock is not None else "no lock is held for this job"


def release_lock(request: Request, form: FormData) -> str:
    """POST /limits/unique: release the lock ``key`` if ``jid`` still holds it."""
    key, jid = form_str(form, "key"), form_str(form, "jid")
    if not key or not jid:
        raise HTTPException(400, "give the lock's key and the jid holding it")
    config = config_of(request)
    if not key.startswith(config.keys.unique("")):
        raise HTTPException(400, f"{key!r} is not a unique lock's key")
    api.UniqueLock(key, jid, 0.0, config).release()
    return "/limits"
