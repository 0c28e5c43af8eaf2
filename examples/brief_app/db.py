"""The database connection: one SQLAlchemy engine per database URL, sessions from it.

Jobs open a session per unit of work and never share one across threads::

    with db.session() as session, session.begin():
        entity = session.get(Entity, entity_id)

SQLite is the example's database, so each connection waits for a lock (``timeout``)
instead of failing at once, and the file runs in WAL mode so that readers (the export)
do not block the writers (ten worker threads).
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from brief_app import settings
from brief_app.models import Base

SQLITE_BUSY_TIMEOUT = 30.0  # seconds a writer waits for another writer's lock

_lock = threading.Lock()
_engine: Engine | None = None
_sessions: sessionmaker[Session] | None = None


def engine() -> Engine:
    """The engine for ``settings.current().database_url``; tables are created on first use."""
    global _engine, _sessions
    url = settings.current().database_url
    with _lock:
        if _engine is None or str(_engine.url) != url:
            if _engine is not None:
                _engine.dispose()
            _engine = _connect(url)
            _sessions = sessionmaker(_engine, expire_on_commit=False)
        return _engine


def session() -> Session:
    """A new session; use it as a context manager (``with db.session() as s``)."""
    engine()
    assert _sessions is not None
    return _sessions()


def dispose() -> None:
    """Close every pooled connection (the demo and the tests call it at the end)."""
    global _engine, _sessions
    with _lock:
        if _engine is not None:
            _engine.dispose()
        _engine = _sessions = None


def _connect(url: str) -> Engine:
    is_sqlite = url.startswith("sqlite")
    new = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT} if is_sqlite else {})
    if is_sqlite:
        event.listen(new, "connect", _sqlite_pragmas)
    # An example app without migrations: the schema is created when missing.
    Base.metadata.create_all(new)
    return new


def _sqlite_pragmas(connection: sqlite3.Connection, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
