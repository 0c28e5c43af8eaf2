"""OldData: rows past their retention, for CleanupOldDataJob.

Each function deletes in the database and returns how many rows went; exports also
lose their files (the brief's ``export.file.purge``).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from brief_app.models import ActivityLog, Export, Notification, WebSession, utcnow

log = logging.getLogger(__name__)

SESSIONS = timedelta(days=30)
READ_NOTIFICATIONS = timedelta(days=90)
COMPLETED_EXPORTS = timedelta(days=7)
ACTIVITY_LOGS = timedelta(days=180)


def delete_sessions(session: Session) -> int:
    result = session.execute(delete(WebSession).where(WebSession.updated_at < utcnow() - SESSIONS))
    return int(result.rowcount)  # type: ignore[attr-defined]  # a CursorResult for DELETE


def delete_read_notifications(session: Session) -> int:
    result = session.execute(
        delete(Notification).where(
            Notification.read_at.is_not(None),
            Notification.created_at < utcnow() - READ_NOTIFICATIONS,
        )
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def delete_completed_exports(session: Session) -> int:
    exports = session.scalars(
        select(Export).where(
            Export.status == "completed", Export.created_at < utcnow() - COMPLETED_EXPORTS
        )
    ).all()
    for export in exports:
        if export.file_path:
            # Already gone is fine: a cleanup that was interrupted and is run again.
            Path(export.file_path).unlink(missing_ok=True)
        session.delete(export)
    return len(exports)


def delete_activity_logs(session: Session) -> int:
    result = session.execute(
        delete(ActivityLog).where(ActivityLog.created_at < utcnow() - ACTIVITY_LOGS)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
