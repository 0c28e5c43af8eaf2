"""SendWeeklyDigestJob and DigestBatchJob (the brief's send_weekly_digest_job_spec.rb)."""

from __future__ import annotations

from types import ModuleType

import pytest
from brief_app.errors import TemporaryDeliveryError
from brief_app.jobs import DigestBatchJob, SendDailyDigestJob, SendWeeklyDigestJob
from brief_app.models import DigestDelivery
from sqlalchemy import select
from sqlalchemy.orm import Session

from kiq.launcher import Launcher
from tests.examples import factories
from tests.examples.conftest import App
from tests.support.wait import wait_until

WEEK = "2026-W02"


def test_enqueues_one_batch_job_per_100_users(session: Session, kiq_fake: ModuleType) -> None:
    """250 digest users become 3 DigestBatchJobs of 100, 100 and 50 ids, pushed in bulk."""
    wanted = [u.id for u in factories.users(session, 250, digest_enabled=True)]
    factories.users(session, 2, digest_enabled=False)

    SendWeeklyDigestJob().perform(WEEK)

    batches = [job["args"] for job in DigestBatchJob.jobs]
    assert [len(ids) for ids, _, _ in batches] == [100, 100, 50]
    assert [i for ids, _, _ in batches for i in ids] == wanted
    assert {(kind, period) for _, kind, period in batches} == {("weekly", WEEK)}


def test_daily_digest_names_the_day(session: Session, kiq_fake: ModuleType) -> None:
    """The daily digest's batches carry kind "daily" and today's date as the period."""
    factories.user(session, digest_enabled=True)

    SendDailyDigestJob().perform()

    ((_, kind, period),) = [job["args"] for job in DigestBatchJob.jobs]
    assert kind == "daily"
    assert period == SendDailyDigestJob.current_period()
    assert DigestBatchJob.jobs[0]["queue"] == "mailers"


def test_sends_email_to_users_with_digest_enabled(session: Session, app: App) -> None:
    """Three subscribed users in a batch get one digest each; unsubscribed ones none."""
    subscribed = factories.users(session, 3, digest_enabled=True)
    others = factories.users(session, 2, digest_enabled=False)

    DigestBatchJob().perform([u.id for u in subscribed + others], "weekly", WEEK)

    assert sorted(app.mailbox.recipients()) == sorted(u.email for u in subscribed)


def test_a_refused_address_does_not_stop_the_others(session: Session, app: App) -> None:
    """With the first user's address refused, the other two are still mailed; no raise."""
    bad = factories.user(session, email="bounce@nowhere.invalid", digest_enabled=True)
    good = factories.users(session, 2, digest_enabled=True)

    DigestBatchJob().perform([bad.id, *(u.id for u in good)], "weekly", WEEK)

    assert sorted(app.mailbox.recipients()) == sorted(u.email for u in good)
    failed = session.scalars(select(DigestDelivery).where(DigestDelivery.status == "failed")).all()
    assert [d.user_id for d in failed] == [bad.id]


def test_is_idempotent(session: Session, app: App) -> None:
    """A batch run twice (a retry) mails each user once."""
    ids = [u.id for u in factories.users(session, 3, digest_enabled=True)]

    DigestBatchJob().perform(ids, "weekly", WEEK)
    DigestBatchJob().perform(ids, "weekly", WEEK)

    assert len(app.mailbox.messages) == 3


def test_a_temporary_failure_retries_only_the_unsent_users(session: Session, app: App) -> None:
    """A greylisted user makes the batch raise after mailing the rest; the retry mails only them."""
    grey = factories.user(session, email="grey@greylist.example", digest_enabled=True)
    ids = [grey.id, *(u.id for u in factories.users(session, 2, digest_enabled=True))]

    with pytest.raises(TemporaryDeliveryError, match=f"users \\[{grey.id}\\]"):
        DigestBatchJob().perform(ids, "weekly", WEEK)
    assert len(app.mailbox.messages) == 2

    DigestBatchJob().perform(ids, "weekly", WEEK)

    assert len(app.mailbox.messages) == 3
    assert app.mailbox.messages[-1]["To"] == grey.email


def test_weekly_digest_through_a_worker(session: Session, app: App, worker: Launcher) -> None:
    """Enqueued for real, the weekly digest fans out and every subscriber is mailed."""
    subscribed = factories.users(session, 5, digest_enabled=True)

    SendWeeklyDigestJob.perform_async()

    wait_until(lambda: len(app.mailbox.messages) == 5, timeout=15)
    assert sorted(app.mailbox.recipients()) == sorted(u.email for u in subscribed)
