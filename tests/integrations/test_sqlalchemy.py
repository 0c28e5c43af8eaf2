"""kiq.integrations.sqlalchemy with real SQLite files and real Redis: a job pushed with
enqueue_after_commit reaches Redis when, and only when, its transaction commits."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sqlalchemy")

import orjson
from sqlalchemy import Engine, String, create_engine, select
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    scoped_session,
    sessionmaker,
)

import kiq
from kiq.config import Config
from kiq.errors import JobArgumentError, RedisUnavailable
from kiq.integrations.sqlalchemy import enqueue_after_commit


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(String(20), default="new")


class ConfirmOrderJob(kiq.Job, name="sqla.ConfirmOrderJob"):
    def perform(self, order_id: int) -> None: ...


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'shop.db'}")
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with Session(engine) as session:
        yield session


def queued(r) -> list[dict[str, Any]]:
    return [orjson.loads(raw) for raw in reversed(r.lrange("queue:default", 0, -1))]


def new_order(session: Session) -> int:
    order = Order()
    session.add(order)
    session.flush()
    return order.id


def test_push_waits_for_the_commit(config: Config, session: Session, r) -> None:
    """Inside the transaction nothing is in Redis; after commit the job is, with the id."""
    order_id = new_order(session)
    jid = enqueue_after_commit(session, ConfirmOrderJob, order_id)
    assert r.llen("queue:default") == 0

    session.commit()

    assert [(job["jid"], job["args"]) for job in queued(r)] == [(jid, [order_id])]


def test_the_row_is_committed_before_the_job_is_visible(
    config: Config, session: Session, engine: Engine, r
) -> None:
    """When the job appears in Redis, another connection (a worker) can read its row."""
    seen: list[bool] = []
    order_id = new_order(session)
    enqueue_after_commit(session, ConfirmOrderJob, order_id)

    class Probe:
        """Client middleware that looks for the row from a second connection at push."""

        def __call__(self, job: str, payload: Any, queue: str, call_next: Any) -> Any:
            with Session(engine) as other:
                seen.append(other.get(Order, payload["args"][0]) is not None)
            return call_next()

    config.client_middleware.add(Probe())
    session.commit()

    assert seen == [True]


def test_rollback_drops_the_push(config: Config, session: Session, r) -> None:
    """A job enqueued in a transaction that rolls back never reaches Redis."""
    enqueue_after_commit(session, ConfirmOrderJob, new_order(session))

    session.rollback()
    session.commit()  # a later, empty transaction does not bring it back

    assert r.llen("queue:default") == 0


def test_closing_without_commit_drops_the_push(config: Config, engine: Engine, r) -> None:
    """Closing the session rolls its transaction back, and the push with it."""
    with Session(engine) as session:
        enqueue_after_commit(session, ConfirmOrderJob, new_order(session))

    assert r.llen("queue:default") == 0


def test_savepoint_rollback_drops_only_its_push(config: Config, session: Session, r) -> None:
    """A push inside a rolled-back begin_nested() is dropped; the outer one is made."""
    enqueue_after_commit(session, ConfirmOrderJob, 1)
    savepoint = session.begin_nested()
    enqueue_after_commit(session, ConfirmOrderJob, 2)
    savepoint.rollback()

    session.commit()

    assert [job["args"] for job in queued(r)] == [[1]]


def test_released_savepoint_pushes_at_the_outer_commit(config: Config, session: Session, r) -> None:
    """Releasing a savepoint is not the commit: its push waits for the outer transaction."""
    session.execute(select(1))
    with session.begin_nested():
        enqueue_after_commit(session, ConfirmOrderJob, 3)
    assert r.llen("queue:default") == 0

    session.commit()

    assert [job["args"] for job in queued(r)] == [[3]]


def test_pushes_keep_their_order(config: Config, session: Session, r) -> None:
    """Several jobs of one transaction are pushed in the order they were enqueued."""
    for n in range(5):
        enqueue_after_commit(session, ConfirmOrderJob, n)

    session.commit()

    assert [job["args"] for job in queued(r)] == [[n] for n in range(5)]


def test_no_transaction_pushes_at_once(config: Config, session: Session, r) -> None:
    """A session with no open transaction has nothing to wait for: the push is immediate."""
    jid = enqueue_after_commit(session, ConfirmOrderJob, 4)

    assert [job["jid"] for job in queued(r)] == [jid]


def test_per_call_options_travel(config: Config, session: Session, r) -> None:
    """``MyJob.set(queue=...)`` as the job: the push goes to that queue at commit."""
    enqueue_after_commit(session, ConfirmOrderJob.set(queue="orders"), new_order(session))

    session.commit()

    assert r.llen("queue:orders") == 1


def test_bad_argument_fails_at_the_call(config: Config, session: Session) -> None:
    """Arguments are checked when enqueued, inside the transaction, not at commit."""
    with pytest.raises(JobArgumentError):
        enqueue_after_commit(session, ConfirmOrderJob, Order())


def test_failed_push_raises_from_commit_once(config: Config, session: Session, r) -> None:
    """Redis down at commit: commit() raises (the job is not silently lost), the rows are
    committed, and a later commit does not push it again."""
    down = Config(redis_url="redis://127.0.0.1:1/0")
    order_id = new_order(session)
    enqueue_after_commit(session, ConfirmOrderJob.set(config=down), order_id)

    with pytest.raises(RedisUnavailable):
        session.commit()
    down.close()

    assert session.get(Order, order_id) is not None
    session.commit()


def test_scoped_session_is_followed_to_its_session(config: Config, engine: Engine, r) -> None:
    """A scoped_session (Flask-SQLAlchemy's db.session) defers like the Session it wraps."""
    scoped = scoped_session(sessionmaker(engine))
    enqueue_after_commit(scoped, ConfirmOrderJob, new_order(scoped()))
    assert r.llen("queue:default") == 0

    scoped.commit()
    scoped.remove()

    assert r.llen("queue:default") == 1


def test_async_session_pushes_at_commit(config: Config, tmp_path: Path, r) -> None:
    """An AsyncSession (aiosqlite) works the same: nothing before commit, the job after."""
    pytest.importorskip("aiosqlite")
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    async def scenario() -> tuple[int, int]:
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'async.db'}")
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        async with AsyncSession(engine) as session:
            order = Order()
            session.add(order)
            await session.flush()
            order_id = order.id
            enqueue_after_commit(session, ConfirmOrderJob, order_id)
            before = r.llen("queue:default")
            await session.commit()
        await engine.dispose()
        return before, order_id

    before, order_id = asyncio.run(scenario())

    assert before == 0
    assert [job["args"] for job in queued(r)] == [[order_id]]
