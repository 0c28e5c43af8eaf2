"""Seed data for the demo (the brief's ``db/seeds.rb``), and the numbers to report.

``seed()`` makes a small world in which every job has something to do, including the
cases the brief's specs name: an address the mail server refuses, a greylisted one,
a user with notifications off, users without the digest, invalid import rows, an
entity deleted after its job was enqueued, and data old enough to be cleaned up.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Select, func, insert, select
from sqlalchemy.orm import Session

from brief_app.models import (
    ActivityLog,
    DigestDelivery,
    Entity,
    Export,
    Import,
    Notification,
    Submission,
    User,
    WebSession,
    utcnow,
)

STREETS = ("Rue de Rivoli", "Baker Street", "Unter den Linden", "Via Roma", "Main Street")
KINDS = ("Café", "Bakery", "Bookshop", "Museum", "Park", "Cinema", "Bistro", "Gallery")


@dataclass
class Seeded:
    """Ids of what ``seed`` made, for the demo to enqueue jobs on."""

    owner_id: int = 0
    entity_ids: list[int] = field(default_factory=list)
    deleted_entity_id: int = 0
    notification_ids: list[int] = field(default_factory=list)
    import_id: int = 0
    export_id: int = 0
    submissions: int = 0
    users: int = 0


def seed(session: Session, *, places: int = 60, ratings: int = 40, rows: int = 40) -> Seeded:
    """Create users, ``places`` entities with ``ratings`` ratings each, an import of
    ``rows`` CSV rows (two of them invalid), notifications, an export request and old
    data; commit."""
    rng = random.Random(7)  # the same world on every run
    rows = max(rows, 10)  # rows 5 and 9 are made invalid below
    out = Seeded()
    users = _users(session)
    owner = users[0]
    out.owner_id, out.users = owner.id, len(users)
    made = [
        Entity(
            owner_id=owner.id,
            name=f"{rng.choice(KINDS)} {n}",
            address=f"{n} {rng.choice(STREETS)}",
        )
        for n in range(1, places + 2)
    ]
    session.add_all(made)
    session.flush()
    gone = made.pop()
    out.entity_ids = [e.id for e in made]
    session.execute(
        insert(Submission),
        [
            {
                "entity_id": e.id,
                "rating": rng.randint(1, 5),
                "content": "ok",
                "created_at": utcnow(),
            }
            for e in made
            for _ in range(ratings)
        ],
    )
    out.submissions = len(made) * ratings
    session.delete(gone)  # its CalculateMetricsJob must return quietly
    out.deleted_entity_id = gone.id
    out.notification_ids = _notifications(session, users)
    csv_rows = ["name,address,phone"] + [
        f"Shop {n},{n} Import Road,555-{n:04d}" for n in range(rows)
    ]
    csv_rows[5] = ",no name here,"  # two invalid rows: skipped and counted
    csv_rows[9] = "No Address,,"
    record = Import(user_id=owner.id, filename="places.csv", content="\n".join(csv_rows) + "\n")
    export = Export(user_id=owner.id, export_type="submissions")
    session.add_all([record, export])
    _old_data(session, users)
    session.commit()
    out.import_id, out.export_id = record.id, export.id
    return out


def _users(session: Session) -> list[User]:
    users = [
        User(email="owner@example.com", name="Olivia Owner", digest_enabled=True),
        *(
            User(email=f"user{n}@example.com", name=f"User {n}", digest_enabled=True)
            for n in range(1, 7)
        ),
        User(email="bounce@nowhere.invalid", name="Bad Address", digest_enabled=True),
        User(email="grey@greylist.example", name="Greylisted", digest_enabled=False),
        User(email="quiet@example.com", name="Quiet", notifications_enabled=False),
        User(email="nodigest@example.com", name="No Digest"),
    ]
    session.add_all(users)
    session.flush()
    return users


def _notifications(session: Session, users: list[User]) -> list[int]:
    by_email = {u.email: u for u in users}
    targets = [
        "owner@example.com",
        "user1@example.com",
        "grey@greylist.example",  # 451 first: retried, then sent
        "bounce@nowhere.invalid",  # 550: discarded
        "quiet@example.com",  # notifications off: skipped
    ]
    made = [
        Notification(user_id=by_email[t].id, kind="new_submission", data={"entity_id": 1})
        for t in targets
    ]
    session.add_all(made)
    session.flush()
    return [n.id for n in made]


def _old_data(session: Session, users: list[User]) -> None:
    now = utcnow()
    user_id = users[0].id
    for days in (1, 10, 40, 45, 60):
        session.add(
            WebSession(
                session_id=f"s{days}", user_id=user_id, updated_at=now - timedelta(days=days)
            )
        )
    for days in (10, 20, 100, 120, 200):
        session.add(
            Notification(
                user_id=user_id,
                kind="welcome",
                status="sent",
                read_at=now,
                created_at=now - timedelta(days=days),
            )
        )
    for days in (3, 9, 30):
        session.add(
            Export(
                user_id=user_id,
                export_type="entities",
                status="completed",
                created_at=now - timedelta(days=days),
            )
        )
    for days in (5, 190, 365):
        session.add(
            ActivityLog(user_id=user_id, action="login", created_at=now - timedelta(days=days))
        )


def report(session: Session, seeded: Seeded) -> dict[str, Any]:
    """What the jobs did to the seeded world, as plain numbers (the demo prints them)."""

    def count(query: Select[Any]) -> int:
        return session.scalar(select(func.count()).select_from(query.subquery())) or 0

    def statuses(model: type[Notification] | type[DigestDelivery], *where: Any) -> dict[str, int]:
        rows = session.execute(
            select(model.status, func.count()).where(*where).group_by(model.status)
        )
        return {str(status): int(n) for status, n in rows}

    record = session.get_one(Import, seeded.import_id)
    export = session.get_one(Export, seeded.export_id)
    return {
        "places": len(seeded.entity_ids),
        "scored": count(select(Entity.id).where(Entity.average_score.is_not(None))),
        "geocoded": count(select(Entity.id).where(Entity.latitude.is_not(None))),
        "notifications": statuses(Notification, Notification.id.in_(seeded.notification_ids)),
        "digests": statuses(DigestDelivery),
        "import": (record.status, record.processed_count, record.invalid_count),
        "export": (export.status, export.row_count, export.file_path),
        "old data": {
            "sessions": count(select(WebSession.id)),
            "notifications": count(
                select(Notification.id).where(Notification.read_at.is_not(None))
            ),
            "exports": count(select(Export.id).where(Export.export_type == "entities")),
            "activity logs": count(select(ActivityLog.id)),
        },
    }
