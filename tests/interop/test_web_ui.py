"""Sidekiq 6.4's own Web UI renders what kiq wrote (issue 3, point 6).

One puma serves ``Sidekiq::Web`` (ruby/web.ru) on a free loopback port for the module;
each test builds its state with kiq only (a kiq worker, kiq pushes) and reads the page a
Rails team would look at.
"""

from __future__ import annotations

import html
import json
import socket
import time
from typing import Any

import pytest

import kiq
from tests.interop.conftest import StrRedis, WebUI, kiq_identity
from tests.support.jobs import Boom, Slow
from tests.support.wait import wait_until

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]


def page(web: WebUI, path: str) -> str:
    status, body = web.get(path)
    assert status == 200, f"GET {path}: {status}\n{body[:2000]}"
    return html.unescape(body)


def only_member(r: StrRedis, key: str) -> tuple[dict[str, Any], float]:
    wait_until(lambda: r.zcard(key) == 1, timeout=20.0)
    ((member, score),) = r.zrange(key, 0, -1, withscores=True)
    return json.loads(member), float(score)


def test_busy_page_shows_kiq_process_and_job(config, r, sidekiq_web, start_worker):
    """/busy lists the kiq process (host:pid, tag, labels, queues) and the job it runs."""
    worker = start_worker("-q", "default", "-c", "3", "-g", "billing")
    identity = kiq_identity(r, worker.pid)
    jid = Slow.perform_async(30, "busy")
    wait_until(lambda: r.hget(identity, "busy") == "1", timeout=20.0)

    body = page(sidekiq_web, "/busy")

    assert f"{socket.gethostname()}:{worker.pid}" in body
    assert f'value="{identity}"' in body  # the Quiet/Stop form targets kiq's identity
    assert '<span class="label label-success">billing</span>' in body  # the tag
    assert '<span class="label label-info">kiq</span>' in body  # kiq's label
    assert jid
    assert jid in body
    assert "Slow" in body


def test_queues_pages_show_kiq_jobs(config, sidekiq_web):
    """/queues lists a queue kiq pushed to, and /queues/<name> shows its jobs."""
    jid = kiq.Client(config).push({"class": "InteropEcho", "queue": "interop", "args": [1, "two"]})

    assert "interop" in page(sidekiq_web, "/queues")
    body = page(sidekiq_web, "/queues/interop")
    assert "InteropEcho" in body
    assert jid
    assert jid in body


def test_retries_pages_show_kiq_failure(config, r, sidekiq_web, start_worker):
    """/retries lists a kiq failure; its detail page shows the error and kiq's backtrace."""
    start_worker("-q", "default", "-c", "2")
    jid = Boom.perform_async(1, "x")
    _, score = only_member(r, "retry")

    listing = page(sidekiq_web, "/retries")
    detail = page(sidekiq_web, f"/retries/{score}-{jid}")

    assert "Boom" in listing
    assert jid
    assert jid in listing
    assert "boom (1, 'x')" in detail
    assert "ValueError" in detail
    assert "in `perform'" in detail  # the decoded backtrace


def test_scheduled_page_shows_kiq_job(config, sidekiq_web):
    """/scheduled lists a job kiq scheduled."""
    jid = kiq.Client(config).push(
        {"class": "InteropEcho", "queue": "interop", "args": [5], "at": time.time() + 3600}
    )

    body = page(sidekiq_web, "/scheduled")

    assert "InteropEcho" in body
    assert jid
    assert jid in body


def test_dead_page_shows_kiq_dead_job(config, r, sidekiq_web, start_worker):
    """/morgue (the Dead tab) lists a job that died in kiq."""
    start_worker("-q", "default", "-c", "2")
    jid = Boom.set(retry=0).perform_async(2)
    only_member(r, "dead")

    body = page(sidekiq_web, "/morgue")

    assert "Boom" in body
    assert jid
    assert jid in body


def test_dashboard_counts_kiq_jobs(config, r, sidekiq_web, start_worker):
    """The dashboard's stats JSON counts what kiq processed and failed."""
    start_worker("-q", "default", "-c", "2")
    Boom.set(retry=0).perform_async(3)
    wait_until(lambda: r.get("stat:failed") == "1", timeout=20.0)

    stats = json.loads(page(sidekiq_web, "/stats"))["sidekiq"]

    assert stats["processed"] == 1
    assert stats["failed"] == 1
    assert stats["dead"] == 1
