"""``kiq demo``: the README's first command runs the example app end to end."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import redis

from kiq import embedded
from kiq.config import Config
from kiq.recurring import CronSet
from tests.support.rawredis import raw_redis
from tests.support.servers import free_port
from tests.support.wait import wait_until
from tests.test_cli_web import gone

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
    # issue 18: the worker is restarted mid-export, and the export resumes from its cursor
    assert "restart  worker stopped and started again at" in out
    assert "not from record one" in out
    assert "5. export         completed" in out
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


@pytest.mark.timeout(150)
def test_demo_keep_serves_the_web_command_it_prints_and_stops_clean_on_sigterm(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """On the embedded default, ``--keep``'s ``Web UI:`` command answers while the demo
    runs (without --keep the server goes when the demo exits, so the hint says to use
    it); SIGTERM then ends the demo and its valkey-server (which used to stay, orphaned)."""
    directory = tmp_path_factory.mktemp("emb")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KIQ_", "REDIS_"))}
    env["KIQ_EMBEDDED_DIR"] = str(directory)
    command = [sys.executable, "-m", "kiq.cli"]
    demo_proc = subprocess.Popen(
        [*command, "demo", "--keep", "--jobs", "30"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    web_proc: subprocess.Popen[str] | None = None
    try:
        assert demo_proc.stdout is not None
        lines: list[str] = []
        while not (lines and lines[-1].startswith("--keep:")):
            line = demo_proc.stdout.readline()
            assert line, "".join(lines)  # the demo ended before serving
            lines.append(line)
        (hint,) = [line for line in lines if line.startswith("Web UI:")]
        found = re.search(r"KIQ_REDIS_URL='([^']+)' kiq web --port 7433 ", hint)
        assert found, hint
        server = embedded.status(directory)
        assert server.pid is not None

        port = free_port()
        web_proc = subprocess.Popen(
            [*command, "web", "--port", str(port)],
            env={**env, "KIQ_REDIS_URL": found[1]},
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert web_proc.stdout is not None
        assert web_proc.stdout.readline().startswith("kiq web on http://")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert response.status == 200
        web_proc.send_signal(signal.SIGTERM)
        assert web_proc.wait(30) == 0

        demo_proc.send_signal(signal.SIGTERM)

        rest = demo_proc.communicate(timeout=60)[0]
        assert demo_proc.returncode == 0, rest
        assert rest.rstrip().endswith("worker stopped cleanly")
        wait_until(lambda: gone(server.pid), timeout=15)
    finally:
        for proc in (demo_proc, web_proc):
            if proc is not None:
                proc.kill()
                proc.communicate(timeout=10)
        embedded.stop(directory)
