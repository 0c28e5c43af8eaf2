"""SendWeeklyDigestJob and SendDailyDigestJob: the digests (the brief's pattern 3).

The brief's job mailed every user in one loop with ``sleep 0.1`` between mails: a
job that runs for hours with 10,000 users, and starts over from the first user when
retried. Here the job only reads the recipients' ids in batches of
``settings.digest_batch_size`` (100, the brief's ``find_each``) and enqueues one
DigestBatchJob per batch with one ``perform_bulk`` (Sidekiq's ``push_bulk``): many
small jobs that run in parallel, each retried on its own.
"""

from __future__ import annotations

from datetime import UTC, datetime

import kiq
from brief_app import db, settings
from brief_app.jobs.digest_batch_job import DigestBatchJob
from brief_app.queries import digest_recipients


class SendWeeklyDigestJob(kiq.Job, name="SendWeeklyDigestJob", queue="mailers", retry=2):
    kind = "weekly"

    def perform(self, period: str | None = None) -> None:
        """``period`` defaults to the current one; pass it to (re)send an older digest."""
        period = period or self.current_period()
        self.logger.info("starting %s digest sending for %s", self.kind, period)
        with db.session() as session:
            batches = list(
                digest_recipients.id_batches(session, settings.current().digest_batch_size)
            )
        DigestBatchJob.perform_bulk([[ids, self.kind, period] for ids in batches])
        users = sum(len(ids) for ids in batches)
        self.logger.info("enqueued %d batches for %d users", len(batches), users)

    @staticmethod
    def current_period() -> str:
        year, week, _ = datetime.now(UTC).isocalendar()
        return f"{year}-W{week:02d}"


class SendDailyDigestJob(SendWeeklyDigestJob, name="SendDailyDigestJob"):
    kind = "daily"

    @staticmethod
    def current_period() -> str:
        return datetime.now(UTC).date().isoformat()
