"""The Web UI's Batches, Workflows, Limits and job-result views, and ``Result.aget``, on
a real Redis Cluster (the pages read what spans slots through ``ClusterStore``: the
batch family's slot, each limiter's slot, the result records' own slots)."""

from __future__ import annotations

import asyncio
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import kiq
from kiq import api
from kiq.config import Config
from kiq.queue_limits import parse_limits
from kiq.web import create_app
from kiq.web.sets import entry_key
from tests.support.batch_jobs import BCallback, BRow, Step
from tests.support.inprocess import running
from tests.support.result_jobs import ResultAdd, ResultDies
from tests.support.wait import wait_until
from tests.web.conftest import WebClient

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # see tests/web/conftest.py
    from starlette.testclient import TestClient

sys.path.insert(0, str(Path(__file__).parent / "support"))


class Locked(kiq.Job, name="test_cluster_web.Locked", unique_for=600):
    def perform(self, path: str) -> None: ...


@pytest.fixture
def cconfig(cluster_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Config]:
    cfg = Config(redis_url=cluster_url, partitions={"hot": 4}, concurrency=4)
    monkeypatch.setattr(kiq.config, "_default", cfg)
    yield cfg
    cfg.close()


@pytest.fixture
def web(cconfig: Config) -> Iterator[WebClient]:
    with TestClient(create_app(cconfig)) as client:
        yield WebClient(client)


def test_the_batch_pages_show_a_batch_spread_over_shards(cconfig: Config, web: WebClient) -> None:
    batch = kiq.Batch(
        description="Import on a cluster",
        on_success=(BCallback, {"event": "success"}),
        config=cconfig,
    )
    with batch.jobs():
        jids = [str(BRow.set(queue=q).perform_async(i)) for i, q in enumerate(["q1", "hot"] * 2)]
    cconfig.store.batch_update(batch.bid, "success", jids[0], "")
    error = '{"error_class":"KeyError","error_message":"row 1"}'
    cconfig.store.batch_update(batch.bid, "failure", jids[1], error)
    listing = web.get("/batches").text
    assert batch.bid in listing
    assert "Import on a cluster" in listing
    assert 'value="25.0"' in listing  # 1 of 4 done
    page = web.get(f"/batches/{batch.bid}").text
    assert "KeyError" in page
    assert "not fired" in page
    assert web.post(f"/batches/{batch.bid}", {"action": "invalidate"}).status_code == 200
    assert kiq.BatchStatus(batch.bid).invalidated


def test_the_workflow_pages_show_each_step_on_a_cluster(cconfig: Config, web: WebClient) -> None:
    wid = kiq.chain(Step.s("a", queue="hot"), kiq.group([Step.s("b1"), Step.s("b2")])).start(
        config=cconfig
    )
    (flow,) = api.WorkflowSet(cconfig).page(0)
    assert flow.wid == wid
    assert [s["state"] for s in flow.steps] == ["running", "waiting"]
    assert wid in web.get("/workflows").text
    page = web.get(f"/workflows/{wid}").text
    assert "not launched" in page
    assert f"{wid}-0" in page


def test_the_limits_page_shows_limiters_queue_limits_and_locks_on_a_cluster(
    cconfig: Config, web: WebClient
) -> None:
    erp = kiq.Limiter.concurrent("erp", 1, wait_timeout=0, config=cconfig)
    with erp.within_limit():
        with pytest.raises(kiq.OverLimit), erp.within_limit():
            pass
        page = web.get("/limits").text
    row = page.split('data-limiter="erp"')[1].split("</tr>")[0]
    assert "concurrent" in row
    assert "<td data-in-use>1.0</td>" in row
    assert "<td data-overlimit>1</td>" in row
    cconfig.limits = parse_limits({"stripe": 5})
    cconfig.store.push([("stripe", b'{"class":"X","args":[],"jid":"1","queue":"stripe"}')])
    cconfig.store.fetch("host:1:abc", ["stripe"], 5, limits={"stripe": (5, 0, 1.0)})
    row = web.get("/limits").text.split('data-queue-limit="stripe"')[1].split("</tr>")[0]
    assert row.rstrip().endswith("<td>1</td>")  # 1 permit held
    jid = Locked.perform_async("a.csv")
    page = web.get("/limits", params={"class": Locked.wire_name, "args": '["a.csv"]'}).text
    assert jid in page
    (lock,) = api.unique_locks(cconfig).locks
    web.post("/limits/unique", {"key": lock.key, "jid": lock.jid})
    assert api.unique_locks(cconfig).total == 0


def test_results_are_read_by_aget_and_shown_on_the_dead_jobs_page_on_a_cluster(
    cconfig: Config, web: WebClient
) -> None:
    async def main() -> tuple[list[object], str]:
        handles = [await ResultAdd.aenqueue(i, 1) for i in range(4)]  # several slots
        dying = await ResultDies.aenqueue()
        assert dying is not None
        assert all(handles)
        values = [await handle.aget(timeout=20) for handle in handles if handle]
        with pytest.raises(kiq.JobFailed):
            await dying.aget(timeout=20)
        await cconfig.store.aclose()
        return values, dying.jid

    with running(cconfig):
        values, jid = asyncio.run(main())
    assert [v["sum"] for v in values] == [1, 2, 3, 4]  # type: ignore[index]
    wait_until(lambda: api.DeadSet(cconfig).size() == 1, timeout=10)
    (entry,) = list(api.DeadSet(cconfig))
    assert entry.jid == jid
    page = web.get(f"/morgue/{entry_key(entry)}").text
    assert 'id="result"' in page
    assert "KeyError" in page
