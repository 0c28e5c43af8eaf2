"""A local SMTP server that keeps what it receives (MailCatcher for this app).

The demo and the tests send real mail, over real SMTP, to this server on 127.0.0.1;
it answers as a real one would in the cases the jobs must handle:

* a recipient in a ``.invalid`` domain (RFC 2606) is refused for good:
  ``550 5.1.1``, which the app turns into InvalidRecipientError;
* a recipient at ``greylist.example`` is greylisted: its first delivery is refused
  with ``451 4.7.1`` (try again later), every later one accepted;
* ``stall`` seconds of silence before answering DATA, to test timeouts.

Example::

    with MailServer() as server:                 # port 0: a free port is picked
        settings.configure(smtp_port=server.port)
        ...
        assert server.mailbox.to("ann@example.com")

Run by hand: ``python -m brief_app.mailserver [--port 1025]`` prints each mail.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email
import email.policy
import threading
from email.message import EmailMessage
from types import TracebackType
from typing import Self

from aiosmtpd.smtp import SMTP, Envelope, Session

GREYLIST_DOMAIN = "greylist.example"
START_TIMEOUT = 10.0  # seconds for the server thread to bind its port


class Mailbox:
    """The messages received, oldest first; safe to read from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: list[EmailMessage] = []
        self.printing = False

    def add(self, message: EmailMessage) -> None:
        with self._lock:
            self._messages.append(message)
        if self.printing:
            print(f"--- to {message['To']}: {message['Subject']}\n{message.get_content()}")

    @property
    def messages(self) -> list[EmailMessage]:
        with self._lock:
            return list(self._messages)

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages if m["To"] == address]

    def recipients(self) -> list[str]:
        return [str(m["To"]) for m in self.messages]

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()


class Handler:
    """aiosmtpd's handler hooks: refuse, greylist or keep."""

    def __init__(self, mailbox: Mailbox, stall: float) -> None:
        self.mailbox = mailbox
        self.stall = stall
        self.greylisted: set[str] = set()

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        domain = address.rpartition("@")[2].lower()
        if domain.endswith(".invalid"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: no such domain"
        if domain == GREYLIST_DOMAIN and address not in self.greylisted:
            self.greylisted.add(address)
            return "451 4.7.1 Greylisted, please try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.stall:
            await asyncio.sleep(self.stall)
        raw = envelope.original_content or b""
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)  # what policy.default builds
        self.mailbox.add(message)
        return "250 Message accepted for delivery"


class MailServer:
    """An SMTP server on ``host:port`` in a thread of its own (``port=0``: any free port)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, stall: float = 0.0) -> None:
        self.host = host
        self.port = port
        self.mailbox = Mailbox()
        self.handler = Handler(self.mailbox, stall)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="brief_app.mailserver", daemon=True)

    def start(self) -> Self:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT) or self._error is not None:
            raise RuntimeError(
                f"SMTP server on {self.host}:{self.port} did not start: {self._error}"
            )
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(START_TIMEOUT)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _factory(self) -> SMTP:
        # hostname given: aiosmtpd would otherwise look up our FQDN, slow without DNS.
        return SMTP(self.handler, hostname="mail.brief-app.localhost", loop=self._loop)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            server = self._loop.run_until_complete(
                self._loop.create_server(self._factory, host=self.host, port=self.port)
            )
        except OSError as exc:
            self._error = exc
            self._ready.set()
            return
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.run_until_complete(server.wait_closed())
            self._loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="brief_app's local SMTP server")
    parser.add_argument("--port", type=int, default=1025)
    args = parser.parse_args()
    with MailServer(port=args.port) as server:
        server.mailbox.printing = True
        print(f"SMTP server on 127.0.0.1:{server.port}; Ctrl-C to stop")
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
