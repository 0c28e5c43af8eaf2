"""Test data builders (the brief's FactoryBot factories), each committing its rows."""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

from brief_app.models import Entity, Export, Import, Notification, Submission, User, utcnow
from sqlalchemy.orm import Session

_numbers = itertools.count(1)


def user(session: Session, **fields: Any) -> User:
    n = next(_numbers)
    row = User(**{"email": f"user{n}@example.com", "name": f"User {n}", **fields})
    session.add(row)
    session.commit()
    return row


def users(session: Session, count: int, **fields: Any) -> list[User]:
    return [user(session, **fields) for _ in range(count)]


def entity(session: Session, **fields: Any) -> Entity:
    n = next(_numbers)
    row = Entity(**{"name": f"Place {n}", "address": f"{n} Main Street", **fields})
    session.add(row)
    session.commit()
    return row


def submissions(session: Session, of: Entity, *ratings: int) -> list[Submission]:
    rows = [Submission(entity_id=of.id, rating=rating) for rating in ratings]
    session.add_all(rows)
    session.commit()
    return rows


def notification(session: Session, to: User, **fields: Any) -> Notification:
    row = Notification(
        **{"user_id": to.id, "kind": "new_submission", "data": {"entity_id": 1}, **fields}
    )
    session.add(row)
    session.commit()
    return row


def old_notification(session: Session, to: User, days: int, read: bool = True) -> Notification:
    when = utcnow() - timedelta(days=days)
    return notification(session, to, status="sent", created_at=when, read_at=when if read else None)


def import_(session: Session, by: User, csv: str, **fields: Any) -> Import:
    row = Import(**{"user_id": by.id, "filename": "places.csv", "content": csv, **fields})
    session.add(row)
    session.commit()
    return row


def export(session: Session, by: User, export_type: str = "entities", **fields: Any) -> Export:
    row = Export(**{"user_id": by.id, "export_type": export_type, **fields})
    session.add(row)
    session.commit()
    return row
