"""``kiq demo``: the README's first command runs the example app end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from kiq.config import Config
from kiq.recurring import CronSet
from tests.support.rawredis import raw_redis

pytestmark = pytest.mark.slow


def demo(
    *args: str, redis_url: str, cwd: Path, code: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "REDIS_PROVIDER")}
    env["KIQ_REDIS_URL"] = redis_url
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "kiq.cli", "demo"]
    return subprocess.run(
        [*command, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=90
    )


@pytest.fixture(scope="module")
def finished(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> subprocess.CompletedProcess[str]:
    """One run of ``kiq demo --jobs 60`` on an emptied test database, for the tests below."""
    redis.Redis.from_url(redis_url).flushdb()
    return demo("--jobs", "60", redis_url=redis_url, cwd=tmp_path_factory.mktemp("demo"))


def test_demo_runs_the_six_jobs_and_reports_them(
    finished: subprocess.CompletedProcess[str],
) -> None:
    """The demo exits 0 after every job ran, having shown the export's progress and counts."""
    out = finished.stdout
    assert finished.returncode == 0, out + finished.stderr
    assert "export   [" in out
    assert "100.0%" in out
    assert "jobs     processed" in out
    assert "2. notifications  3 sent (the greylisted one on its retry), 1 skipped" in out
    assert "3. weekly digest  7 sent, 1 refused" in out
    assert "4. import         completed: 10 places created, 2 invalid rows skipped" in out
    assert "Web UI:   kiq web --port 7433" in out
    assert out.rstrip().endswith("worker stopped cleanly")


def test_demo_leaves_no_recurring_jobs_or_queued_work(
    finished: subprocess.CompletedProcess[str], redis_url: str
) -> None:
    """After the demo, its schedule is gone from Redis and no job is left waiting."""
    config = Config(redis_url=redis_url)
    try:
        assert len(CronSet(config)) == 0
        r = raw_redis(config)
        assert [r.llen(config.keys.queue(q)) for q in ("mailers", "default", "exports")] == [0] * 3
        assert r.zcard(config.keys.retry) == 0
    finally:
        config.close()


def test_demo_without_its_packages_says_how_to_install_them(redis_url: str, tmp_path: Path) -> None:
    """Without aiosmtpd the demo exits 2 with the pip command that installs the extra."""
    code = (
        "import sys; sys.modules['aiosmtpd'] = None\n"
        "from kiq.cli import main\n"
        "raise SystemExit(main(['demo']))"
    )

    result = demo(redis_url=redis_url, cwd=tmp_path, code=code)

    assert result.returncode == 2
    assert 'pip install -e ".[demo]"' in result.stderr
    assert "aiosmtpd" in result.stderr
