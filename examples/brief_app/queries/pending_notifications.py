"""PendingNotifications: notifications still unsent long after they were made."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from brief_app.models import Notification, utcnow


def stale_ids(session: Session, older_than: timedelta) -> list[int]:
    """Pending notifications created more than ``older_than`` ago, oldest first."""
    return list(
        session.scalars(
            select(Notification.id)
            .where(
                Notification.status == "pending", Notification.created_at < utcnow() - older_than
            )
            .order_by(Notification.id)
        )
    )
