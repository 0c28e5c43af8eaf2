"""Mail, Mailer and SMTP delivery: ActionMailer's shape, over ``smtplib``.

Delivery maps SMTP's answers onto the app's errors (brief_app.errors), because that is
what a job needs to decide between retry and discard: a 5xx for a recipient is
``InvalidRecipientError`` (never retry), a 4xx is ``TemporaryDeliveryError``, a
silent server is ``MailTimeout``, anything else ``DeliveryError``.
"""

from __future__ import annotations

import smtplib
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, ClassVar

import kiq
from brief_app import settings
from brief_app.errors import (
    DeliveryError,
    InvalidRecipientError,
    MailTimeout,
    TemporaryDeliveryError,
)


@dataclass(frozen=True, slots=True)
class Mail:
    """One message, ready to send."""

    to: str
    subject: str
    body: str

    def message(self) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = settings.current().mail_from
        msg["To"] = self.to
        msg["Subject"] = self.subject
        msg.set_content(self.body)
        return msg

    def deliver_now(self) -> None:
        """Send through the SMTP server in settings; raise a brief_app.errors error."""
        config = settings.current()
        try:
            with smtplib.SMTP(
                config.smtp_host,
                config.smtp_port,
                local_hostname="brief-app.localhost",  # no DNS lookup of our own name
                timeout=config.smtp_timeout,
            ) as smtp:
                smtp.send_message(self.message())
        except smtplib.SMTPRecipientsRefused as exc:
            code, reply = next(iter(exc.recipients.values()))
            text = f"{self.to}: {code} {reply.decode(errors='replace')}"
            if 400 <= code < 500:
                raise TemporaryDeliveryError(text) from exc
            raise InvalidRecipientError(text) from exc
        except smtplib.SMTPServerDisconnected as exc:
            _raise_timeout(exc, config)
            raise DeliveryError(f"{self.to}: {exc}") from exc
        except TimeoutError as exc:
            if isinstance(exc, kiq.JobTimeout):
                raise
            raise MailTimeout(_timeout_text(config)) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"{self.to}: {exc}") from exc


def _raise_timeout(exc: smtplib.SMTPServerDisconnected, config: settings.Settings) -> None:
    # smtplib turns a timeout while reading a reply into "Connection unexpectedly
    # closed"; the TimeoutError is still its context. A kiq JobTimeout delivered into
    # this thread while it waited takes the same path, and must stay what it is.
    cause = exc.__context__
    if isinstance(cause, kiq.JobTimeout):
        raise cause
    if isinstance(cause, TimeoutError):
        raise MailTimeout(_timeout_text(config)) from exc


def _timeout_text(config: settings.Settings) -> str:
    return (
        f"the mail server {config.smtp_host}:{config.smtp_port} did not answer "
        f"within {config.smtp_timeout}s"
    )


class Mailer:
    """Base of the app's mailers; each public static method builds one ``Mail``.

    Example::

        class ImportMailer(Mailer):
            @staticmethod
            def completed(import_id: int) -> Mail: ...

        ImportMailer.completed(7).deliver_now()          # now, in this thread
        ImportMailer.deliver_later("completed", 7)       # by a MailDeliveryJob
    """

    registry: ClassVar[dict[str, type[Mailer]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Mailer.registry[cls.__name__] = cls

    @classmethod
    def action(cls, name: str) -> Callable[..., Mail]:
        method = getattr(cls, name, None)
        if name.startswith("_") or not callable(method):
            raise AttributeError(f"{cls.__name__} has no mail action {name!r}")
        return method  # type: ignore[no-any-return]  # checked callable above

    @classmethod
    def deliver_later(cls, action: str, *ids: int) -> str | None:
        """Enqueue the delivery (ActionMailer's ``deliver_later``); returns the jid."""
        cls.action(action)  # fail here, in the caller, for a misspelt action
        from brief_app.jobs.mail_delivery_job import MailDeliveryJob

        return MailDeliveryJob.perform_async(cls.__name__, action, *ids)
