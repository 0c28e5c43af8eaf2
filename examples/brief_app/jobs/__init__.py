"""The app's jobs (the brief's ``app/sidekiq``); importing this package registers them.

The brief's six patterns:

1. CalculateMetricsJob          simple and idempotent
2. SendNotificationJob          timeout, retry, discard of a refused address
3. SendWeeklyDigestJob          batching: DigestBatchJob per 100 users, perform_bulk
4. ProcessImportJob             a batch of ImportRowJob, then ImportCompletedJob (mail)
5. ExportDataJob                progress tracking
6. CleanupOldDataJob            recurring (config/kiq_schedule.yml)

and the jobs they use or the schedule names: DigestBatchJob, SendDailyDigestJob,
ImportRowJob, ImportCompletedJob, ImportFailedJob, GeocodingJob, CalculateAllMetricsJob,
ProcessPendingNotificationsJob, MailDeliveryJob.
Each is registered under its plain class name (``name="..."``), as a Rails app's
Sidekiq jobs are, so the brief's schedule file and a Ruby enqueuer work unchanged.
"""

from __future__ import annotations

from brief_app.jobs.calculate_all_metrics_job import CalculateAllMetricsJob
from brief_app.jobs.calculate_metrics_job import CalculateMetricsJob
from brief_app.jobs.cleanup_old_data_job import CleanupOldDataJob
from brief_app.jobs.digest_batch_job import DigestBatchJob
from brief_app.jobs.export_data_job import ExportDataJob
from brief_app.jobs.geocoding_job import GeocodingJob
from brief_app.jobs.mail_delivery_job import MailDeliveryJob
from brief_app.jobs.process_import_job import (
    ImportCompletedJob,
    ImportFailedJob,
    ImportRowJob,
    ProcessImportJob,
)
from brief_app.jobs.process_pending_notifications_job import ProcessPendingNotificationsJob
from brief_app.jobs.send_notification_job import SendNotificationJob
from brief_app.jobs.send_weekly_digest_job import SendDailyDigestJob, SendWeeklyDigestJob

__all__ = [
    "CalculateAllMetricsJob",
    "CalculateMetricsJob",
    "CleanupOldDataJob",
    "DigestBatchJob",
    "ExportDataJob",
    "GeocodingJob",
    "ImportCompletedJob",
    "ImportFailedJob",
    "ImportRowJob",
    "MailDeliveryJob",
    "ProcessImportJob",
    "ProcessPendingNotificationsJob",
    "SendDailyDigestJob",
    "SendNotificationJob",
    "SendWeeklyDigestJob",
]
