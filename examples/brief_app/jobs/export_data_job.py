"""ExportDataJob: a CSV export with progress tracking (the brief's pattern 5).

* Ids: it takes the export's id. The brief's job took (user, type) and created the
  export row itself, so each retry made one more export; here the row is made when
  the user asks (``services.exports.request``) and the job fills it.
* Progress: ``self.progress(pct, message)`` after each page of rows, readable by jid
  (``from kiq.job import read_progress``) for a progress bar; the row's ``progress`` column is
  updated too, as the brief's was, for pages that only read the database.
* Idempotent: the file is written under a temporary name and renamed when complete,
  so a retry never sees half a file; a completed export is not redone.
* An unknown type is discarded (``kiq.Discard``): the brief's ArgumentError would
  have been retried three times for nothing.
"""

from __future__ import annotations

import csv
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.orm import Session

import kiq
from brief_app import db, settings
from brief_app.errors import UnknownExportType
from brief_app.mailers import ExportMailer
from brief_app.models import Export, utcnow
from brief_app.services import exports


class ExportDataJob(kiq.Job, name="ExportDataJob", queue="exports", retry=3):
    def perform(self, export_id: int) -> None:
        with db.session() as session:
            export = session.get(Export, export_id)
            if export is None:
                self.logger.info("export #%d no longer exists", export_id)
                return
            if export.status == "completed":
                self.logger.info("export #%d was already completed", export_id)
                return
            self.logger.info("export %s for user #%d", export.export_type, export.user_id)
            try:
                path = self._write(session, export)
            except UnknownExportType as exc:
                export.status, export.error_message = "failed", str(exc)
                session.commit()
                raise kiq.Discard(str(exc)) from exc
            except Exception as exc:
                session.rollback()
                export.status, export.error_message = "failed", str(exc)
                session.commit()
                raise
            export.status, export.progress, export.file_path = "completed", 100.0, str(path)
            export.completed_at = utcnow()
            session.commit()
        ExportMailer.deliver_later("ready", export_id)
        self.logger.info("export completed: %d records", export.row_count)

    def _write(self, session: Session, export: Export) -> Path:
        config = settings.current()
        fmt = exports.format_for(export.export_type)
        export.status, export.jid, export.progress = "processing", self.jid, 0.0
        session.commit()
        total = fmt.count(session, export.user_id)
        self.progress(0, f"0 of {total:,} records")
        folder = Path(config.export_dir)
        folder.mkdir(parents=True, exist_ok=True)
        day = datetime.now(UTC).date().isoformat()
        path = folder / f"export_{export.id}_{export.export_type}_{day}.csv"
        # One partial file per run: a duplicate run at the same time cannot clobber it.
        partial = path.with_name(f"{path.name}.{self.jid}.part")
        processed = 0
        with partial.open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(fmt.headers)
            for page in fmt.pages(session, export.user_id, config.export_page_size):
                writer.writerows(page)
                processed += len(page)
                percent = round(100 * processed / max(total, 1), 2)
                self.progress(percent, f"{processed:,} of {total:,} records")
                export.progress, export.row_count = percent, processed
                session.commit()
                time.sleep(config.export_page_pause)
        partial.replace(path)  # atomic: the file is complete or absent
        export.row_count = processed
        return path
