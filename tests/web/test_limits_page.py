"""The Limits page and its Prometheus series (issue 16 point 4): limiters with their
kind, limit, use and counts; queue limits; unique locks counted, looked up, released."""

from __future__ import annotations

import pytest
import redis

import kiq
from kiq import api
from kiq.config import Config
from kiq.queue_limits import parse_limits
from tests.web.conftest import WebClient


class ImportFile(kiq.Job, name="test_limits_page.ImportFile", unique_for=600):
    def perform(self, path: str) -> None: ...


def test_the_page_lists_each_limiter_with_its_use_and_counts(web: WebClient, config: Config):
    """A held concurrent slot shows as in use 1 of 3; a refusal as over limit 1."""
    erp = kiq.Limiter.concurrent("erp", 1, wait_timeout=0)
    with erp.within_limit():
        with pytest.raises(kiq.OverLimit), erp.within_limit():
            pass
        page = web.get("/limits").text

    row = page.split('data-limiter="erp"')[1].split("</tr>")[0]
    assert "concurrent" in row
    assert "<td data-in-use>1.0</td>" in row
    assert "<td data-overlimit>1</td>" in row


def test_the_page_shows_queue_limits_of_its_config(web: WebClient, config: Config):
    """The UI's Config's ``limits``, with the jobs holding permits (here 1 of 5)."""
    config.limits = parse_limits({"stripe": 5})
    config.store.push([("stripe", b'{"class":"X","args":[],"jid":"1","queue":"stripe"}')])
    config.store.fetch("host:1:abc", ["stripe"], 5, limits={"stripe": (5, 0, 1.0)})

    page = web.get("/limits").text

    row = page.split('data-queue-limit="stripe"')[1].split("</tr>")[0]
    assert "<td>5</td>" in row
    assert row.rstrip().endswith("<td>1</td>")


def test_a_jobs_lock_is_looked_up_and_released_from_the_page(
    web: WebClient, config: Config, r: redis.Redis
):
    """The lookup by class and args finds the lock; Release frees it, so a new push of
    the same job is accepted again."""
    jid = ImportFile.perform_async("a.csv")
    assert ImportFile.perform_async("a.csv") is None
    page = web.get(
        "/limits", params={"class": "test_limits_page.ImportFile", "args": '["a.csv"]'}
    ).text
    assert jid in page
    assert '<span class="count" data-unique-total>1</span>' in page
    (lock,) = api.unique_locks(config).locks

    web.post("/limits/unique", {"key": lock.key, "jid": lock.jid})

    assert api.unique_locks(config).total == 0
    assert ImportFile.perform_async("a.csv") is not None


def test_releasing_a_key_that_is_not_a_lock_is_refused(web: WebClient, config: Config, r):
    r.set("queues-ish", "x")

    response = web.post("/limits/unique", {"key": "queues-ish", "jid": "x"})

    assert response.status_code == 400
    assert r.get("queues-ish") == "x"


def test_prometheus_reports_limiters_limited_jobs_and_unique_locks(config: Config):
    """kiq_limiter_* per limiter, kiq_unique_locks, kiq_jobs_limited_total."""
    from kiq import prometheus

    with kiq.Limiter.bucket("sms", 10, "minute").within_limit():
        pass
    ImportFile.perform_async("b.csv")
    config.store.reschedule_limited(0.0, b"{}", "SendNotificationJob")

    text = prometheus.render(config)[0].decode()

    assert 'kiq_limiter_limit{kind="bucket",name="sms"} 10.0' in text
    assert 'kiq_limiter_held_total{kind="bucket",name="sms"} 1.0' in text
    assert "kiq_unique_locks 1.0" in text
    assert 'kiq_jobs_limited_total{class="SendNotificationJob"} 1.0' in text
