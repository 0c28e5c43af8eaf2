"""``kiq web``: credentials from the flag or the environment, and a real server."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from kiq.errors import ConfigError
from kiq.web.serve import credentials
from tests.support.servers import free_port
from tests.support.wait import wait_until

ROOT = Path(__file__).parents[2]


def test_basic_auth_flag_is_user_colon_password() -> None:
    """--basic-auth USER:PASSWORD; a colon in the password is kept."""
    assert credentials("admin:pa:ss", env={}) == ("admin", "pa:ss")


def test_basic_auth_from_the_environment() -> None:
    """Without the flag, KIQ_WEB_USER and KIQ_WEB_PASSWORD are used."""
    env = {"KIQ_WEB_USER": "ops", "KIQ_WEB_PASSWORD": "pw"}
    assert credentials(None, env=env) == ("ops", "pw")


def test_no_credentials_means_no_auth() -> None:
    """Neither the flag nor KIQ_WEB_USER: no basic auth."""
    assert credentials(None, env={}) is None


@pytest.mark.parametrize(("flag", "env"), [("admin", {}), (None, {"KIQ_WEB_USER": "ops"})])
def test_a_missing_password_is_a_config_error(flag: str | None, env: dict[str, str]) -> None:
    """A user without a password is refused with the fix in the message."""
    with pytest.raises(ConfigError, match="USER:PASSWORD"):
        credentials(flag, env=env)


@contextlib.contextmanager
def serving(redis_url: str, tmp_path: Path, *flags: str) -> Iterator[str]:
    """``kiq web`` with ``flags`` on a free port of 127.0.0.1; yields its URL."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("KIQ_WEB_USER", None)
    log = (tmp_path / "web.log").open("wb")
    cmd = [sys.executable, "-m", "kiq.cli", "web", "--port", str(port), "--redis-url", redis_url]
    proc = subprocess.Popen(
        [*cmd, *flags], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture
def kiq_web(redis_url: str, tmp_path: Path) -> Iterator[str]:
    """``kiq web --basic-auth admin:pw --prefix /kiq``; yields its URL."""
    with serving(redis_url, tmp_path, "--basic-auth", "admin:pw", "--prefix", "/kiq") as url:
        yield f"{url}/kiq"


def answers(url: str, **kwargs: object) -> int | None:
    try:
        return httpx.get(url, timeout=1, **kwargs).status_code  # type: ignore[arg-type]
    except httpx.TransportError:
        return None


@pytest.mark.slow
def test_kiq_web_serves_behind_basic_auth(kiq_web: str) -> None:
    """The standalone server asks for credentials and serves the dashboard with them."""
    assert wait_until(lambda: answers(f"{kiq_web}/"), timeout=20) == 401
    assert answers(f"{kiq_web}/", auth=("admin", "pw")) == 200


@pytest.mark.slow
def test_kiq_web_without_auth_refuses_a_rebound_host(redis_url: str, tmp_path: Path) -> None:
    """The real server (uvicorn) answers 127.0.0.1 and refuses a foreign Host with 400."""
    with serving(redis_url, tmp_path) as url:
        assert wait_until(lambda: answers(f"{url}/queues"), timeout=20) == 200
        assert answers(f"{url}/queues", headers={"Host": "attacker.example:7433"}) == 400
        assert answers(f"{url}/queues", headers={"Host": "localhost"}) == 200


@pytest.mark.slow
def test_kiq_web_opens_a_queue_whose_name_holds_percent_escapes(
    redis_url: str, tmp_path: Path, r: redis.Redis
) -> None:
    """Through uvicorn (one decoding of the path), queue ``%2F/x`` opens from its link."""
    r.flushdb()
    r.sadd("queues", "%2F/x")
    r.lpush("queue:%2F/x", '{"class":"PercentJob","args":[],"jid":"j1","queue":"%2F/x"}')
    with serving(redis_url, tmp_path) as url:
        assert wait_until(lambda: answers(f"{url}/queues"), timeout=20) == 200
        link = re.findall(r'href="(/queues/[^"]+)"', httpx.get(f"{url}/queues").text)
        assert link == ["/queues/%252F%2Fx"]
        page = httpx.get(f"{url}{link[0]}")
        assert page.status_code == 200
        assert "PercentJob" in page.text
