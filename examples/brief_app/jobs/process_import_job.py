"""ProcessImportJob: a CSV import as a batch of row jobs, then a summary mail when the
batch succeeds (the brief's pattern 4, on kiq's batches: docs/workflows.md).

1. Mark the import processing and open its batch, ``import-<id>``: one ImportRowJob
   per CSV row, with ``on_success`` ImportCompletedJob and ``on_death`` ImportFailedJob.
2. Each ImportRowJob creates its entity (keyed by import and row number, so a re-run
   reuses it) and enqueues its follow-up work (geocoding, metrics); an invalid row is
   counted as skipped, not failed.
3. When every row job has succeeded (retries included), the batch pushes
   ImportCompletedJob exactly once: it marks the import completed and mails the user
   the summary. A row that still fails after its retries dies: ImportFailedJob marks
   the import failed and tells the user.

The batch is named after the import and opened with a fixed token, so a re-run of
ProcessImportJob (a crash mid-way) finishes the same batch: its rows are idempotent,
and the summary is still sent once.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

import kiq
from brief_app import db
from brief_app.jobs.calculate_metrics_job import CalculateMetricsJob
from brief_app.jobs.geocoding_job import GeocodingJob
from brief_app.mailers import ImportMailer
from brief_app.models import Entity, Import, utcnow
from brief_app.services import imports


class ProcessImportJob(kiq.Job, name="ProcessImportJob", queue="imports", retry=3):
    def perform(self, import_id: int) -> None:
        with db.session() as session:
            record = session.get(Import, import_id)
            if record is None:
                self.logger.info("import #%d no longer exists", import_id)
                return
            if record.status == "completed":
                self.logger.info("import #%d was already completed", import_id)
                return
            self.logger.info("processing import #%d", import_id)
            rows = imports.parse(record.content)
            record.status, record.started_at = "processing", utcnow()
            session.commit()
        batch = kiq.Batch(
            f"import-{import_id}",
            create=True,
            token=f"import-{import_id}",
            description=f"Import #{import_id}: {len(rows)} rows",
            on_success=(ImportCompletedJob, {"import_id": import_id, "rows": len(rows)}),
            on_death=(ImportFailedJob, {"import_id": import_id}),
        )
        with batch.jobs():
            ImportRowJob.perform_bulk(
                [[import_id, row, data] for row, data in enumerate(rows, start=1)]
            )
        self.logger.info("import #%d: %d row jobs in batch %s", import_id, len(rows), batch.bid)


class ImportRowJob(kiq.Job, name="ImportRowJob", queue="imports", retry=3):
    """One CSV row: its entity, then the entity's follow-up jobs."""

    def perform(self, import_id: int, row: int, data: dict[str, str]) -> None:
        with db.session() as session:
            record = session.get(Import, import_id)
            if record is None:
                return
            try:
                entity_id = imports.create_entity(session, record, row, data).id
            except imports.InvalidRow as exc:
                self.logger.warning("invalid entity: %s", exc)
                return
            session.commit()
        GeocodingJob.perform_async(entity_id)
        CalculateMetricsJob.perform_async(entity_id)


class ImportCompletedJob(kiq.Job, name="ImportCompletedJob", queue="imports", retry=3):
    """The batch's success callback: the import is done; mail the summary."""

    def perform(self, bid: str, options: dict[str, Any]) -> None:
        import_id, rows = int(options["import_id"]), int(options["rows"])
        with db.session() as session:
            record = session.get(Import, import_id)
            if record is None or record.status == "completed":
                return  # a re-run of this callback: the mail went out already
            created = session.scalar(select(func.count()).where(Entity.import_id == import_id)) or 0
            record.status, record.completed_at = "completed", utcnow()
            record.processed_count, record.invalid_count = created, rows - created
            record.error_message = None
            session.commit()
        ImportMailer.deliver_later("completed", import_id)
        self.logger.info(
            "import completed: %d entities created, %d rows invalid", created, rows - created
        )


class ImportFailedJob(kiq.Job, name="ImportFailedJob", queue="imports", retry=3):
    """The batch's death callback: a row failed for good; the user is told."""

    def perform(self, bid: str, options: dict[str, Any]) -> None:
        import_id = int(options["import_id"])
        failures = kiq.BatchStatus(bid).failure_info()
        message = failures[0].get("error_message", "a row failed") if failures else "a row failed"
        with db.session() as session:
            record = session.get(Import, import_id)
            if record is None or record.status == "failed":
                return
            record.status, record.error_message = "failed", message
            session.commit()
        ImportMailer.deliver_later("failed", import_id)
