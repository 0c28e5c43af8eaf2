"""Exports: the CSV formats a user can export, and the request that starts one.

Each format says how to count its rows, which header to write, and how to read its
rows a page at a time (by id, the brief's ``find_each``), so a large export never
holds every row in memory and the export job can report progress between pages.

The job is imported where it is enqueued: jobs call this module, so a top-level
import would be circular.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from brief_app.errors import UnknownExportType
from brief_app.models import Entity, Export, Submission

Row = Sequence[Any]


@dataclass(frozen=True, slots=True)
class ExportFormat:
    headers: tuple[str, ...]
    rows: Select[*tuple[Any, ...]]  # the columns to write, id first; filtered by owner
    owner: Any  # the column holding the owning user's id

    def count(self, session: Session, user_id: int) -> int:
        query = self.rows.where(self.owner == user_id).order_by(None)
        return session.scalar(select(func.count()).select_from(query.subquery())) or 0

    def pages(
        self, session: Session, user_id: int, size: int, after: int = 0
    ) -> Iterator[Sequence[Row]]:
        """Rows in id order after id ``after``, ``size`` at a time; each page is a fresh
        keyset query (so an export resumed from a cursor reads on from there)."""
        last = after
        id_column = self.rows.selected_columns[0]
        while True:
            query = self.rows.where(self.owner == user_id, id_column > last)
            page = list(session.execute(query.order_by(id_column).limit(size)).all())
            if not page:
                return
            yield page
            last = page[-1][0]


FORMATS = {
    "entities": ExportFormat(
        headers=("ID", "Name", "Address", "Phone", "Created At"),
        rows=select(Entity.id, Entity.name, Entity.address, Entity.phone, Entity.created_at),
        owner=Entity.owner_id,
    ),
    "submissions": ExportFormat(
        headers=("ID", "Entity", "Rating", "Content", "Date"),
        rows=select(
            Submission.id, Entity.name, Submission.rating, Submission.content, Submission.created_at
        ).join(Entity),
        owner=Entity.owner_id,
    ),
}


def format_for(export_type: str) -> ExportFormat:
    try:
        return FORMATS[export_type]
    except KeyError:
        raise UnknownExportType(
            f"unknown export type {export_type!r}; use one of {sorted(FORMATS)}"
        ) from None


def request(session: Session, user_id: int, export_type: str) -> int:
    """Record an export and enqueue the job that writes it; returns the export's id."""
    format_for(export_type)  # refuse an unknown type here, where the user can be told
    export = Export(user_id=user_id, export_type=export_type)
    session.add(export)
    session.commit()  # before the push: the job must find the row
    from brief_app.jobs.export_data_job import ExportDataJob

    ExportDataJob.perform_async(export.id)
    return export.id
