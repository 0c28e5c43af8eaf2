"""The Batches and Workflows pages (issue 17 point 4): plain ``def``s over kiq.api.

Batches: the list (newest first, a progress bar each), and one batch (counts, the
callbacks and when each fired, the pending and failed jobs, parent and children).
Workflows: the list, and one workflow (each step's state and counts, linked to the
step's batch). Nothing here changes Redis but "Invalidate" (a POST through ``action``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

import kiq
from kiq import api
from kiq.web.base import Pager, config_of, render

LISTED_JIDS: Final = 100  # pending / failed jids shown on a batch's page

_Found = TypeVar("_Found")


def _at(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def _found(found: _Found | None, missing: str) -> _Found:
    """What a page's id names, or a 404 saying ``missing`` (a batch or workflow that
    expired or never was: the same answer on every page)."""
    if found is None:
        raise HTTPException(404, missing)
    return found


def _flow_row(flow: kiq.WorkflowStatus) -> dict[str, Any]:
    return {**flow.to_dict(), "created": _at(flow.created_at)}


def _row(status: kiq.BatchStatus) -> dict[str, Any]:
    data = status.to_dict()
    data["state"] = api.batch_state(status)
    data["created"] = _at(status.created_at)
    data["fired_at"] = {event: _at(at) for event, at in status.fired.items()}
    return data


def batches(request: Request) -> Response:
    config = config_of(request)
    found = api.BatchSet(config)
    pager = Pager(request, found.size)
    rows = [_row(status) for status in found.page(pager.start, pager.count)]
    return render(request, "batches.html", title="Batches", nav="batches", rows=rows, pager=pager)


def batch_page(request: Request) -> Response:
    config = config_of(request)
    bid = request.path_params["bid"]
    missing = f"batch {bid} does not exist (expired, or never created)"
    status = _found(api.BatchSet(config).get(bid), missing)
    return render(
        request,
        "batch.html",
        title=f"Batch {bid}",
        nav="batches",
        b=_row(status),
        pending=status.pending_jids()[:LISTED_JIDS],
        failures=status.failure_info()[:LISTED_JIDS],
        died=set(status.dead_jids()),
        children=[
            _row(kid) for bid in status.child_bids() if (kid := api.BatchSet(config).get(bid))
        ],
        limit=LISTED_JIDS,
    )


def batch_action(request: Request, form: FormData) -> str:
    bid = request.path_params["bid"]
    if form.get("action") != "invalidate":
        raise HTTPException(400, "unknown action; use invalidate")
    _found(api.BatchSet(config_of(request)).get(bid), f"batch {bid} does not exist")
    kiq.Batch(bid, config=config_of(request)).invalidate_all()
    return f"/batches/{bid}"


def workflows(request: Request) -> Response:
    config = config_of(request)
    found = api.WorkflowSet(config)
    pager = Pager(request, found.size)
    rows = [_flow_row(flow) for flow in found.page(pager.start, pager.count)]
    return render(
        request, "workflows.html", title="Workflows", nav="workflows", rows=rows, pager=pager
    )


def workflow_page(request: Request) -> Response:
    wid = request.path_params["wid"]
    missing = f"workflow {wid} does not exist (expired, or never started)"
    flow = _found(api.WorkflowSet(config_of(request)).get(wid), missing)
    return render(
        request,
        "workflow.html",
        title=f"Workflow {wid}",
        nav="workflows",
        w=_flow_row(flow),
    )
