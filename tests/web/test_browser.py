"""End to end in a real browser: Debian's chromium driven by Playwright, against the app
served by uvicorn and a live ``kiq worker``. The tests also save the README's
screenshots: to docs/screenshots/ when KIQ_SCREENSHOTS=1 (refreshing the README's), else
to a temporary folder, so an ordinary test run leaves the work tree clean.

Skipped (with the reason) when Playwright or Debian's chromium is missing, except under
KIQ_REQUIRE_SYSTEM (.ci/run), where that is a failure (tests/support/needs.py).
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from kiq.api import RetrySet
from kiq.client import Client
from kiq.config import Config
from kiq.payload import encode_backtrace
from kiq.web import create_app
from tests.support.needs import needs_binary, needs_module
from tests.support.wait import wait_until
from tests.web.browser_jobs import RELEASE
from tests.web.conftest import add_process, failed

SCREENSHOTS = (
    Path(__file__).parents[2] / "docs" / "screenshots"
    if os.environ.get("KIQ_SCREENSHOTS")
    else Path(tempfile.gettempdir()) / "kiq-screenshots"
)
JOBS = Path(__file__).parent / "browser_jobs.py"
TIMEOUT_MS = 20_000

pytestmark = pytest.mark.slow

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None  # type: ignore[assignment]
else:
    expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's chromium, headless; never a browser downloaded by Playwright."""
    needs_module("playwright", install='`pip install -e ".[test]"`')
    chromium_path = needs_binary("chromium")
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        chromium = playwright.chromium.launch(executable_path=chromium_path, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def server(config: Config) -> Iterator[str]:
    """The Web UI served by uvicorn on a free 127.0.0.1 port, in a thread."""
    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = create_app(config)
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, name="uvicorn", daemon=True)
    thread.start()
    wait_until(lambda: uv.started, timeout=10)
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(10)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 860}, color_scheme="light")
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())  # "Delete all?" confirmations
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert errors == [], f"JavaScript errors: {errors}"


@pytest.fixture
def release(r: redis.Redis) -> Iterator[None]:
    """Let WebProgress jobs finish at the end of the test, so the worker stops at once."""
    yield
    r.set(RELEASE, 1)


def reload_until(page: Page, condition: Callable[[], bool], timeout: float = 20) -> None:
    """Reload a server-rendered page until ``condition`` holds (bounded)."""

    def check() -> bool:
        page.reload()
        return condition()

    wait_until(check, timeout=timeout, interval=0.2)


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


def seed_history(r: redis.Redis) -> None:
    """A week of daily stats, so the history chart has a shape."""
    today = datetime.now(UTC).date()
    days = [(5120, 31), (4730, 12), (6210, 87), (3980, 9), (5560, 40), (4410, 18)]
    for back, (done, bad) in enumerate(days):
        day = (today - timedelta(days=back + 1)).isoformat()
        r.set(f"stat:processed:{day}", done)
        r.set(f"stat:failed:{day}", bad)


def retry_entry(config: Config, klass: str, args: list[Any], score: float) -> dict[str, Any]:
    """A failed job in the retry set, far enough in the future that the poller leaves it."""
    job = failed(
        **{"class": klass},
        args=args,
        error_class="Net::ReadTimeout" if klass != "Record" else "ConnectionError",
        error_message="upstream did not answer within 5.0s",
        error_backtrace=encode_backtrace(
            [
                "app/jobs/sync.py:42 in perform",
                "app/clients/billing.py:118 in fetch_invoices",
                "venv/lib/httpx/_client.py:1013 in send",
            ]
        ),
    )
    RetrySet(config).schedule(score, job)
    return job


def test_dashboard_counters_change_as_jobs_run(
    page: Page, server: str, config: Config, r: redis.Redis, start_worker: Callable[..., Any]
) -> None:
    """The live dashboard's Processed counter rises as a worker runs jobs; light and dark."""
    seed_history(r)
    start_worker()
    page.goto(server + "/")
    page.select_option("#poll-interval", "2")
    expect(page.locator('[data-stat="processed"]')).to_have_text("0")
    Client(config).push_bulk({"class": "Record", "args": [[i] for i in range(25)]})
    expect(page.locator('[data-stat="processed"]')).to_have_text("25")
    Client(config).push_bulk({"class": "Record", "args": [[i] for i in range(40)]})
    expect(page.locator('[data-stat="processed"]')).to_have_text("65")
    line = page.locator("#live-graph polyline.processed")
    # A few samples, so the screenshot shows the graph's shape. (Polled from Python:
    # wait_for_function would eval a string, which the page's CSP rightly refuses.)
    wait_until(lambda: len((line.get_attribute("points") or "").split()) >= 4, timeout=20)
    screenshot(page, "dashboard-light.png")
    page.click("#theme-toggle")
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    screenshot(page, "dashboard-dark.png")


def test_live_graph_can_be_paused(page: Page, server: str) -> None:
    """Pause stops the polling; Resume starts it again."""
    page.goto(server + "/")
    expect(page.locator('[data-live="status"]')).to_contain_text("updated")
    page.click("#live-pause")
    expect(page.locator('[data-live="status"]')).to_have_text("paused")
    page.click("#live-pause")
    expect(page.locator('[data-live="status"]')).to_contain_text("updated")


def test_retry_a_job_from_the_retries_page_and_see_it_run(
    page: Page, server: str, config: Config, r: redis.Redis, start_worker: Callable[..., Any]
) -> None:
    """Retry now on the job's page pushes it; the live worker runs it."""
    start_worker()
    later = time.time() + 3600
    for i, name in enumerate(["Billing::SyncInvoices", "Mailer::Digest", "Search::Reindex"]):
        retry_entry(config, name, [1000 + i, {"account": f"acme-{i}"}], later + 60 * i)
    job = retry_entry(config, "Record", ["from-retries"], later - 60)
    page.goto(server + "/retries")
    expect(page.locator("h1 .count")).to_have_text("4")
    screenshot(page, "retries.png")
    page.get_by_role("link", name="Record", exact=True).click()
    expect(page.locator("pre.backtrace")).to_contain_text("app/jobs/sync.py:42 in perform")
    screenshot(page, "job.png")
    page.get_by_role("button", name="Retry now").click()
    expect(page.locator("h1 .count")).to_have_text("3")
    done = wait_until(lambda: r.lrange("test:done", 0, -1), timeout=15)
    assert json.loads(done[0])["jid"] == job["jid"]


def test_quiet_a_process_from_the_busy_page(
    page: Page,
    server: str,
    config: Config,
    r: redis.Redis,
    start_worker: Callable[..., Any],
    release: None,
) -> None:
    """Quiet on the Busy page reaches the worker, whose row then shows it quiet."""
    worker = start_worker("-r", str(JOBS), "-g", "billing")
    Client(config).push_bulk(
        {"class": "WebProgress", "args": [["nightly-import", 9], ["reindex", 23]]}
    )
    add_process(
        config,
        "web-2.example.com:4242:9f2c1d0e7a11",
        hostname="web-2.example.com",
        pid=4242,
        tag="api",
        labels=["blue"],
    )
    page.goto(server + "/busy")
    reload_until(page, lambda: _progress(page) >= 40)  # bars well along, for the screenshot
    row = page.locator(f'tr[data-identity*=":{worker.pid}:"]')
    expect(row).to_have_count(1)
    screenshot(page, "busy.png")
    with page.expect_navigation():
        row.get_by_role("button", name="Quiet").click()
    identity = wait_until(lambda: _identity(r, worker.pid))
    assert identity is not None
    wait_until(lambda: r.hget(identity, "quiet") == "true", timeout=10)
    reload_until(page, lambda: row.locator(".badge.warn").count() == 1)
    expect(row.locator(".badge.warn")).to_have_text("quiet")


def _progress(page: Page) -> float:
    """The highest progress bar on the page (0 with none)."""
    values = page.locator("progress").evaluate_all("bars => bars.map(b => b.value)")
    return max(values, default=0.0)


def _identity(r: redis.Redis, pid: int) -> str | None:
    members = [str(member) for member in r.smembers("processes")]
    return next((i for i in members if i.split(":")[-2] == str(pid)), None)


def test_kill_from_retries_and_find_it_in_dead(
    page: Page, server: str, config: Config, r: redis.Redis
) -> None:
    """Select a retry, Kill it, and the Dead page lists it."""
    job = retry_entry(config, "Billing::SyncInvoices", [77], time.time() + 3600)
    page.goto(server + "/retries")
    page.check(f'input[name="key"][aria-label="Select {job["jid"]}"]')
    page.locator(".bulk").get_by_role("button", name="Kill").click()
    expect(page.locator(".empty")).to_have_text("No retries: nothing is waiting to be retried.")
    page.click("nav >> text=Dead")
    expect(page.locator("tbody")).to_contain_text(job["jid"])
    assert r.zcard("dead") == 1
