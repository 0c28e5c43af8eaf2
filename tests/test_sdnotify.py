"""sd_notify (issue 8 §6): what a ``kiq worker`` tells systemd, read from a datagram socket
the test creates and names in ``NOTIFY_SOCKET``, as systemd does for ``Type=notify``."""

from __future__ import annotations

import logging
import os
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiq.sdnotify import Notifier
from tests.support.inprocess import running
from tests.support.jobs import identity_of
from tests.support.wait import wait_until


class Listener:
    """A unix datagram socket standing in for systemd's notify socket."""

    def __init__(self, name: str) -> None:
        self.name = name  # what goes in NOTIFY_SOCKET
        address = "\0" + name[1:] if name.startswith("@") else name
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        """Every message received so far (reads what is waiting, without blocking long)."""
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                return self.messages

    def fields(self) -> list[dict[str, str]]:
        return [dict(line.split("=", 1) for line in m.splitlines()) for m in self.drain()]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    """A socket in the abstract namespace (``@name``), unique to this test."""
    sock = Listener(f"@kiq-test-{os.getpid()}-{time.monotonic_ns()}")
    yield sock
    sock.close()


def test_nothing_is_sent_outside_systemd():
    """Without NOTIFY_SOCKET every call is a no-op that says it sent nothing."""
    notifier = Notifier(env={})

    assert not notifier.enabled
    assert notifier.ready("up") is False
    assert notifier.watchdog_interval is None


def test_messages_are_key_value_lines(listener):
    """One datagram per call, ``KEY=VALUE`` lines: READY with STATUS, STOPPING."""
    notifier = Notifier(env={"NOTIFY_SOCKET": listener.name})

    notifier.ready("3 of 10 busy")
    notifier.stopping()

    assert listener.drain() == ["READY=1\nSTATUS=3 of 10 busy", "STOPPING=1\nSTATUS=stopping"]


def test_a_socket_path_on_disk_works_too():
    """NOTIFY_SOCKET may be a filesystem path (systemd's usual /run/systemd/notify)."""
    with tempfile.TemporaryDirectory(dir="/tmp") as folder:  # short: unix paths ≤ 107 bytes
        listener = Listener(str(Path(folder) / "notify"))
        try:
            Notifier(env={"NOTIFY_SOCKET": listener.name}).status("hello")
            assert listener.drain() == ["STATUS=hello"]
        finally:
            listener.close()


def test_watchdog_pings_only_when_the_watchdog_is_for_this_process(listener):
    """WATCHDOG=1 is sent when WATCHDOG_USEC is set and WATCHDOG_PID is ours (or unset);
    for another PID (a child of the main process) only the status goes."""
    ours = Notifier(
        env={"NOTIFY_SOCKET": listener.name, "WATCHDOG_USEC": "10000000", "WATCHDOG_PID": ""}
    )
    other = Notifier(
        env={"NOTIFY_SOCKET": listener.name, "WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}
    )

    ours.watchdog("a")
    other.watchdog("b")

    assert ours.watchdog_interval == 10.0
    assert other.watchdog_interval is None
    assert listener.drain() == ["WATCHDOG=1\nSTATUS=a", "STATUS=b"]


def test_an_unreachable_socket_does_not_raise():
    """A NOTIFY_SOCKET nobody listens on is logged at debug and ignored."""
    assert Notifier(env={"NOTIFY_SOCKET": "@kiq-test-nobody-listens"}).ready("x") is False


@pytest.mark.slow
def test_a_worker_notifies_ready_watchdog_and_stopping(r, listener, start_worker):
    """A real ``kiq worker``: READY=1 once it is registered and processing, WATCHDOG=1 at
    each heartbeat (with STATUS), STOPPING=1 on TERM, in that order."""
    worker = start_worker(env={"NOTIFY_SOCKET": listener.name, "WATCHDOG_USEC": "5000000"})
    wait_until(lambda: any("READY" in f for f in listener.fields()), timeout=20)
    assert identity_of(r, worker.pid) is not None  # registered before READY was sent
    wait_until(lambda: sum("WATCHDOG" in f for f in listener.fields()) >= 2, timeout=20)

    worker.signal(signal.SIGTERM)
    assert worker.proc.wait(30) == 0

    kinds = [
        next(k for k in ("READY", "WATCHDOG", "STOPPING") if k in f) for f in listener.fields()
    ]
    assert kinds[0] == "READY"
    assert kinds[-1] == "STOPPING"
    assert set(kinds[1:-1]) == {"WATCHDOG"}
    assert listener.fields()[0]["STATUS"] == "0 of 10 busy"


def test_a_watchdog_shorter_than_two_heartbeats_is_warned_about(
    config, listener, monkeypatch, caplog
):
    """WatchdogSec below twice the heartbeat interval would kill a healthy process: the
    launcher says so at start, with a value that works."""
    monkeypatch.setenv("NOTIFY_SOCKET", listener.name)
    monkeypatch.setenv("WATCHDOG_USEC", "300000")  # 0.3 s; heartbeats every 0.2 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    with caplog.at_level(logging.WARNING, logger="kiq"), running(config):
        pass

    assert "WatchdogSec=0.3s is shorter than twice heartbeat_interval" in caplog.text
    assert "WatchdogSec=0.8 or more" in caplog.text
