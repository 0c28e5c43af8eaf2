"""SendNotificationJob: mail one notification (the brief's pattern 2).

* Ids, not objects: it takes the notification's id; the row holds the user, the
  kind and the data (the brief passed those three as arguments).
* Idempotent: a notification already sent (or skipped, or refused) is not sent
  again, so a retry after a crash that followed the send does not mail twice.
* Errors: a refused address (``InvalidRecipientError``) is discarded through
  ``discard_on``, never retried; a disabled user is skipped; anything else raises
  and is retried, up to 5 times; a greylisting server's "try later" is retried after
  ``settings.mail_retry_delay`` (``retry_in``) instead of Sidekiq's backoff.
* Timeout: ``timeout=30`` (the brief's ``Timeout.timeout(30)``), enforced by the
  worker, which raises ``kiq.JobTimeout`` into the job; the SMTP socket has its own
  shorter timeout as well, since a thread blocked inside a socket call only sees
  the JobTimeout once the call returns.
"""

from __future__ import annotations

import kiq
from brief_app import db, settings
from brief_app.errors import InvalidRecipientError, TemporaryDeliveryError
from brief_app.models import Notification
from brief_app.services.notifications import NotificationService


class SendNotificationJob(
    kiq.Job,
    name="SendNotificationJob",
    queue="notifications",
    retry=5,
    timeout=30,
    discard_on=InvalidRecipientError,
):
    def perform(self, notification_id: int) -> None:
        with db.session() as session:
            notification = session.get(Notification, notification_id)
            if notification is None:
                self.logger.info("notification #%d no longer exists", notification_id)
                return
            if notification.status != "pending":
                self.logger.info(
                    "notification #%d already %s", notification_id, notification.status
                )
                return
            user = notification.user
            if not user.notifications_enabled:
                notification.status = "skipped"
                session.commit()
                self.logger.info("user #%d has notifications off", user.id)
                return
            self.logger.info("sending notification %s to user #%d", notification.kind, user.id)
            try:
                NotificationService.send(session, notification)
            except InvalidRecipientError as exc:
                notification.status = "failed"
                notification.error_message = str(exc)
                session.commit()
                raise  # discard_on: logged as discarded, never retried
            except TimeoutError:
                self.logger.error("timeout for user #%d", user.id)
                raise  # retried

    @classmethod
    def retry_in(cls, count: int, exc: BaseException, payload: kiq.payload.Payload) -> float | None:
        if isinstance(exc, TemporaryDeliveryError):
            return settings.current().mail_retry_delay
        return None  # Sidekiq's backoff
