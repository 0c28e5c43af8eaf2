"""SendNotificationJob (the brief's send_notification_job_spec.rb): timeout, retry, discard."""

from __future__ import annotations

import logging
from types import ModuleType

import pytest
import redis
from brief_app import settings
from brief_app.errors import DeliveryError, InvalidRecipientError, TemporaryDeliveryError
from brief_app.jobs import SendNotificationJob
from brief_app.models import Notification
from sqlalchemy.orm import Session

import kiq
from kiq.launcher import Launcher
from tests.examples import factories
from tests.examples.conftest import App
from tests.support.wait import wait_until


def status(session: Session, notification_id: int) -> str:
    session.expire_all()
    row = session.get(Notification, notification_id)
    assert row is not None
    return row.status


def test_sends_the_notification(session: Session, app: App) -> None:
    """The user gets one mail through the SMTP server, and the row is marked sent."""
    user = factories.user(session, email="ann@example.com")
    notification = factories.notification(session, user, data={"entity_id": 1})

    SendNotificationJob().perform(notification.id)

    (mail,) = app.mailbox.to("ann@example.com")
    assert mail["Subject"] == "Someone rated your place"
    assert "entity_id: 1" in mail.get_content()
    assert status(session, notification.id) == "sent"


def test_does_nothing_when_notifications_are_disabled(session: Session, app: App) -> None:
    """A user with notifications off gets no mail; the notification is marked skipped."""
    user = factories.user(session, notifications_enabled=False)
    notification = factories.notification(session, user)

    SendNotificationJob().perform(notification.id)

    assert app.mailbox.messages == []
    assert status(session, notification.id) == "skipped"


def test_is_idempotent(session: Session, app: App) -> None:
    """Run twice (a retry after the send), the notification is mailed once."""
    notification = factories.notification(session, factories.user(session))

    SendNotificationJob().perform(notification.id)
    SendNotificationJob().perform(notification.id)

    assert len(app.mailbox.messages) == 1


def test_deleted_notification_returns_quietly(session: Session, app: App) -> None:
    """A job whose notification is gone raises nothing and sends nothing."""
    SendNotificationJob().perform(12345)

    assert app.mailbox.messages == []


def test_service_failure_raises_so_the_job_is_retried(session: Session, app: App) -> None:
    """With the mail server down the job raises DeliveryError, which kiq retries."""
    notification = factories.notification(session, factories.user(session))
    app.mail_server.stop()

    with pytest.raises(DeliveryError):
        SendNotificationJob().perform(notification.id)

    assert status(session, notification.id) == "pending"


def test_invalid_recipient_raises_an_error_the_job_discards(session: Session) -> None:
    """A refused address raises InvalidRecipientError, listed in the job's discard_on."""
    user = factories.user(session, email="bounce@nowhere.invalid")
    notification = factories.notification(session, user)

    with pytest.raises(InvalidRecipientError):
        SendNotificationJob().perform(notification.id)

    assert status(session, notification.id) == "failed"
    assert InvalidRecipientError in SendNotificationJob.discard_on


def test_worker_discards_an_invalid_recipient(
    session: Session, worker: Launcher, r: redis.Redis
) -> None:
    """Run by a worker, the refused address fails once and is neither retried nor dead."""
    user = factories.user(session, email="bounce@nowhere.invalid")
    notification = factories.notification(session, user)

    SendNotificationJob.perform_async(notification.id)

    # Failed, and acknowledged: the retry-or-discard decision has been made.
    wait_until(lambda: r.get("stat:failed") == "1" and not r.keys("kiq|inprogress|*"), timeout=10)
    assert status(session, notification.id) == "failed"
    assert r.zcard("retry") == 0
    assert r.zcard("dead") == 0


def test_worker_retries_a_greylisted_address_after_the_configured_delay(
    session: Session, worker: Launcher, app: App, r: redis.Redis
) -> None:
    """A 451 "try later" goes to the retry set for mail_retry_delay, then is delivered."""
    user = factories.user(session, email="grey@greylist.example")
    notification = factories.notification(session, user)

    SendNotificationJob.perform_async(notification.id)

    wait_until(lambda: status(session, notification.id) == "sent", timeout=15)
    assert len(app.mailbox.to("grey@greylist.example")) == 1
    assert r.get("stat:failed") == "1"


def test_retry_delay_is_the_settings_for_a_temporary_refusal_only() -> None:
    """retry_in: settings.mail_retry_delay after a 4xx; Sidekiq's backoff otherwise."""
    payload = kiq.payload.loads('{"class": "SendNotificationJob", "args": [1]}')

    assert SendNotificationJob.retry_in(0, TemporaryDeliveryError("451"), payload) == 0.3
    assert SendNotificationJob.retry_in(0, DeliveryError("down"), payload) is None


def test_a_stuck_mail_server_times_out(
    session: Session, app: App, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that does not answer fails the send after smtp_timeout, logged as an error."""
    notification = factories.notification(session, factories.user(session))
    app.mail_server.handler.stall = 2.0
    settings.configure(smtp_timeout=0.2)

    with pytest.raises(TimeoutError), caplog.at_level(logging.ERROR):
        SendNotificationJob().perform(notification.id)

    assert "timeout for user" in caplog.text


def test_worker_enforces_the_job_timeout(
    session: Session, worker: Launcher, app: App, r: redis.Redis
) -> None:
    """Past its ``timeout`` the job fails with kiq.JobTimeout and goes to the retry set."""
    notification = factories.notification(session, factories.user(session))
    app.mail_server.handler.stall = 1.0

    SendNotificationJob.set(timeout=0.2).perform_async(notification.id)

    wait_until(lambda: r.zcard("retry") == 1, timeout=10)
    (raw,) = r.zrange("retry", 0, 0)
    assert kiq.payload.loads(str(raw))["error_class"] == "JobTimeout"


def test_enqueue_carries_queue_retries_and_timeout(kiq_fake: ModuleType) -> None:
    """The payload names the notifications queue, 5 retries and the 30 s timeout."""
    SendNotificationJob.perform_async(7)

    (job,) = SendNotificationJob.jobs
    assert (job["args"], job["queue"], job["retry"], job["timeout"]) == (
        [7],
        "notifications",
        5,
        30,
    )
