"""DigestBatchJob: mail the digest to one batch of users.

The brief's loop, kept: each user in its own ``try`` so that one failure does not
stop the others, a pause between mails, a count of successes and errors in the log.
Two changes make it safe to retry:

* each user's digest is recorded (DigestDelivery, unique per user and period), so a
  retried batch skips the users already mailed: idempotent;
* a refused address is recorded as failed and never retried, but a temporary
  failure (server down, greylisted, timeout) makes the whole batch raise at the end,
  after the other users were served; its retry then mails only those users.
"""

from __future__ import annotations

import time

from sqlalchemy import select
from sqlalchemy.orm import Session

import kiq
from brief_app import db, settings
from brief_app.errors import DeliveryError, InvalidRecipientError, TemporaryDeliveryError
from brief_app.mailers import DigestMailer
from brief_app.models import DigestDelivery, User


class DigestBatchJob(kiq.Job, name="DigestBatchJob", queue="mailers", retry=2):
    def perform(self, user_ids: list[int], kind: str, period: str) -> None:
        sent = errors = 0
        later: list[int] = []
        for user_id in user_ids:
            with db.session() as session:
                if not self._due(session, user_id, kind, period):
                    continue
                try:
                    DigestMailer.digest(user_id, kind, period).deliver_now()
                except InvalidRecipientError as exc:
                    self.logger.error("error for user #%d: %s", user_id, exc)
                    self._record(session, user_id, kind, period, "failed", str(exc))
                    errors += 1
                except (DeliveryError, TimeoutError) as exc:
                    self.logger.warning("user #%d will be retried: %s", user_id, exc)
                    later.append(user_id)
                else:
                    self._record(session, user_id, kind, period, "sent", None)
                    sent += 1
            time.sleep(settings.current().mail_pause)  # spare the mail server
        self.logger.info("digests sent: %d success, %d errors", sent, errors)
        if later:
            raise TemporaryDeliveryError(
                f"{len(later)} digests could not be sent now (users {later}); "
                f"the retry sends only those"
            )

    @staticmethod
    def _due(session: Session, user_id: int, kind: str, period: str) -> bool:
        user = session.get(User, user_id)
        if user is None or not user.digest_enabled:
            return False  # deleted or unsubscribed since the batch was made
        done = session.scalar(
            select(DigestDelivery.id).where(
                DigestDelivery.user_id == user_id,
                DigestDelivery.kind == kind,
                DigestDelivery.period == period,
            )
        )
        return done is None

    @staticmethod
    def _record(
        session: Session, user_id: int, kind: str, period: str, status: str, error: str | None
    ) -> None:
        session.add(
            DigestDelivery(
                user_id=user_id, kind=kind, period=period, status=status, error_message=error
            )
        )
        session.commit()
