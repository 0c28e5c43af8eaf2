"""ExportDataJob: a CSV export with progress tracking that resumes where it stopped
(the brief's pattern 5, as a ``kiq.IterableJob``: issue 18).

* Ids: it takes the export's id. The brief's job took (user, type) and created the
  export row itself, so each retry made one more export; here the row is made when
  the user asks (``services.exports.request``) and the job fills it.
* Resumes: each page of rows is one iteration; the cursor is where the page starts
  (the last id written, the file's size, the row count). A deploy (TERM), a quiet
  process or an OOM kill no longer restarts the export from row one: the next run
  cuts the partial file back to the cursor's size and writes on from there, so a page
  written after the last flush is written again, never twice in the file.
* Progress: ``self.progress(pct, message)`` after each page, readable by jid (``from
  kiq.job import read_progress``) for a progress bar; the row's ``progress`` column is
  updated too, as the brief's was, for pages that only read the database.
* Idempotent: the file is written under a temporary name and renamed when complete,
  so a retry never sees half a file; a completed export is not redone.
* Cancel: ``kiq.api.cancel(jid)`` (or the Web UI's button) stops it at the next page;
  the export is marked cancelled and its partial file removed.
* An unknown type is discarded (``kiq.Discard``): the brief's ArgumentError would
  have been retried three times for nothing.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy.orm import Session

import kiq
from brief_app import db, settings
from brief_app.errors import UnknownExportType
from brief_app.mailers import ExportMailer
from brief_app.models import Export, utcnow
from brief_app.services import exports

Cursor = dict[str, int]  # {"after": last id written, "offset": file bytes, "rows": count}


class ExportDataJob(kiq.IterableJob, name="ExportDataJob", queue="exports", retry=3):
    _session: Session | None = None
    _file: BinaryIO | None = None

    def build_enumerator(self, export_id: int, *, cursor: Cursor | None) -> Any:
        session = self._session = db.session()
        export = session.get(Export, export_id)
        if export is None:
            self.logger.info("export #%d no longer exists", export_id)
            return None
        if export.status == "completed":
            self.logger.info("export #%d was already completed", export_id)
            return None
        try:
            fmt = exports.format_for(export.export_type)
        except UnknownExportType as exc:
            export.status, export.error_message = "failed", str(exc)
            session.commit()
            raise kiq.Discard(str(exc)) from exc
        start = cursor or {"after": 0, "offset": 0, "rows": 0}
        self.logger.info(
            "export %s for user #%d from row %d", export.export_type, export.user_id, start["rows"]
        )
        export.status, export.jid = "processing", self.jid
        session.commit()
        self._export, self._export_id = export, export.id
        self._total = fmt.count(session, export.user_id)
        self._rows = start["rows"]
        self._file = self._open(export, fmt.headers, start)
        self.progress(self._percent(), f"{self._rows:,} of {self._total:,} records")
        size = settings.current().export_page_size
        return self._pages(fmt.pages(session, export.user_id, size, start["after"]), start)

    def _pages(
        self, pages: Iterator[Sequence[Any]], start: Cursor
    ) -> Iterator[tuple[Sequence[Any], Cursor]]:
        """Each page with the cursor of its start: rebuilt from it, the export writes
        this page again over whatever of it the file already holds."""
        after = start["after"]
        for page in pages:
            assert self._file is not None
            yield page, {"after": after, "offset": self._file.tell(), "rows": self._rows}
            after = page[-1][0]

    def each_iteration(self, page: Sequence[Any], export_id: int) -> None:
        assert self._file is not None
        assert self._session is not None
        self._file.write(_csv(page))
        self._file.flush()
        self._rows += len(page)
        self.progress(self._percent(), f"{self._rows:,} of {self._total:,} records")
        self._export.progress, self._export.row_count = self._percent(), self._rows
        self._session.commit()
        time.sleep(settings.current().export_page_pause)

    def around_iteration(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except Exception as exc:  # retried: the next run resumes at this page
            assert self._session is not None
            self._session.rollback()
            self._export.status, self._export.error_message = "failed", str(exc)
            self._session.commit()
            raise

    def on_cancel(self) -> None:
        self.logger.info("export #%d cancelled at row %d", self._export_id, self._rows)
        if self._file is not None:
            self._file.close()
            Path(self._file.name).unlink(missing_ok=True)
            self._file = None
        assert self._session is not None
        self._export.status = "cancelled"
        self._session.commit()

    def on_stop(self) -> None:
        """After every run (completed, cancelled or interrupted), before ``on_complete``
        (Sidekiq's order): let go of the file and the session; an interrupted run's file
        stays, for the next run to go on with."""
        if self._file is not None and not self._file.closed:
            self._file.close()
        if self._session is not None:
            self._session.close()

    def on_complete(self) -> None:
        if self.cancelled():
            return  # Sidekiq calls on_complete after on_cancel too
        assert self._file is not None
        partial = Path(self._file.name)
        path = partial.with_name(partial.name.split(".csv.", 1)[0] + ".csv")
        partial.replace(path)  # atomic: the file is complete or absent
        with db.session() as session:
            export = session.get_one(Export, self._export_id)
            export.status, export.progress, export.file_path = "completed", 100.0, str(path)
            export.row_count, export.completed_at = self._rows, utcnow()
            session.commit()
        self.progress(100, f"{self._rows:,} of {self._total:,} records")
        ExportMailer.deliver_later("ready", self._export_id)
        self.logger.info("export completed: %d records", self._rows)

    def _percent(self) -> float:
        return round(100 * self._rows / max(self._total, 1), 2)

    def _open(self, export: Export, headers: Sequence[str], start: Cursor) -> BinaryIO:
        folder = Path(settings.current().export_dir)
        folder.mkdir(parents=True, exist_ok=True)
        day = datetime.now(UTC).date().isoformat()
        path = folder / f"export_{export.id}_{export.export_type}_{day}.csv"
        # One partial file per job (its jid): a duplicate job cannot clobber it, and
        # every run of this one (same jid) goes on with it.
        partial = path.with_name(f"{path.name}.{self.jid}.part")
        if start["offset"] == 0 or not partial.exists():
            file = partial.open("wb")
            file.write(_csv([headers]))
            return file
        file = partial.open("r+b")
        file.truncate(start["offset"])  # what a killed run wrote after its last flush
        file.seek(start["offset"])
        return file


def _csv(rows: Sequence[Sequence[Any]]) -> bytes:
    text = io.StringIO()
    csv.writer(text).writerows(rows)
    return text.getvalue().encode()
