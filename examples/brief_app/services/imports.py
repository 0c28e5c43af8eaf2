"""Imports: accept an uploaded CSV, and turn its rows into entities.

``create_entity`` is what makes ProcessImportJob idempotent: an entity is keyed by
(import, row number), so a retried import finds the rows it created last time instead
of creating them again.

The job is imported where it is enqueued: jobs call this module, so a top-level
import would be circular.
"""

from __future__ import annotations

import csv
import io
import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from brief_app.models import Entity, Import

log = logging.getLogger(__name__)

REQUIRED = ("name", "address")


def upload(session: Session, user_id: int, filename: str, content: str) -> int:
    """Store an uploaded CSV and enqueue its processing; returns the import's id."""
    record = Import(user_id=user_id, filename=filename, content=content)
    session.add(record)
    session.commit()  # before the push: the job must find the row
    from brief_app.jobs.process_import_job import ProcessImportJob

    ProcessImportJob.perform_async(record.id)
    return record.id


def parse(content: str) -> list[dict[str, str]]:
    """The CSV's rows as dicts keyed by its header line (the brief's ``CSV.parse``)."""
    return [
        {key.strip().lower(): (value or "").strip() for key, value in row.items() if key}
        for row in csv.DictReader(io.StringIO(content))
    ]


class InvalidRow(ValueError):
    """A CSV row that cannot become an entity (the brief's RecordInvalid)."""


def create_entity(session: Session, record: Import, row: int, data: dict[str, str]) -> Entity:
    """The entity for row ``row`` of ``record``: the one already made, or a new one."""
    existing = session.scalar(
        select(Entity).where(Entity.import_id == record.id, Entity.import_row == row)
    )
    if existing is not None:
        return existing
    missing = [field for field in REQUIRED if not data.get(field)]
    if missing:
        raise InvalidRow(f"row {row}: {', '.join(missing)} missing")
    entity = Entity(
        owner_id=record.user_id,
        name=data["name"],
        address=data["address"],
        phone=data.get("phone") or None,
        import_id=record.id,
        import_row=row,
    )
    session.add(entity)
    session.flush()
    return entity
