"""ProcessImportJob: a CSV import with cascading enqueue (the brief's pattern 4).

1. Mark the import processing; create one entity per valid row. Rows are keyed by
   (import, row number), so a retry reuses what an earlier try created.
2. Enqueue the follow-up work for every entity, one ``perform_bulk`` per job class
   (geocoding, metrics): small jobs that run in parallel instead of one long one.
3. Only then mark the import completed and mail the user.

The order of 2 and 3 matters: a crash between them repeats the pushes on retry, and
the pushed jobs are idempotent, so that is harmless; marking first could lose them.
On an error the import is marked failed, the user is told, and the job raises so that
it is retried (3 times).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

import kiq
from brief_app import db
from brief_app.jobs.calculate_metrics_job import CalculateMetricsJob
from brief_app.jobs.geocoding_job import GeocodingJob
from brief_app.mailers import ImportMailer
from brief_app.models import Import, utcnow
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
            record.status, record.started_at = "processing", utcnow()
            session.commit()
            try:
                entity_ids, invalid = self._create_entities(session, record)
                GeocodingJob.perform_bulk([[entity_id] for entity_id in entity_ids])
                CalculateMetricsJob.perform_bulk([[entity_id] for entity_id in entity_ids])
                record.status, record.completed_at = "completed", utcnow()
                record.processed_count, record.invalid_count = len(entity_ids), invalid
                record.error_message = None
                session.commit()
            except Exception as exc:
                session.rollback()
                record.status, record.error_message = "failed", str(exc)
                session.commit()
                ImportMailer.deliver_later("failed", import_id)
                raise
        ImportMailer.deliver_later("completed", import_id)
        self.logger.info(
            "import completed: %d entities created, %d rows invalid", len(entity_ids), invalid
        )

    def _create_entities(self, session: Session, record: Import) -> tuple[list[int], int]:
        ids: list[int] = []
        invalid = 0
        for row, data in enumerate(imports.parse(record.content), start=1):
            try:
                ids.append(imports.create_entity(session, record, row, data).id)
            except imports.InvalidRow as exc:
                self.logger.warning("invalid entity: %s", exc)
                invalid += 1
        session.commit()
        return ids, invalid
