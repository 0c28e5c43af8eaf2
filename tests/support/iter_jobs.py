"""Iterable, cancellable and expiring jobs run by ``kiq worker`` subprocesses in tests
(tests/test_iterable.py, test_cancel.py, test_expiry.py; bench/iterable_stress.py).

Each records what it did in Redis (KIQ_REDIS_URL), so a test can assert from outside.
``ExportRowsJob`` walks a SQLite table through SQLAlchemy in keyset batches and pushes
every row id it processed to ``test:rows``, plus one ``test:runs`` entry per execution.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import redis
from sqlalchemy import Integer, String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import kiq

_redis = redis.Redis.from_url(os.environ.get("KIQ_REDIS_URL", "redis://127.0.0.1:6379/15"))
BATCH_COST = float(os.environ.get("KIQ_TEST_BATCH_COST", "0.01"))  # seconds of "work"


class Base(DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = "rows"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(40))


def make_table(path: str, count: int) -> None:
    """A SQLite file with ``count`` rows, ids 1..count."""
    engine = create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(Row(id=i, name=f"row {i}") for i in range(1, count + 1))
        session.commit()
    engine.dispose()


_engines: dict[str, Any] = {}


def _session(path: str) -> Session:
    engine = _engines.get(path) or _engines.setdefault(path, create_engine(f"sqlite:///{path}"))
    return Session(engine)


class ExportRowsJob(kiq.IterableJob, name="iter_jobs.ExportRowsJob", queue="iter", retry=3):
    """Keyset batches of 50 rows; every batch costs BATCH_COST seconds of work."""

    state_flush_interval = float(os.environ.get("KIQ_TEST_FLUSH", "0.5"))
    max_iteration_runtime = float(os.environ.get("KIQ_TEST_MAX_RUNTIME", "0")) or None

    def build_enumerator(self, path: str, *, cursor: Any) -> Any:
        self._db = _session(path)
        _redis.rpush(
            "test:runs",
            json.dumps(
                {
                    "jid": self.jid,
                    "cursor": cursor,
                    "ex": self.executions,
                    "pid": os.getpid(),
                    "at": time.time(),
                }
            ),
        )
        return kiq.iter.sqlalchemy_batches(
            self._db, select(Row), Row.id, cursor=cursor, batch_size=50
        )

    def each_iteration(self, batch: list[Row], path: str) -> None:
        time.sleep(BATCH_COST)  # the batch's work (an export writes a file, calls an API...)
        _redis.rpush("test:rows", *[row.id for row in batch])

    def on_start(self) -> None:
        _redis.rpush("test:hooks", "start")

    def on_resume(self) -> None:
        _redis.rpush("test:hooks", "resume")

    def on_stop(self) -> None:
        _redis.rpush("test:hooks", "stop")

    def on_cancel(self) -> None:
        _redis.rpush("test:hooks", "cancel")

    def on_complete(self) -> None:
        _redis.rpush("test:hooks", "complete")


class CountJob(kiq.IterableJob, name="iter_jobs.CountJob", queue="iter"):
    """Items 0..n-1 of a list, one per iteration, each costing BATCH_COST."""

    state_flush_interval = 0.2

    def build_enumerator(self, n: int, *, cursor: Any) -> Any:
        return kiq.iter.items(list(range(n)), cursor=cursor)

    def each_iteration(self, item: int, n: int) -> None:
        time.sleep(BATCH_COST)
        _redis.rpush("test:items", item)

    def on_cancel(self) -> None:
        _redis.rpush("test:hooks", "cancel")


async def _numbers(n: int) -> AsyncIterator[int]:
    for i in range(n):
        await asyncio.sleep(0)
        yield i


class AsyncCountJob(kiq.IterableJob, name="iter_jobs.AsyncCountJob", queue="iter"):
    """An ``async def each_iteration`` job over an async iterator."""

    state_flush_interval = 0.2

    def build_enumerator(self, n: int, *, cursor: Any) -> Any:
        return kiq.iter.async_items(_numbers(n), cursor=cursor)

    async def each_iteration(self, item: int, n: int) -> None:
        await asyncio.sleep(BATCH_COST)
        _redis.rpush("test:items", item)


class PatientJob(kiq.Job, name="iter_jobs.PatientJob", queue="iter"):
    """A thread job that loops until it sees ``cancelled()`` (or 30 s pass)."""

    def perform(self, tag: str) -> None:
        _redis.rpush("test:started", self.jid)
        deadline = time.monotonic() + 30
        while not self.cancelled() and time.monotonic() < deadline:
            time.sleep(0.02)
        _redis.rpush("test:ended", json.dumps({"jid": self.jid, "cancelled": self.cancelled()}))


class AsyncPatientJob(kiq.Job, name="iter_jobs.AsyncPatientJob", queue="iter"):
    """An ``async def`` job that waits; a cancel delivers CancelledError."""

    async def perform(self, tag: str) -> None:
        _redis.rpush("test:started", self.jid)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            _redis.rpush("test:ended", json.dumps({"jid": self.jid, "cancelled": True}))
            raise
        _redis.rpush("test:ended", json.dumps({"jid": self.jid, "cancelled": False}))


class NoteJob(kiq.Job, name="iter_jobs.NoteJob", queue="iter"):
    """Records that it ran (the expiry tests: an expired one must never)."""

    def perform(self, tag: str) -> None:
        _redis.rpush("test:ran", tag)
