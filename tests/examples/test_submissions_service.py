"""services.submissions.create (the brief's Submissions::CreateService): what it enqueues."""

from __future__ import annotations

from datetime import timedelta
from types import ModuleType

from brief_app.jobs import CalculateMetricsJob, ProcessPendingNotificationsJob, SendNotificationJob
from brief_app.models import Notification, utcnow
from brief_app.services import submissions
from sqlalchemy.orm import Session

from tests.examples import factories


def test_enqueues_the_metrics_and_the_owner_notification(
    session: Session, kiq_fake: ModuleType
) -> None:
    """A rating enqueues CalculateMetricsJob for its entity and SendNotificationJob for the
    owner's new notification, whose row exists when the job is pushed."""
    owner = factories.user(session)
    entity = factories.entity(session, owner_id=owner.id)

    submission = submissions.create(session, entity.id, 5, "lovely")

    assert [job["args"] for job in CalculateMetricsJob.jobs] == [[entity.id]]
    ((notification_id,),) = [job["args"] for job in SendNotificationJob.jobs]
    row = session.get_one(Notification, notification_id)
    assert (row.user_id, row.data) == (owner.id, {"submission_id": submission.id})


def test_pending_sweep_re_enqueues_only_stale_notifications(
    session: Session, kiq_fake: ModuleType
) -> None:
    """ProcessPendingNotificationsJob pushes notifications pending for over 15 minutes."""
    user = factories.user(session)
    stale = factories.notification(session, user, created_at=utcnow() - timedelta(minutes=20))
    factories.notification(session, user)  # just made: its own job is on its way
    factories.notification(session, user, status="sent", created_at=utcnow() - timedelta(days=1))

    ProcessPendingNotificationsJob().perform()

    assert [job["args"] for job in SendNotificationJob.jobs] == [[stale.id]]
