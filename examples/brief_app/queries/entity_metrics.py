"""EntityMetrics: an entity's average rating and number of ratings."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from brief_app.models import Entity, Submission


def for_entity(session: Session, entity_id: int) -> tuple[float, int]:
    """(average rating rounded to 0.1, count); (0.0, 0) with no ratings, as the brief."""
    average, count = session.execute(
        select(func.avg(Submission.rating), func.count(Submission.id)).where(
            Submission.entity_id == entity_id
        )
    ).one()
    return round(float(average or 0.0), 1), int(count)


def all_entity_ids(session: Session) -> list[int]:
    return list(session.scalars(select(Entity.id).order_by(Entity.id)))
