"""SQLAlchemy: push a job when the Session's transaction commits, never before.

A job enqueued before the commit can run before its row is visible, and one enqueued
in a transaction that rolls back points at a row that never existed. ::

    with Session(engine) as session, session.begin():
        order = Order(total=10)
        session.add(order)
        session.flush()                                   # order.id is known
        jid = enqueue_after_commit(session, ConfirmOrderJob, order.id)
    # committed: the job is in Redis now

The job is checked and given its jid at the call (see kiq.integrations.deferred) and
pushed from the Session's events: when the outermost transaction commits, the
pushes made in it (and in the savepoints of it that were released) are made, in
order; a rollback drops them, and rolling back a savepoint (``begin_nested()``)
drops only the pushes made inside it. Outside a transaction there is nothing to
wait for, and the job is pushed at once. An ``AsyncSession`` works too; its pushes
are made with the sync client when it commits.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

try:
    from sqlalchemy import event
    from sqlalchemy.orm import Session, SessionTransaction, scoped_session
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "kiq.integrations.sqlalchemy needs SQLAlchemy 2: pip install 'kiq[integrations]'"
    ) from exc

from kiq.integrations.deferred import DeferredPush, Enqueueable

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["enqueue_after_commit"]

PENDING: Final = "kiq.pending"  # session.info key: the pushes waiting for the commit
COMMITTED: Final = "kiq.committed"  # set by after_commit, read by after_transaction_end


@dataclass(frozen=True, slots=True)
class _Pending:
    transaction: SessionTransaction  # the innermost transaction when it was enqueued
    push: DeferredPush


def enqueue_after_commit(
    session: Session | scoped_session[Any] | AsyncSession, job: Enqueueable, *args: Any
) -> str:
    """Push the job once the session commits (at once if no transaction is open); its jid.

    ``session`` is a Session, a ``scoped_session`` (Flask-SQLAlchemy's ``db.session``:
    the current thread's Session is used) or an AsyncSession. ``job`` is a Job class, a
    ``@kiq.job`` function or ``MyJob.set(queue=...)``.
    """
    sync = _sync_session(session)
    deferred = DeferredPush.prepare(job, args)
    transaction = sync.get_nested_transaction() or sync.get_transaction()
    if transaction is None:
        deferred()
        return deferred.jid
    if not event.contains(sync, "after_transaction_end", _after_transaction_end):
        event.listen(sync, "after_commit", _after_commit)
        event.listen(sync, "after_transaction_end", _after_transaction_end)
    sync.info.setdefault(PENDING, []).append(_Pending(transaction, deferred))
    return deferred.jid


def _sync_session(session: Session | scoped_session[Any] | AsyncSession) -> Session:
    if isinstance(session, Session):
        return session
    if isinstance(session, scoped_session):
        current: Session = session()
        return current
    return session.sync_session


def _after_commit(session: Session) -> None:
    # Fired for the outermost commit and for each released savepoint alike; the
    # transaction_end that follows knows which one it was.
    session.info[COMMITTED] = True


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    committed = session.info.pop(COMMITTED, False)
    pending: list[_Pending] = session.info.get(PENDING, [])
    if not committed:
        pending[:] = [p for p in pending if transaction not in _lineage(p.transaction)]
    elif transaction.parent is None:
        # Taken off the session before pushing: a push that fails (Redis down) raises
        # from commit() and must not be made again by a later commit.
        ready, pending[:] = list(pending), []
        for entry in ready:
            entry.push()


def _lineage(transaction: SessionTransaction | None) -> Iterator[SessionTransaction]:
    """The transaction and its parents, innermost first."""
    while transaction is not None:
        yield transaction
        transaction = transaction.parent
