"""Fixtures for the example app's specs (the brief's spec_helper).

Every test gets the app on a fresh SQLite file and a real SMTP server of its own
(``app``); jobs run against real Redis (the ``config`` fixture) or in fake mode
(``kiq_fake``), never against mocks. ``worker`` runs a kiq Launcher in this process
with the app's queues, for the behaviour only a worker shows: retries, discards,
timeouts, cascades.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
APP_DIR = EXAMPLES / "brief_app"

try:
    import aiosmtpd  # noqa: F401
    import sqlalchemy  # noqa: F401
except ImportError:
    if os.environ.get("CI"):
        raise  # CI installs them (the dev group): never skip there
    collect_ignore_glob = ["test_*.py"]

    def pytest_report_header() -> str:
        return 'tests/examples skipped: pip install -e ".[test]" for sqlalchemy and aiosmtpd'

else:
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))

    from brief_app import db, settings
    from brief_app.mailserver import Mailbox, MailServer
    from sqlalchemy.orm import Session

    from kiq.config import Config, read_file
    from kiq.launcher import Launcher

    @dataclass
    class App:
        """The app under test: its mail server's mailbox and its export folder."""

        mailbox: Mailbox
        mail_server: MailServer
        export_dir: Path

    @pytest.fixture(autouse=True)
    def app(tmp_path: Path) -> Iterator[App]:
        """A fresh SQLite database, a real SMTP server on a free port, no mail pause."""
        server = MailServer().start()
        exports = tmp_path / "exports"
        settings.configure(
            database_url=f"sqlite:///{tmp_path / 'app.sqlite3'}",
            smtp_port=server.port,
            smtp_timeout=5.0,
            mail_pause=0.0,
            mail_retry_delay=0.3,
            export_dir=str(exports),
        )
        yield App(server.mailbox, server, exports)
        db.dispose()
        settings.reset()
        server.stop()

    @pytest.fixture
    def session() -> Iterator[Session]:
        """A session on the test's database (the test's ``let`` and ``reload``)."""
        with db.session() as s:
            yield s

    @pytest.fixture
    def worker(config: Config) -> Iterator[Launcher]:
        """A kiq process (Launcher) in this process, on the app's queues from config/kiq.yml."""
        config.queues = read_file(APP_DIR / "config" / "kiq.yml", "test")["queues"]
        config.concurrency = 4
        launcher = Launcher(config)
        launcher.start()
        yield launcher
        launcher.stop()
