"""Errors of the ``kiq`` command, run as a user runs it (a real ``kiq`` subprocess): each is
one line on stderr naming what, the value (never a password) and the fix, with no
traceback unless ``--verbose`` (issue 12, "Errors" and defect 7). Also the start-up
wait for an unreachable Redis (``--redis-wait``), with real redis-server processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import kiq
from kiq.config import Config
from tests.support.servers import RedisServer, Worker, free_port
from tests.support.wait import wait_until
from tests.test_cli import run_kiq

pytestmark = pytest.mark.timeout(90)


def one_line(stderr: str) -> str:
    """The single line of ``stderr``; fails the test if there are more (or a traceback)."""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# -- Redis URLs ----------------------------------------------------------------------------


def test_yaml_url_of_the_wrong_type_hides_its_password(tmp_path: Path) -> None:
    """``redis_url: ["redis://:Secret@..."]`` (a list) is refused without echoing Secret."""
    (tmp_path / "kiq.yml").write_text('redis_url: ["redis://:Secret@localhost:6379/0"]\n')

    result = run_kiq("worker", "-C", "kiq.yml", cwd=tmp_path)

    line = one_line(result.stderr)
    assert result.returncode == 2
    assert "Secret" not in result.stderr + result.stdout
    assert line.startswith("kiq: redis_url: ['redis://:***@localhost:6379/0'] is not allowed")
    assert "use a URL string such as redis://" in line


@pytest.mark.parametrize("password", ["Sla/sh", "Qu?ery", "Ha#sh"])
def test_password_with_a_slash_is_one_line_without_the_password(
    tmp_path: Path, password: str
) -> None:
    """``redis://:Sla/sh@host`` (an unencoded '/', '?' or '#', which ends the host part)
    says to percent-encode it, hiding it; it was a 37-line traceback ending with "Sla"."""
    url = f"redis://:{password}@localhost:6379/0"

    result = run_kiq("worker", "--redis-url", url, cwd=tmp_path)

    line = one_line(result.stderr)
    assert result.returncode == 2
    assert password[:2] not in result.stderr + result.stdout
    assert "redis://***@localhost:6379/0" in line
    assert "percent-encode it (/ as %2F, ? as %3F, # as %23)" in line


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://localhost:6379/0", "the scheme 'http' is not a Redis one; use redis://"),
        ("redis://localhost:99999/0", "the port must be a number from 1 to 65535"),
        ("redis://localhost:63x9/0", "the port must be a number from 1 to 65535"),
        ("redis://:pw@localhost:6379/0?foo=1", "the query argument 'foo' is not one kiq passes"),
        ("localhost:6379", "has no scheme; write it as redis://"),
        ("redis://localhost:6379/zero", "the path '/zero' must be a database number"),
    ],
    ids=["http", "port-range", "port-text", "query", "no-scheme", "db"],
)
def test_unusable_url_is_one_line_naming_it_and_the_fix(
    tmp_path: Path, url: str, says: str
) -> None:
    """Each used to be a raw redis-py traceback at the first command."""
    result = run_kiq("worker", "--redis-url", url, cwd=tmp_path)

    line = one_line(result.stderr)
    assert result.returncode == 2
    assert says in line
    assert "pw" not in line


def test_good_urls_pass_the_check() -> None:
    """What redis-py and kiq's Sentinel reader take is not refused."""
    for url in (
        "redis://localhost:6379/0",
        "redis://:p%2Fw@localhost:6379/1",
        "rediss://user:pw@[::1]:6380/2?ssl_ca_certs=/etc/ca.crt&ssl_cert_reqs=required",
        "unix:///tmp/redis.sock?db=3",
        "redis+sentinel://s1:26379,s2:26379/mymaster/1",
        "redis://localhost",
        "redis://localhost:6379/0?password=p@ss",
        "redis://:p@ss@localhost:6379/0",
    ):
        assert Config(redis_url=url).redis_url == url


def test_unreachable_redis_is_one_line_without_a_double_period(tmp_path: Path) -> None:
    """``Connection refused.. Check`` read twice: one period now, and still one line."""
    url = f"redis://127.0.0.1:{free_port()}/0"

    result = run_kiq("status", cwd=tmp_path, redis_url=url)

    line = one_line(result.stderr)
    assert result.returncode == 2
    assert "Connection refused. Check that the server runs" in line
    assert ".." not in line


# -- anything else: one line, the traceback with --verbose ---------------------------------


def test_unexpected_error_is_one_line_and_verbose_shows_the_traceback(
    tmp_path: Path, redis_url: str
) -> None:
    """An app whose import raises: one line with the error, ``-v`` adds the traceback."""
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom at import')\n")

    quiet = run_kiq("worker", "-r", "broken.py", cwd=tmp_path, redis_url=redis_url)
    verbose = run_kiq("worker", "-r", "broken.py", "-v", cwd=tmp_path, redis_url=redis_url)

    line = one_line(quiet.stderr)
    assert quiet.returncode == 1
    assert line == "kiq: unexpected RuntimeError: boom at import; --verbose shows the traceback"
    assert verbose.returncode == 1
    assert "Traceback (most recent call last)" in verbose.stderr
    assert verbose.stderr.rstrip().endswith("kiq: unexpected RuntimeError: boom at import")


# -- a worker started before its Redis -------------------------------------------------------


@pytest.mark.slow
def test_worker_waits_for_a_redis_started_later_and_runs_a_job(tmp_path: Path) -> None:
    """Started against a port nobody listens on, the worker logs one waiting line, and
    once a redis-server comes up there it starts and runs a job."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    worker = Worker(tmp_path, url, "--redis-wait", "30")
    try:
        wait_until(lambda: "waiting for Redis at" in worker.output(), timeout=20)
        with RedisServer(tmp_path, port=port) as server:
            config = Config(redis_url=url)
            kiq.Client(config).push({"class": "Record", "args": ["after the wait"]})
            client = server.client()
            wait_until(lambda: client.llen("test:done") == 1, timeout=30)
            assert worker.stop() == 0
            config.close()
    finally:
        worker.kill()
    output = worker.output()
    assert output.count("waiting for Redis at") == 1, output
    assert f"waiting for Redis at {url} (up to 30s, --redis-wait)" in output


@pytest.mark.slow
def test_worker_gives_up_after_redis_wait_with_one_line(tmp_path: Path) -> None:
    """``--redis-wait 1`` and no server: exit 2 after about a second, one error line."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    started = time.monotonic()

    result = run_kiq("worker", "--redis-wait", "1", "--redis-url", url, cwd=tmp_path)

    elapsed = time.monotonic() - started
    line = one_line(result.stderr)
    assert result.returncode == 2
    assert 1.0 <= elapsed < 8.0  # an interpreter start on a loaded machine included
    assert line.startswith(f"kiq: cannot reach Redis at {url}: ")
    assert "Waited 1.0s (--redis-wait 1, config redis_wait)." in line
    assert result.stdout.count("waiting for Redis at") == 1


def test_redis_wait_is_a_file_key_and_a_flag(tmp_path: Path) -> None:
    """``redis_wait`` in the file, ``--redis-wait`` over it; the default is 60 s."""
    from tests.test_cli import parse

    (tmp_path / "kiq.yml").write_text(":redis_wait: 5\n")

    assert Config().redis_wait == 60.0
    assert parse("-C", str(tmp_path / "kiq.yml")).redis_wait == 5
    assert parse("-C", str(tmp_path / "kiq.yml"), "--redis-wait", "0.5").redis_wait == 0.5


def test_demo_of_a_kiq_without_the_example_app_says_how_to_get_it(tmp_path: Path) -> None:
    """A kiq installed from a wheel (here: the package copied out of the checkout) has no
    examples/ next to it: one line saying to clone the repository."""
    site = tmp_path / "site"
    shutil.copytree(Path(kiq.__file__).parent, site / "kiq")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KIQ_", "REDIS_"))}
    env["PYTHONPATH"] = str(site)

    result = subprocess.run(
        [sys.executable, "-m", "kiq.cli", "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )

    line = one_line(result.stderr)
    assert result.returncode == 2
    assert f"this kiq ({site / 'kiq'}) has none next to it" in line
    assert 'clone kiq\'s repository, then run there: pip install -e ".[demo]" && kiq demo' in line


def test_url_error_names_where_the_url_came_from(tmp_path: Path) -> None:
    """The environment variable or the config file that holds the bad URL is named."""
    (tmp_path / "kiq.yml").write_text("redis_url: redis://localhost:6379/x\n")

    from_env = run_kiq("status", cwd=tmp_path, redis_url="http://localhost:6379/0")
    from_file = run_kiq("worker", "-C", "kiq.yml", cwd=tmp_path)

    assert one_line(from_env.stderr).startswith(
        "kiq: environment KIQ_REDIS_URL 'http://localhost:6379/0': the scheme 'http'"
    )
    assert one_line(from_file.stderr).startswith(
        "kiq: config file kiq.yml: redis_url 'redis://localhost:6379/x': the path '/x'"
    )


@pytest.mark.slow
def test_worker_with_a_wrong_password_does_not_wait(tmp_path: Path) -> None:
    """A server that refuses the password will refuse it again: exit 2 at once, with
    the default 60 s wait, the password hidden."""
    with RedisServer(tmp_path, ["requirepass right-one"], admin={"password": "right-one"}) as s:
        started = time.monotonic()

        result = run_kiq("worker", "--redis-url", s.url(password="wrong-one"), cwd=tmp_path)

    line = one_line(result.stderr)
    assert result.returncode == 2
    assert time.monotonic() - started < 20  # not the 60 s of --redis-wait's default
    assert "waiting for Redis" not in result.stdout
    assert line.startswith(f"kiq: cannot reach Redis at redis://:***@127.0.0.1:{s.port}/0: ")
    assert "wrong-one" not in result.stderr + result.stdout
