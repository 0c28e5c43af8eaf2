"""The Web UI's side of issue 18: an iterable job's cursor, executions and runtime on the
Busy page with a Cancel button; the job page shows a cancelled or expired job's fate."""

from __future__ import annotations

import redis

from kiq.client import Client
from kiq.config import Config
from tests.web.conftest import WebClient, add_process, add_work, payload


def test_busy_shows_an_iterable_jobs_state_and_a_cancel_button(
    web: WebClient, config: Config
) -> None:
    identity = add_process(config)
    add_work(config, identity, payload(jid="b" * 24, args=[7]))
    config.store.flush_iteration("b" * 24, 3, b'{"after":1200}', 42.25)
    page = web.get("/busy").text
    assert 'cursor <span class="mono">{&#34;after&#34;: 1200}</span>' in page
    assert "executions 3 · runtime 42.2 s" in page
    assert f'name="jid" value="{"b" * 24}"' in page
    assert f'href="/jobs/{"b" * 24}"' in page


def test_the_cancel_button_removes_a_queued_job_and_its_page_shows_the_fate(
    web: WebClient, config: Config, r: redis.Redis
) -> None:
    job = payload(jid="c" * 24, queue="exports", args=["report"])
    Client(config).push(job)
    response = web.post("/cancel", {"jid": "c" * 24}, follow_redirects=False)
    assert response.status_code in (302, 303)
    assert response.headers["location"].endswith(f"/jobs/{'c' * 24}")
    assert r.llen("queue:exports") == 0
    page = web.get(f"/jobs/{'c' * 24}").text
    assert "cancelled" in page
    assert "queue exports" in page
    assert "report" in page


def test_an_expired_jobs_page_says_so_and_an_unknown_jid_is_404(
    web: WebClient, config: Config
) -> None:
    from kiq import cancel

    cancel.record(config, payload(jid="d" * 24), "expired", "expired before it started")
    page = web.get(f"/jobs/{'d' * 24}").text
    assert "expired" in page
    assert "expired before it started" in page
    assert web.get(f"/jobs/{'e' * 24}").status_code == 404
