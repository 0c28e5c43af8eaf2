"""CleanupOldDataJob (the brief's cleanup_old_data_job_spec.rb: a recurring job)."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

import pytest
from brief_app.jobs import CleanupOldDataJob
from brief_app.models import ActivityLog, Export, Notification, WebSession, utcnow
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tests.examples import factories


def count(session: Session, model: type[object]) -> int:
    session.expire_all()
    return session.scalar(select(func.count()).select_from(model)) or 0


def test_deletes_old_read_notifications(session: Session) -> None:
    """Five read notifications 100 days old go; three 10 days old stay."""
    user = factories.user(session)
    old = [factories.old_notification(session, user, days=100) for _ in range(5)]
    recent = [factories.old_notification(session, user, days=10) for _ in range(3)]

    CleanupOldDataJob().perform()

    remaining = session.scalars(select(Notification.id)).all()
    assert sorted(remaining) == sorted(n.id for n in recent)
    assert not set(remaining) & {n.id for n in old}


def test_keeps_unread_notifications(session: Session) -> None:
    """An old notification never read is not deleted (the brief's ``Notification.read``)."""
    factories.old_notification(session, factories.user(session), days=100, read=False)

    CleanupOldDataJob().perform()

    assert count(session, Notification) == 1


def test_deletes_old_sessions_exports_and_logs(session: Session, tmp_path: Path) -> None:
    """Sessions past 30 days, completed exports past 7 (and their files), logs past 180."""
    user = factories.user(session)
    now = utcnow()
    session.add_all(
        [
            WebSession(session_id="old", user_id=user.id, updated_at=now - timedelta(days=31)),
            WebSession(session_id="new", user_id=user.id, updated_at=now - timedelta(days=1)),
            ActivityLog(action="login", created_at=now - timedelta(days=181)),
            ActivityLog(action="login", created_at=now - timedelta(days=1)),
        ]
    )
    session.commit()
    old_file = tmp_path / "old.csv"
    old_file.write_text("ID\n")
    factories.export(
        session,
        user,
        status="completed",
        file_path=str(old_file),
        created_at=now - timedelta(days=8),
    )
    kept = factories.export(session, user, status="completed", created_at=now - timedelta(days=2))

    deleted = CleanupOldDataJob().perform()

    assert deleted == {"sessions": 1, "notifications": 0, "exports": 1, "logs": 1}
    assert not old_file.exists()
    session.expire_all()
    assert [e.id for e in session.scalars(select(Export))] == [kept.id]


def test_is_idempotent(session: Session) -> None:
    """A second run finds nothing left to delete."""
    factories.old_notification(session, factories.user(session), days=100)
    CleanupOldDataJob().perform()

    assert CleanupOldDataJob().perform() == dict.fromkeys(
        ("sessions", "notifications", "exports", "logs"), 0
    )


def test_logs_the_results(session: Session, caplog: pytest.LogCaptureFixture) -> None:
    """The job logs each kind's count and a summary at info level, under its class."""
    with caplog.at_level(logging.INFO):
        CleanupOldDataJob().perform()

    lines = [r.getMessage() for r in caplog.records if r.name == "kiq.job.CleanupOldDataJob"]
    assert "Notifications deleted: 0" in lines
    assert lines[-1].startswith("cleanup completed:")
