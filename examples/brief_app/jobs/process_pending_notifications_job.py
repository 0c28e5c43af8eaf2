"""ProcessPendingNotificationsJob: resend what is stuck (every 15 minutes, scheduled).

A notification's SendNotificationJob is pushed when the row is made; one still
pending 15 minutes later lost its job (discarded, dead, or pushed while Redis was
unreachable). This sweep pushes them again with one ``perform_bulk``; a duplicate
push is harmless because SendNotificationJob skips notifications no longer pending.
"""

from __future__ import annotations

from datetime import timedelta

import kiq
from brief_app import db
from brief_app.jobs.send_notification_job import SendNotificationJob
from brief_app.queries import pending_notifications

STALE_AFTER = timedelta(minutes=15)


class ProcessPendingNotificationsJob(
    kiq.Job, name="ProcessPendingNotificationsJob", queue="notifications", retry=1
):
    def perform(self) -> None:
        with db.session() as session:
            ids = pending_notifications.stale_ids(session, STALE_AFTER)
        SendNotificationJob.perform_bulk([[notification_id] for notification_id in ids])
        self.logger.info("re-enqueued %d pending notifications", len(ids))
