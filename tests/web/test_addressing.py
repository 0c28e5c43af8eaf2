"""Every item can be opened and acted on whatever its characters (issue 12): queue,
class and recurring names and jids holding ``/``, ``?``, ``#``, ``%``, spaces or
non-ASCII; set members that are not JSON (``<score>~<digest>``); a recurring job
whose ``message`` is not JSON is listed with a note instead of a 500."""

from __future__ import annotations

import html
import json
import re

import pytest
import redis

from kiq.api import RetrySet
from kiq.client import Client
from kiq.config import Config
from kiq.cron import CronJob
from kiq.recurring import save
from kiq.web.sets import digest
from tests.web.conftest import WebClient, failed

# Starlette's TestClient decodes a path twice (``unquote`` of httpx's decoded path), so
# a name holding "%2F" itself is tested against the real server in test_cli_web.py.
NAMES = ["a/b", "x/delete", "what?", "x#y", "100%", "with space", "ünï/ćode", "/lead"]


def href(page: str, prefix: str) -> str:
    """The one link on the page under ``prefix`` (HTML-unescaped)."""
    links = sorted({html.unescape(h) for h in re.findall(rf'href="({prefix}[^"]+)"', page)})
    assert len(links) == 1, links
    return links[0]


@pytest.mark.parametrize("name", NAMES)
def test_a_queue_of_any_name_opens_pauses_and_deletes_a_job(
    web: WebClient, config: Config, r: redis.Redis, name: str
) -> None:
    """The link on the Queues page opens the queue; its forms act on that queue only."""
    Client(config).push({"class": "HardJob", "args": [7], "queue": name})
    Client(config).push({"class": "HardJob", "args": [8], "queue": "x"})  # a near name
    link = href(web.get("/queues").text, '/queues/(?!x")')
    page = web.get(link)
    assert page.status_code == 200
    assert f'<span class="name">{html.escape(name)}</span>' in page.text
    assert "[7]" in page.text
    web.post(link, {"action": "pause"})
    assert r.smembers("kiq|paused") == {name}
    raw = r.lrange(f"queue:{name}", 0, -1)[0]
    response = web.post(f"{link}/delete", {"key_val": raw})
    assert response.url.path == f"/queues/{name}"
    assert r.llen(f"queue:{name}") == 0
    assert r.llen("queue:x") == 1


def test_a_queue_named_like_the_delete_path_keeps_its_actions(
    web: WebClient, config: Config, r: redis.Redis
) -> None:
    """Queue ``x/delete`` is paused, not taken for a job delete in queue ``x``."""
    Client(config).push({"class": "HardJob", "args": [], "queue": "x/delete"})
    Client(config).push({"class": "HardJob", "args": [], "queue": "x"})
    web.post("/queues/x%2Fdelete", {"action": "delete"})
    assert r.exists("queue:x/delete") == 0
    assert r.llen("queue:x") == 1


@pytest.mark.parametrize("jid", ["a/b", "q?x=1#frag", "50% off", "ünï ćode", "e~f-g"])
def test_a_retry_with_any_jid_opens_and_retries(
    web: WebClient, config: Config, r: redis.Redis, jid: str
) -> None:
    """The row's link opens the job; its form retries it."""
    RetrySet(config).schedule(1_900_000_000.25, failed(jid=jid, args=["mine"]))
    link = href(web.get("/retries").text, "/retries/1")
    page = web.get(link)
    assert page.status_code == 200
    assert html.escape(jid) in page.text
    web.post(link, {"action": "retry"})
    assert r.zcard("retry") == 0
    assert [json.loads(job)["jid"] for job in r.lrange("queue:default", 0, -1)] == [jid]


@pytest.fixture
def garbage(r: redis.Redis) -> str:
    """A retry-set member that is not JSON, next to a job at the same score."""
    r.zadd("retry", {"not json {": 1_900_000_000.5})
    return f"{1_900_000_000.5!r}~{digest(b'not json {')}"


def test_a_member_that_is_not_json_is_listed_and_opens(
    web: WebClient, config: Config, garbage: str
) -> None:
    """It gets a ``<score>~<digest>`` key (not ``-None``) and a page showing it raw."""
    RetrySet(config).schedule(1_900_000_000.5, failed())
    listing = web.get("/retries").text
    assert "not a job" in listing
    assert "-None" not in listing
    assert f'value="{garbage}"' in listing
    page = web.get(f"/retries/{garbage}")
    assert page.status_code == 200
    assert "<pre>not json {</pre>" in page.text
    assert 'value="retry"' not in page.text  # only delete is offered
    assert 'value="delete"' in page.text


def test_a_member_that_is_not_json_can_be_deleted_not_retried(
    web: WebClient, r: redis.Redis, garbage: str
) -> None:
    """Retry is a 400 saying why; delete removes exactly that member."""
    assert web.post(f"/retries/{garbage}", {"action": "retry"}).status_code == 400
    assert r.zcard("retry") == 1
    web.post(f"/retries/{garbage}", {"action": "delete"})
    assert r.zcard("retry") == 0


def test_a_bulk_retry_leaves_a_member_that_is_not_json(
    web: WebClient, config: Config, r: redis.Redis, garbage: str
) -> None:
    """Selected together with a job, the job is retried and the garbage stays put."""
    job = failed()
    RetrySet(config).schedule(1_900_000_000.5, job)
    keys = [garbage, f"{1_900_000_000.5!r}-{job['jid']}"]
    assert web.post("/retries", {"key": keys, "action": "retry"}).status_code == 200
    assert r.zrange("retry", 0, -1) == ["not json {"]
    assert r.llen("queue:default") == 1


def test_a_metrics_page_for_a_class_with_a_slash(web: WebClient) -> None:
    """/metrics/<class> takes any class name (url-encoded)."""
    page = web.get("/metrics/Billing%2FCharge%3Fnow")
    assert page.status_code == 200
    assert "<h1>Billing/Charge?now</h1>" in page.text


def test_a_recurring_job_with_a_slash_in_its_name_is_enqueued(
    web: WebClient, config: Config, r: redis.Redis
) -> None:
    """The Enqueue now form of ``team/nightly`` pushes that job."""
    save(config, CronJob(name="team/nightly", klass="CleanupJob", cron="0 2 * * *"))
    link = html.unescape(re.findall(r'action="(/recurring/[^"]+)"', web.get("/recurring").text)[0])
    web.post(link, {"action": "enqueue"})
    assert r.llen("queue:default") == 1


def test_a_recurring_job_whose_message_is_not_json_is_listed_with_a_note(
    web: WebClient, config: Config, r: redis.Redis
) -> None:
    """One bad sidekiq-cron hash: the page lists it as invalid (no 500), the others as
    usual, and it cannot be enqueued from there."""
    save(config, CronJob(name="nightly", klass="CleanupJob", cron="0 2 * * *"))
    save(config, CronJob(name="broken", klass="OtherJob", cron="0 3 * * *"))
    r.hset("cron_job:broken", "message", "{not json")
    response = web.get("/recurring")
    assert response.status_code == 200
    row = response.text.split('data-cron="broken"')[1].split("</tr>")[0]
    assert "invalid message (not a JSON object)" in row
    assert 'value="enqueue"' not in row
    assert 'value="enqueue"' in response.text.split('data-cron="nightly"')[1]
    assert web.post("/recurring/broken", {"action": "enqueue"}).status_code == 400
    assert r.llen("queue:default") == 0
