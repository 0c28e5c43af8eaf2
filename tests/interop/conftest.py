"""Fixtures that run real Ruby Sidekiq 6.4 (Debian's ``ruby-sidekiq``) next to kiq.

Every interop test shares one Redis database with both languages: the ``config`` fixture
flushes it, ``start_worker`` runs ``kiq worker`` and ``start_sidekiq`` runs ``sidekiq``
with the job classes of ``ruby/worker_app.rb``. ``ruby.push`` / ``ruby.api`` drive
``push.rb`` / ``api.rb`` (Sidekiq's own client and data API) and return their JSON.

Without Ruby, Sidekiq or a gem a test needs, the test skips, saying what to install; with
``KIQ_REQUIRE_SYSTEM`` set (.ci/run) it fails instead, because CI installs them all and a
silent skip would hide a broken image (issues 3 and 12; tests/support/needs.py).

Sidekiq's production timings (poller first wait 10-15 s, heartbeat every 5 s) are
shortened through worker_app.rb's test knobs, so no test waits on a production timer.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias, TypeVar, cast

import pytest

from tests.support.needs import needs_binary, needs_ruby_gem
from tests.support.servers import ChildProcess, free_port
from tests.support.wait import wait_until

# The ``r`` fixture (str replies). redis-py types every reply as a sync/async union that
# no test can use without a cast, so helpers take it untyped.
StrRedis: TypeAlias = Any

RUBY_DIR = Path(__file__).parent / "ruby"
WORKER_APP = RUBY_DIR / "worker_app.rb"
# Ruby's side of every test, fast: the poller polls about every 0.5 s from the start and
# the heartbeat (stats flush, busy jobs, remote signals) beats every second.
FAST_SIDEKIQ_ENV = {
    "SIDEKIQ_POLL_INTERVAL_AVERAGE": "0.5",
    "SIDEKIQ_POLL_INITIAL_WAIT": "0",
    "SIDEKIQ_BEAT_PAUSE": "1",
}
PY_DONE = "interop:py:done"  # InteropEcho (tests/support/jobs.py) records here
RUBY_DONE = "interop:ruby:done"  # RubyEcho (ruby/worker_app.rb) records here
RUBY_TIMEOUT = 30.0  # seconds a push.rb / api.rb run may take

# Arguments that break naive JSON bridges: bignums past 2^53 and 2^64 (Ruby Integer is
# unbounded), floats, non-ASCII and control characters, nesting, empties, null, booleans.
TRICKY_ARGS: list[Any] = [
    2**53 + 1,
    -(2**53) - 1,
    2**63,
    -(2**63) - 1,
    2**64 + 1,
    -(2**64) - 7,
    2**100,
    0,
    -1,
    0.1,
    -2.5,
    1.0,
    1.5e-7,
    6.02214076e23,
    "héllo wörld",
    "日本語のテキスト",
    "🎉 astral plane",
    "",
    'quote " backslash \\ slash / newline \n tab \t nul \u0000 sep \u2028',
    {"nested": {"list": [1, [2, [3, {}]]], "null": None, "t": True, "f": False}, "": "x", "ü": 1},
    [],
    {},
    None,
    True,
    False,
    [None, [], {}, [[]]],
]


T = TypeVar("T")


def wait_for(condition: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.01) -> T:
    """``wait_until`` for a condition that returns a value or None; typed as the value."""
    return cast(T, wait_until(condition, timeout=timeout, interval=interval))


def strict_json(value: Any) -> str:
    """A canonical text for comparisons in which 1 != 1.0 != True (plain == conflates them)."""
    return json.dumps(value, ensure_ascii=False)


def read_records(r: StrRedis, key: str) -> list[dict[str, Any]]:
    """The JSON entries of a result list, parsed with json (exact big integers)."""
    return [json.loads(item) for item in r.lrange(key, 0, -1)]


def wait_records(r: StrRedis, key: str, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    wait_until(lambda: r.llen(key) >= count, timeout=timeout)
    return read_records(r, key)


@pytest.fixture(scope="session")
def ruby_sidekiq() -> str:
    """The ``sidekiq`` program, once Ruby and Sidekiq 6.x are known to be installed.

    Skips (or fails under KIQ_REQUIRE_SYSTEM, as in CI) through tests/support/needs.py.
    """
    needs_binary("ruby")
    sidekiq = needs_binary("sidekiq", package="ruby-sidekiq")
    needs_ruby_gem("sidekiq", require="sidekiq/api", version=("Sidekiq::VERSION", "6."))
    return sidekiq


def needs_namespace() -> None:
    """A Sidekiq configured with ``namespace:`` needs the redis-namespace gem."""
    needs_ruby_gem("redis-namespace", require="redis/namespace")


@dataclass
class Ruby:
    """Runs push.rb / api.rb against the test database (optionally namespaced)."""

    redis_url: str
    namespace: str | None = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ, REDIS_URL=self.redis_url)
        env.pop("SIDEKIQ_NAMESPACE", None)
        if self.namespace:
            env["SIDEKIQ_NAMESPACE"] = self.namespace
        return env

    def namespaced(self, namespace: str) -> Ruby:
        needs_namespace()
        return Ruby(self.redis_url, namespace)

    def run(self, script: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ruby", str(RUBY_DIR / script), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=RUBY_TIMEOUT,
        )

    def push(self, *specs: dict[str, Any]) -> list[Any]:
        """Push with Sidekiq::Client / perform_async / perform_in / push_bulk (see push.rb)."""
        done = self.run("push.rb", stdin=json.dumps(list(specs), ensure_ascii=False))
        assert done.returncode == 0, f"push.rb failed: {done.stderr}"
        result: list[Any] = json.loads(done.stdout)
        return result

    def api(self, *action: str, expect_ok: bool = True) -> dict[str, Any]:
        """A snapshot of Sidekiq's data API, after ``action`` if one is given (see api.rb)."""
        done = self.run("api.rb", *action)
        assert done.returncode in (0, 1), f"api.rb {action} failed: {done.stderr}"
        assert (done.returncode == 0) == expect_ok, (
            f"api.rb {action}: expected ok={expect_ok}, got exit {done.returncode}"
        )
        snapshot: dict[str, Any] = json.loads(done.stdout)
        return snapshot


@pytest.fixture
def ruby(ruby_sidekiq: str, redis_url: str) -> Ruby:
    """Sidekiq's client and data API, as Ruby subprocesses on the test database."""
    return Ruby(redis_url)


@dataclass
class SidekiqProcess(ChildProcess):
    """A running ``sidekiq`` process with worker_app.rb's job classes.

    ``stop()`` is TERM and wait: Sidekiq flushes its stats and leaves ``processes`` on
    the way out.
    """

    prefix: str = ""
    identity: str = field(default="")


def identity_of(r: StrRedis, pid: int, prefix: str = "") -> str | None:
    """The member of ``processes`` belonging to ``pid`` (``host:pid:nonce``), if it beat yet."""
    for member in r.smembers(f"{prefix}processes"):
        if member.split(":")[-2] == str(pid):
            return str(member)
    return None


@pytest.fixture
def start_sidekiq(
    ruby_sidekiq: str, redis_url: str, r: StrRedis, tmp_path: Path
) -> Iterator[Callable[..., SidekiqProcess]]:
    """Factory: ``start_sidekiq("ruby", concurrency=5)`` -> a Sidekiq that has beaten once.

    Started from an empty directory (Sidekiq 6.4 reads ``./config/sidekiq.yml``) and
    killed at teardown (the next test flushes the database anyway).
    """
    started: list[SidekiqProcess] = []

    def start(
        *queues: str,
        concurrency: int = 5,
        namespace: str | None = None,
        env: dict[str, str] | None = None,
    ) -> SidekiqProcess:
        full_env = dict(os.environ, REDIS_URL=redis_url, **FAST_SIDEKIQ_ENV)
        full_env.pop("SIDEKIQ_NAMESPACE", None)
        if namespace:
            needs_namespace()
            full_env["SIDEKIQ_NAMESPACE"] = namespace
        full_env.update(env or {})
        cmd = [ruby_sidekiq, "-r", str(WORKER_APP.resolve()), "-c", str(concurrency)]
        for queue in queues or ("default",):
            cmd += ["-q", queue]
        workdir = tmp_path / f"sidekiq-{len(started)}"
        workdir.mkdir()
        log = workdir / "sidekiq.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=workdir
            )
        process = SidekiqProcess(proc, log, prefix=f"{namespace}:" if namespace else "")
        started.append(process)

        def beaten() -> str | None:
            assert proc.poll() is None, f"sidekiq exited early:\n{process.output()}"
            return identity_of(r, proc.pid, process.prefix)

        process.identity = wait_for(beaten, timeout=20.0)
        return process

    yield start
    for process in started:
        process.kill()


def kiq_identity(r: StrRedis, pid: int, prefix: str = "", timeout: float = 20.0) -> str:
    """Wait for a kiq worker's first heartbeat; return its identity."""
    return wait_for(lambda: identity_of(r, pid, prefix), timeout=timeout)


@dataclass
class WebUI:
    base: str

    def get(self, path: str) -> tuple[int, str]:
        """GET a page of Sidekiq::Web; (status, body)."""
        try:
            with urllib.request.urlopen(self.base + path, timeout=RUBY_TIMEOUT) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")


@pytest.fixture(scope="module")
def sidekiq_web(
    ruby_sidekiq: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebUI]:
    """Sidekiq 6.4's Web UI (web.ru) under puma on a free loopback port, for one module."""
    puma = needs_binary("puma")
    needs_ruby_gem("rack", require="rack/session/cookie")
    port = free_port()
    workdir = tmp_path_factory.mktemp("puma")
    log = workdir / "puma.log"
    env = dict(os.environ, REDIS_URL=redis_url)
    env.pop("SIDEKIQ_NAMESPACE", None)
    cmd = [
        puma,
        "--bind",
        f"tcp://127.0.0.1:{port}",
        "--threads",
        "1:4",
        "--environment",
        "production",
        str((RUBY_DIR / "web.ru").resolve()),
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir)
    web = WebUI(f"http://127.0.0.1:{port}")

    def up() -> bool:
        assert proc.poll() is None, f"puma exited:\n{log.read_text(errors='replace')}"
        try:
            return web.get("/")[0] == 200
        except OSError:
            return False

    try:
        wait_until(up, timeout=30.0, interval=0.1)
        yield web
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
