"""systemd's notify protocol (sd_notify(3)), for ``Type=notify`` units, with no dependency.

Why: with ``Type=notify`` systemd starts the units that depend on kiq only once kiq is
really processing (``READY=1``), shows what it is doing (``STATUS=``), knows a stop is
under way (``STOPPING=1``) and, with ``WatchdogSec=``, restarts a process whose
heartbeat thread has hung (``WATCHDOG=1``), as Sidekiq's ``Sidekiq::SdNotify`` does.
The protocol is one datagram of ``KEY=VALUE`` lines to the unix socket named by
``$NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace); outside systemd the
variable is unset and every call does nothing.

Example::

    notifier = Notifier()
    notifier.ready("processing default, concurrency 10")
    notifier.watchdog("3 of 10 busy")     # at each heartbeat, if WatchdogSec= is set
    notifier.stopping()
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


def send(path: str, message: str) -> bool:
    """Send one notification datagram to ``path``; False (and a debug line) on failure."""
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.debug("sd_notify to %s failed: %s", path, exc)
        return False
    return True


class Notifier:
    """Notifications for the service manager named by the environment (default os.environ).

    ``watchdog_interval`` is ``WATCHDOG_USEC`` in seconds when the watchdog is meant for
    this process (``WATCHDOG_PID`` unset or ours), else None: then ``watchdog`` sends
    only the status.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.path = env.get("NOTIFY_SOCKET") or None
        self.watchdog_interval: float | None = None
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if self.path and usec.isdigit() and int(usec) > 0 and pid in ("", str(os.getpid())):
            self.watchdog_interval = int(usec) / 1_000_000

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=VALUE`` lines (``notify(READY=1, STATUS="...")``); False if not sent."""
        if self.path is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items())
        return send(self.path, message)

    def ready(self, status: str) -> bool:
        return self.notify(READY=1, STATUS=status)

    def watchdog(self, status: str) -> bool:
        """Tell systemd we are alive (when the watchdog is on) and what we are doing."""
        if self.watchdog_interval is None:
            return self.notify(STATUS=status)
        return self.notify(WATCHDOG=1, STATUS=status)

    def status(self, status: str) -> bool:
        return self.notify(STATUS=status)

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify(STOPPING=1, STATUS=status)
