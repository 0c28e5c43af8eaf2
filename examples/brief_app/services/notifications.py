"""NotificationService: deliver one notification and record that it was sent.

The job is imported where it is enqueued: jobs call this module, so a top-level
import would be circular.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from brief_app.mailers import NotificationMailer
from brief_app.models import Notification, utcnow


class NotificationService:
    """Example::

    NotificationService.send(session, notification)  # mails it, marks it sent
    """

    @staticmethod
    def send(session: Session, notification: Notification) -> None:
        """Mail it now (raises brief_app.errors on failure), then mark it sent."""
        user = notification.user
        NotificationMailer.notify(
            user.email, user.name, notification.kind, notification.data
        ).deliver_now()
        notification.status = "sent"
        notification.sent_at = utcnow()
        session.commit()

    @staticmethod
    def notify_later(session: Session, user_id: int, kind: str, data: dict[str, object]) -> int:
        """Record a notification and enqueue its delivery once the row is committed."""
        notification = Notification(user_id=user_id, kind=kind, data=data)
        session.add(notification)
        session.commit()  # before the push: the job must find the row
        from brief_app.jobs.send_notification_job import SendNotificationJob

        SendNotificationJob.perform_async(notification.id)
        return notification.id
