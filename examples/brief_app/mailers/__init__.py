"""Mailers (the brief's ``app/mailers``): build a message from ids, send it over SMTP.

``SomeMailer.action(ids...)`` returns a ``Mail``; ``.deliver_now()`` sends it, and
``SomeMailer.deliver_later("action", ids...)`` enqueues a MailDeliveryJob that does.
"""

from __future__ import annotations

from brief_app.mailers.base import Mail, Mailer
from brief_app.mailers.digest_mailer import DigestMailer
from brief_app.mailers.export_mailer import ExportMailer
from brief_app.mailers.import_mailer import ImportMailer
from brief_app.mailers.notification_mailer import NotificationMailer

__all__ = ["DigestMailer", "ExportMailer", "ImportMailer", "Mail", "Mailer", "NotificationMailer"]
