"""The app's settings: where its database, mail server and export files are.

Read from ``BRIEF_APP_*`` environment variables the first time they are needed (never
at import), or set in code by the demo and the tests::

    settings.configure(database_url="sqlite:////tmp/app.sqlite3", smtp_port=2525)
    settings.current().smtp_port   # 2525
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the jobs need from their environment."""

    database_url: str = "sqlite:///brief_app.sqlite3"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025  # `python -m brief_app.mailserver` listens here
    smtp_timeout: float = 10.0  # seconds per SMTP round trip: a stuck server fails the send
    mail_from: str = "Brief App <noreply@brief-app.example>"
    # Seconds before a send refused with a 4xx (greylisting, a full mailbox) is tried again.
    mail_retry_delay: float = 300.0
    # Seconds between two digests: the brief's `sleep 0.1`, to spare the mail server.
    mail_pause: float = 0.1
    digest_batch_size: int = 100  # users per DigestBatchJob (the brief's find_each batch)
    export_dir: str = "exports"
    export_page_size: int = 100  # rows read per query, and between progress updates
    # Seconds to pause between export pages, to yield a busy database to the web app;
    # the demo sets it so that the progress bar can be watched.
    export_page_pause: float = 0.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Defaults, overridden by ``BRIEF_APP_<FIELD>`` variables (e.g. BRIEF_APP_SMTP_PORT)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = env.get(f"BRIEF_APP_{field.name.upper()}")
            if raw is not None:
                kind = type(getattr(cls(), field.name))
                try:
                    values[field.name] = kind(raw)
                except ValueError:
                    raise ValueError(
                        f"BRIEF_APP_{field.name.upper()}={raw!r} is not a {kind.__name__}"
                    ) from None
        return cls(**values)


_current: Settings | None = None
_lock = threading.Lock()


def current() -> Settings:
    """The settings in force (from the environment on first use)."""
    global _current
    with _lock:
        if _current is None:
            _current = Settings.from_env()
        return _current


def configure(**changes: Any) -> Settings:
    """Replace some settings, e.g. ``configure(smtp_port=2525)``; returns the new ones."""
    global _current
    base = current()
    with _lock:
        _current = dataclasses.replace(base, **changes)
        return _current


def reset() -> None:
    """Forget settings made in code (tests); the next ``current()`` reads the environment."""
    global _current
    with _lock:
        _current = None
