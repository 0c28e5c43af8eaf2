"""Submissions: a user rates an entity (the brief's Submissions::CreateService)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from brief_app.jobs.calculate_metrics_job import CalculateMetricsJob
from brief_app.models import Entity, Submission
from brief_app.services.notifications import NotificationService


def create(session: Session, entity_id: int, rating: int, content: str = "") -> Submission:
    """Save the rating, then recompute the entity's score and notify its owner.

    The jobs are enqueued after the commit: pushed inside the transaction, a fast
    worker could look for the row before it exists.
    """
    if not 1 <= rating <= 5:
        raise ValueError(f"rating {rating} must be between 1 and 5")
    entity = session.get_one(Entity, entity_id)
    submission = Submission(entity_id=entity_id, rating=rating, content=content)
    session.add(submission)
    session.commit()
    CalculateMetricsJob.perform_async(entity_id)
    if entity.owner_id is not None:
        NotificationService.notify_later(
            session, entity.owner_id, "new_submission", {"submission_id": submission.id}
        )
    return submission
