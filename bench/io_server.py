"""A loopback HTTP server that answers every request after a fixed delay (the I/O bench).

    python bench/io_server.py --port 8790 --delay 0.05

Each request on a keep-alive HTTP/1.1 connection is answered ``200 ok`` after ``--delay``
seconds, so a job that calls it waits 50 ms on a socket, as a job calling a provider's
API does. It is an `asyncio.Protocol` (no streams, no framework) so that it spends as
little of the machine's two cores as it can: the bench measures the job systems, not it.
It prints ``ready <port>`` once listening; SIGTERM stops it. Requests are parsed only as
far as the blank line that ends the headers (the clients send GETs with no body).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
    b"Connection: keep-alive\r\n\r\nok"
)


class DelayedReply(asyncio.Protocol):
    """One connection: every complete request head is answered `delay` seconds later."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self.loop = loop
        self.delay = delay
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            self.buffer = self.buffer[end + 4 :]
            self.loop.call_later(self.delay, self._reply)

    def _reply(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(RESPONSE)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(port: int, delay: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: DelayedReply(loop, delay), "127.0.0.1", port, backlog=4096, reuse_address=True
    )
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print(f"ready {port}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8790)
    parser.add_argument("--delay", type=float, default=0.05, help="seconds before each reply")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port, args.delay))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
