"""CleanupOldDataJob: delete data past its retention (the brief's pattern 6, recurring).

Scheduled daily at 02:00 by ``config/kiq_schedule.yml``. Idempotent: a second run
finds nothing old left. Each kind of data is deleted in its own transaction, so a
failure in one leaves the others done, and the single retry starts where it matters.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session

import kiq
from brief_app import db
from brief_app.queries import old_data

STEPS: dict[str, Callable[[Session], int]] = {
    "sessions": old_data.delete_sessions,
    "notifications": old_data.delete_read_notifications,
    "exports": old_data.delete_completed_exports,
    "logs": old_data.delete_activity_logs,
}


class CleanupOldDataJob(kiq.Job, name="CleanupOldDataJob", queue="maintenance", retry=1):
    def perform(self) -> dict[str, int]:
        self.logger.info("starting old data cleanup")
        deleted: dict[str, int] = {}
        for kind, step in STEPS.items():
            with db.session() as session, session.begin():
                deleted[kind] = step(session)
            self.logger.info("%s deleted: %d", kind.capitalize(), deleted[kind])
        self.logger.info("cleanup completed: %s", deleted)
        return deleted
