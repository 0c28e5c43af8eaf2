"""MailDeliveryJob: send one mail later (ActionMailer's MailDeliveryJob).

``ImportMailer.deliver_later("completed", 7)`` pushes ``("ImportMailer",
"completed", 7)``: names and ids, which the job turns back into the mail when it
runs, so the mail shows the data as it is then. A refused address is discarded.
"""

from __future__ import annotations

import kiq
from brief_app.errors import InvalidRecipientError
from brief_app.mailers.base import Mailer


class MailDeliveryJob(
    kiq.Job, name="MailDeliveryJob", queue="mailers", retry=5, discard_on=InvalidRecipientError
):
    def perform(self, mailer: str, action: str, *ids: int) -> None:
        if mailer not in Mailer.registry:
            raise kiq.Discard(f"no mailer named {mailer!r}")
        mail = Mailer.registry[mailer].action(action)(*ids)
        self.logger.info("delivering %s.%s to %s", mailer, action, mail.to)
        mail.deliver_now()
