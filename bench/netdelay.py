"""A slow link to Redis for `--latency-ms`: 1 ms round trip, made and removed by the bench.

Preferred: the private redis-server runs in a network namespace of its own, behind a
veth pair, with `tc qdisc add dev <veth> root netem delay <half RTT>` on each side:
the kernel adds the delay, no extra process touches the traffic. The pair gets a /30
from 10.209.0.0/16 (link-local to the pair: nothing routes it off this machine), and
the namespace and both interfaces are deleted on exit.

When the kernel has no netem (sch_netem not built, or no module to load), that is
reported and the fallback is a userspace proxy on 127.0.0.1, run in a process of its
own (`python bench/netdelay.py proxy ...`): every chunk read from either side is
written to the other side ``delay`` seconds later, in order. It uses asyncio on a
select() loop, whose timeouts have microsecond resolution (epoll's are milliseconds,
which would turn 0.5 ms into 1 ms). Unlike netem it costs CPU on this 2-core machine;
the bench reports that CPU per job next to the figures, and the measured round trip.

Example::

    with delayed_link(port=6391, rtt_ms=1.0) as link:
        print(link.mode, link.client_url, link.measured_rtt_ms)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ctypes
import os
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

NETNS_PREFIX = "kiqbench"
SUBNET = "10.209.{n}.{host}"  # a /30 per run: .1 outside, .2 inside the namespace
MAX_BUFFER = 1 << 20  # bytes a direction may hold before its reader pauses
PR_SET_TIMERSLACK = 29  # prctl(2); the slack is in nanoseconds


@dataclass
class Link:
    """Where clients should connect, and how the delay was made."""

    mode: str  # "netem" or "proxy"
    client_url: str  # what workers and clients use
    server_url: str  # the bench's own polling, INFO, flush (direct where possible)
    server_pid: int | None
    proxy_pid: int | None = None
    note: str = ""
    measured_rtt_ms: float = 0.0
    direct_rtt_ms: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30)


CALIBRATION_ATTEMPTS = 8  # proxy delays tried before settling on the closest


def _rtt_ms(url: str, count: int = 300) -> float:
    """Median PING round trip in ms."""
    import redis

    client = redis.Redis.from_url(url)
    client.ping()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        client.ping()
        samples.append((time.perf_counter() - started) * 1000)
    client.close()
    return statistics.median(samples)


@contextlib.contextmanager
def _netns(port: int, one_way_ms: float) -> Iterator[Link]:
    """redis-server in a fresh namespace behind a netem-delayed veth pair."""
    # common (and redis) are imported where used: the proxy, this file run as a process
    # of its own, needs neither.
    from common import stop_process, wait_for_ping

    if shutil.which("ip") is None or shutil.which("tc") is None:
        raise RuntimeError("iproute2 (ip, tc) is not installed")
    tag = f"{os.getpid() % 60000}"
    netns = f"{NETNS_PREFIX}{tag}"
    outside, inside = f"kqb{tag}a", f"kqb{tag}b"
    subnet = os.getpid() % 250 + 1
    host_ip, ns_ip = SUBNET.format(n=subnet, host=1), SUBNET.format(n=subnet, host=2)
    created: list[list[str]] = []  # undo steps, run in reverse
    process: subprocess.Popen[bytes] | None = None
    workdir = Path(f"/tmp/kiq-bench/redis-{netns}")
    try:
        _run("ip", "netns", "add", netns)
        created.append(["ip", "netns", "del", netns])
        _run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
        created.append(["ip", "link", "del", outside])  # deletes the peer too
        _run("ip", "link", "set", inside, "netns", netns)
        _run("ip", "addr", "add", f"{host_ip}/30", "dev", outside)
        _run("ip", "link", "set", outside, "up")
        _run("ip", "-n", netns, "addr", "add", f"{ns_ip}/30", "dev", inside)
        _run("ip", "-n", netns, "link", "set", inside, "up")
        _run("ip", "-n", netns, "link", "set", "lo", "up")
        delay = f"{one_way_ms}ms"
        for argv in (
            ["tc", "qdisc", "add", "dev", outside, "root", "netem", "delay", delay],
            ["ip", "netns", "exec", netns, "tc", "qdisc", "add", "dev", inside, "root",
             "netem", "delay", delay],
        ):  # fmt: skip
            result = _run(*argv, check=False)
            if result.returncode != 0:
                raise NetemUnavailable(result.stderr.strip() or f"exit {result.returncode}")
        workdir.mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen(
            ["ip", "netns", "exec", netns, shutil.which("redis-server") or "redis-server",
             "--port", str(port), "--bind", ns_ip, "--save", "", "--appendonly", "no",
             # Bound only to the namespace end of our own veth pair; protected mode
             # would refuse the (non-loopback) bench clients on the other end.
             "--protected-mode", "no", "--dir", str(workdir), "--logfile", ""],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"redis://{ns_ip}:{port}/0"
        wait_for_ping(url)
        yield Link(
            mode="netem",
            client_url=url,
            server_url=url,
            server_pid=process.pid,
            note=f"netns {netns}, veth {outside}<->{inside}, netem delay {delay} each way",
        )
    finally:
        if process is not None:
            stop_process(process)
        for argv in reversed(created):
            _run(*argv, check=False)
        shutil.rmtree(workdir, ignore_errors=True)


class NetemUnavailable(RuntimeError):
    """tc refused the netem qdisc (kernel built without CONFIG_NET_SCH_NETEM)."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def _proxy_process(
    listen: int, target: int, one_way_ms: float
) -> Iterator[subprocess.Popen[bytes]]:
    from common import stop_process, wait_for_ping

    proxy = subprocess.Popen(
        [sys.executable, __file__, "proxy", "--listen", f"127.0.0.1:{listen}",
         "--target", f"127.0.0.1:{target}", "--delay-ms", f"{one_way_ms:.4f}"],
    )  # fmt: skip
    try:
        wait_for_ping(f"redis://127.0.0.1:{listen}/0")
        yield proxy
    finally:
        stop_process(proxy)


@contextlib.contextmanager
def _proxied(port: int, rtt_ms: float, reason: str) -> Iterator[Link]:
    """A private redis-server on 127.0.0.1 and the delay proxy in front of it.

    Timer wake-ups and the proxy's own work add to the nominal delay (~0.2 ms per
    round trip here), so the delay is calibrated: measure the idle PING round trip and
    bisect the added delay until it is within 5% of rtt_ms (at most
    CALIBRATION_ATTEMPTS tries, then the closest).
    """
    from common import RedisServer

    with RedisServer.private(port=port) as server:
        listen = _free_port()
        url = f"redis://127.0.0.1:{listen}/0"
        # Bisection on the added delay: the round trip grows with it, but not linearly
        # (timer wake-ups, the proxy's own work, a noisy machine), so a proportional
        # correction can overshoot to 0 ms added (seen: 0.5 ms -> 1.8 ms round trip).
        low, high = 0.0, rtt_ms / 2
        one_way = rtt_ms / 4
        best: tuple[float, float] | None = None  # (|error|, one_way)
        for attempt in range(CALIBRATION_ATTEMPTS + 1):
            final = attempt == CALIBRATION_ATTEMPTS
            if final:
                assert best is not None
                one_way = best[1]  # none was within 5%: the closest one
            with _proxy_process(listen, port, one_way) as proxy:
                measured = _rtt_ms(url)
                print(
                    f"  link calibration {attempt + 1}: {one_way:.3f} ms each way -> "
                    f"{measured:.3f} ms round trip",
                    flush=True,
                )
                good = abs(measured - rtt_ms) <= 0.05 * rtt_ms or rtt_ms == 0
                if good or final:
                    yield Link(
                        mode="proxy",
                        client_url=url,
                        server_url=server.url,
                        server_pid=server.pid,
                        proxy_pid=proxy.pid,
                        note=f"netem unavailable ({reason}); userspace asyncio proxy on "
                        f"127.0.0.1, {one_way:.3f} ms added each way (calibrated)",
                        measured_rtt_ms=measured,
                        direct_rtt_ms=_rtt_ms(server.url),
                    )
                    return
            error = abs(measured - rtt_ms)
            if best is None or error < best[0]:
                best = (error, one_way)
            if measured > rtt_ms:
                high = one_way
            else:
                low = one_way
            one_way = (low + high) / 2


@contextlib.contextmanager
def delayed_link(port: int, rtt_ms: float, mode: str = "auto") -> Iterator[Link]:
    """A Redis reachable only through a link with `rtt_ms` round trip (see module doc).

    mode: "auto" (netem, else proxy), "netem" (fail without it) or "proxy".
    """
    one_way = rtt_ms / 2
    reason = "not tried (--link proxy)"
    if mode in ("auto", "netem"):
        stack = contextlib.ExitStack()
        try:
            # Only the setup is guarded: an error in the caller's block must not
            # send us on to the proxy.
            link = stack.enter_context(_netns(port, one_way))
        except (NetemUnavailable, RuntimeError, subprocess.CalledProcessError) as exc:
            if isinstance(exc, subprocess.CalledProcessError):
                reason = f"{' '.join(map(str, exc.cmd))}: {exc.stderr.strip()}"
            else:
                reason = str(exc)
            if mode == "netem":
                raise
            print(f"netem delay unavailable: {reason}; using the userspace proxy", flush=True)
        else:
            with stack:
                link.measured_rtt_ms = _rtt_ms(link.client_url)
                yield link
            return
    with _proxied(port, rtt_ms, reason) as link:
        yield link


# -- the proxy ---------------------------------------------------------------------------------


class _Direction:
    """One direction of one connection: chunks wait ``delay`` seconds, then go out in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self.loop = loop
        self.delay = delay
        self.pending: collections.deque[tuple[float, bytes]] = collections.deque()
        self.pending_bytes = 0
        self.timer: asyncio.TimerHandle | None = None
        self.sink: asyncio.Transport | None = None
        self.source: asyncio.Transport | None = None
        self.closing = False

    def push(self, data: bytes) -> None:
        due = self.loop.time() + self.delay
        self.pending.append((due, data))
        self.pending_bytes += len(data)
        if self.timer is None:
            self.timer = self.loop.call_at(due, self.flush)
        if self.source is not None and self.pending_bytes > MAX_BUFFER:
            self.source.pause_reading()

    def flush(self) -> None:
        self.timer = None
        now = self.loop.time()
        chunks = []
        while self.pending and self.pending[0][0] <= now:
            chunks.append(self.pending.popleft()[1])
        if chunks:
            data = b"".join(chunks)
            self.pending_bytes -= len(data)
            if self.sink is not None and not self.sink.is_closing():
                self.sink.write(data)
        if self.pending:
            self.timer = self.loop.call_at(self.pending[0][0], self.flush)
        else:
            if self.source is not None and not self.source.is_closing():
                self.source.resume_reading()
            if self.closing and self.sink is not None:
                self.sink.close()

    def close_after_pending(self) -> None:
        self.closing = True
        if not self.pending and self.sink is not None:
            self.sink.close()


class _Side(asyncio.Protocol):
    def __init__(self, outgoing: _Direction, incoming: _Direction) -> None:
        self.outgoing = outgoing  # what this side sends, delayed toward the other side
        self.incoming = incoming

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.outgoing.source = transport
        self.incoming.sink = transport

    def data_received(self, data: bytes) -> None:
        self.outgoing.push(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.outgoing.close_after_pending()


async def _serve(listen: tuple[str, int], target: tuple[str, int], delay: float) -> None:
    loop = asyncio.get_running_loop()

    class Inbound(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            transport.pause_reading()
            up, down = _Direction(loop, delay), _Direction(loop, delay)
            self.side = _Side(up, down)
            self.side.connection_made(transport)
            self.connecting = loop.create_task(self._connect(transport, up, down))

        async def _connect(
            self, transport: asyncio.Transport, up: _Direction, down: _Direction
        ) -> None:
            try:
                await loop.create_connection(lambda: _Side(down, up), *target)
            except OSError:
                transport.close()
                return
            transport.resume_reading()

        def data_received(self, data: bytes) -> None:
            self.side.data_received(data)

        def connection_lost(self, exc: Exception | None) -> None:
            self.side.connection_lost(exc)

    server = await loop.create_server(Inbound, *listen)
    async with server:
        await server.serve_forever()


def proxy_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="TCP proxy adding a fixed delay each way")
    parser.add_argument("--listen", required=True, help="host:port, e.g. 127.0.0.1:6399")
    parser.add_argument("--target", required=True, help="host:port of the real server")
    parser.add_argument("--delay-ms", type=float, required=True, help="added each way")
    args = parser.parse_args(argv)

    def address(text: str) -> tuple[str, int]:
        host, _, port = text.rpartition(":")
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit(f"{text}: the proxy only serves and targets loopback addresses")
        return host, int(port)

    # select(): microsecond timeouts (see module docstring); a handful of sockets only.
    # A 1 us timer slack (default 50 us) keeps each wake-up close to its due time.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0)
    loop = asyncio.SelectorEventLoop(selectors.SelectSelector())
    try:
        loop.run_until_complete(
            _serve(address(args.listen), address(args.target), args.delay_ms / 1000)
        )
    except KeyboardInterrupt:
        pass
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["proxy"]:
        raise SystemExit("usage: python bench/netdelay.py proxy --listen ... --target ...")
    sys.exit(proxy_main(sys.argv[2:]))
