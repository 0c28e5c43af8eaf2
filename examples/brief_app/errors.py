"""The app's errors, split by what a job should do about them.

* DeliveryError             a mail could not be sent now: retry
  * TemporaryDeliveryError  the server said "later" (SMTP 4xx, e.g. greylisting): retry
  * InvalidRecipientError   the server refused the address (SMTP 5xx): never retry
* MailTimeout (TimeoutError) the mail server did not answer in time: retry
* UnknownExportType         an export of a kind the app cannot produce: never retry
"""

from __future__ import annotations


class DeliveryError(Exception):
    """A mail was not delivered; trying again later may work."""


class TemporaryDeliveryError(DeliveryError):
    """The mail server asked to try later (SMTP 4xx)."""


class InvalidRecipientError(DeliveryError):
    """The mail server refused the recipient for good (SMTP 5xx); retrying cannot help."""


class MailTimeout(DeliveryError, TimeoutError):
    """The mail server did not answer within ``settings.smtp_timeout``."""


class UnknownExportType(ValueError):
    """An export type the app does not know; a retry would fail the same way."""
