"""The Batches and Workflows pages and their kiq.api read models (issue 17 point 4)."""

from __future__ import annotations

import kiq
from kiq import api
from kiq.config import Config
from tests.support.batch_jobs import BCallback, BRow, Step
from tests.web.conftest import WebClient


def make_batch(config: Config) -> kiq.Batch:
    batch = kiq.Batch(
        description="Import 2026-12", on_success=(BCallback, {"event": "success"}), config=config
    )
    with batch.jobs():
        jids = [BRow.perform_async(i) for i in range(4)]
    store = config.store
    store.batch_update(batch.bid, "success", jids[0] or "", "")
    store.batch_update(
        batch.bid, "failure", jids[1] or "", '{"error_class":"KeyError","error_message":"row 1"}'
    )
    return batch


def test_api_lists_batches_with_their_state(config: Config) -> None:
    batch = make_batch(config)
    (listed,) = api.BatchSet(config).page(0)
    assert listed.bid == batch.bid
    assert (listed.total, listed.pending, listed.failures, listed.percent) == (4, 3, 1, 25.0)
    assert api.batch_state(listed) == "running"
    counts = api.batch_counts(config)
    assert counts["batches"] == {"running": 1}
    assert counts["pending"]["jobs"] == 3


def test_batches_page_shows_progress_and_the_batch_page_its_jobs(
    config: Config, web: WebClient
) -> None:
    batch = make_batch(config)
    listing = web.get("/batches").text
    assert batch.bid in listing
    assert "Import 2026-12" in listing
    assert 'value="25.0"' in listing  # the progress bar
    page = web.get(f"/batches/{batch.bid}").text
    assert "KeyError" in page
    assert "row 1" in page
    assert "not fired" in page  # on_success not yet
    assert page.count("retrying") == 1
    assert web.get("/batches/nope").status_code == 404


def test_invalidate_from_the_batch_page(config: Config, web: WebClient) -> None:
    batch = make_batch(config)
    assert web.post(f"/batches/{batch.bid}", {"action": "invalidate"}).status_code == 200
    assert kiq.BatchStatus(batch.bid).invalidated


def test_workflow_page_shows_each_step(config: Config, web: WebClient) -> None:
    wid = kiq.chain(Step.s("a"), kiq.group([Step.s("b1"), Step.s("b2")])).start(config=config)
    (flow,) = api.WorkflowSet(config).page(0)
    assert flow.wid == wid
    assert [s["state"] for s in flow.steps] == ["running", "waiting"]
    assert wid in web.get("/workflows").text
    page = web.get(f"/workflows/{wid}").text
    assert "not launched" in page
    assert f"{wid}-0" in page
    assert web.get("/workflows/nope").status_code == 404


def test_prometheus_counts_batches_by_state(config: Config) -> None:
    from kiq import prometheus

    make_batch(config)
    body, _ = prometheus.render(config)
    text = body.decode()
    assert 'kiq_batches{state="running"} 1.0' in text
    assert "kiq_batch_jobs_pending 3.0" in text
    assert 'kiq_workflows{state="succeeded"} 0.0' in text
