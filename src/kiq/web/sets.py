"""Retries, Scheduled and Dead: paged, sortable, filterable lists, job detail, and
retry / add to queue / delete / kill per job, per selection and for the whole set.

A page is one ZRANGE whatever the set's size; an entry is addressed as Sidekiq's Web
UI does, ``<score>-<jid>`` (several jobs may share a score). A member with no jid (not
JSON, or written by hand) is ``<score>~<digest>``, the digest being the start of the
SHA-256 of its raw bytes, so it can still be opened and deleted (issue 12). The key is
the rest of the path (``{key:path}``): a jid may hold ``/``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from itertools import islice
from typing import Final

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from kiq import api
from kiq.config import Config
from kiq.errors import JobNotFound, KiqError
from kiq.web.base import Pager, action, config_of, form_str, render

FILTER_LIMIT: Final = 1000  # matches read by a substring filter (a ZSCAN of the whole set)
SCAN_COUNT: Final = 1000  # ZSCAN COUNT hint: 10 round trips for 10,000 retries, not 100


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
    jobset = kind.make(config_of(request))
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
    """The entry behind a ``<score>-<jid>`` or ``<score>~<digest>`` key, or 404."""
    # Scores are positive epoch seconds: the first "-" or "~" ends them.
    cut = min((i for i in (key.find("-"), key.find("~")) if i >= 0), default=len(key))
    score, mark, rest = key[:cut], key[cut : cut + 1], key[cut + 1 :]
    try:
        found = jobset.fetch(float(score), rest) if mark == "-" else jobset.fetch(float(score))
    except ValueError:
        found = []
    if mark == "~":
        found = [e for e in found if e.jid is None and digest(e.raw) == rest]
    if not found:
        raise HTTPException(
            404, "This job is no longer here: it ran, was retried, deleted or moved meanwhile."
        )
    return found[0]


def digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:16]


def entry_key(entry: api.SortedEntry) -> str:
    if entry.jid is None:
        return f"{entry.score!r}~{digest(entry.raw)}"
    return f"{entry.score!r}-{entry.jid}"


def job_page(kind: SetKind, request: Request) -> Response:
    entry = _entry(kind.make(config_of(request)), request.path_params["key"])
    try:
        backtrace, backtrace_error = entry.error_backtrace, None
    except KiqError as exc:
        backtrace, backtrace_error = None, str(exc)
    return render(
        request,
        "job.html",
        title=f"{kind.title}: {entry.display_class if entry.valid else 'not a job'}",
        nav=kind.path,
        kind=kind,
        entry=entry,
        backtrace=backtrace,
        backtrace_error=backtrace_error,
        result=api.result(entry.jid, config_of(request)) if entry.jid else None,
    )


def _apply(kind: SetKind, entry: api.SortedEntry, verb: str) -> None:
    if verb not in kind.actions:
        raise HTTPException(400, f"{kind.title}: unknown action {verb!r}; use {list(kind.actions)}")
    if not entry.valid and verb != "delete":
        raise HTTPException(400, f"{kind.title}: this entry is not a job (not JSON); delete it")
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
    jobset = kind.make(config_of(request))
    verb = form_str(form, "action")
    for key in form.getlist("key"):
        if isinstance(key, str):
            try:
                entry = _entry(jobset, key)
            except HTTPException:
                continue
            if entry.valid or verb == "delete":  # a member that is not a job stays put
                _apply(kind, entry, verb)
    return f"/{kind.path}"


def set_one(kind: SetKind, request: Request, form: FormData) -> str:
    jobset = kind.make(config_of(request))
    try:
        entry = _entry(jobset, request.path_params["key"])
    except HTTPException:
        return f"/{kind.path}"
    _apply(kind, entry, form_str(form, "action"))
    return f"/{kind.path}"


def set_all(kind: SetKind, request: Request, _form: FormData) -> str:
    verb = request.path_params["action"]
    if verb not in kind.actions:
        raise HTTPException(400, f"{kind.title}: unknown action {verb!r}; use {list(kind.actions)}")
    jobset = kind.make(config_of(request))
    if verb == "delete":
        jobset.clear()
    elif verb == "retry":
        jobset.retry_all()
    elif verb == "add_to_queue":
        jobset.add_all_to_queue()
    elif isinstance(jobset, api.RetrySet | api.ScheduledSet):
        jobset.kill_all()
    return f"/{kind.path}"


def set_routes(kind: SetKind) -> list[BaseRoute]:
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
        Route(f"{base}/{{key:path}}", job),
        Route(f"{base}/{{key:path}}", action(one), methods=["POST"]),
    ]
