"""NotificationMailer: one notification as an e-mail."""

from __future__ import annotations

from typing import Any

from brief_app.mailers.base import Mail, Mailer

SUBJECTS = {
    "new_submission": "Someone rated your place",
    "import_completed": "Your import is done",
}


class NotificationMailer(Mailer):
    @staticmethod
    def notify(email: str, name: str, kind: str, data: dict[str, Any]) -> Mail:
        subject = SUBJECTS.get(kind, kind.replace("_", " ").capitalize())
        details = "".join(f"  {key}: {value}\n" for key, value in sorted(data.items()))
        return Mail(to=email, subject=subject, body=f"Hello {name},\n\n{subject}.\n{details}")
