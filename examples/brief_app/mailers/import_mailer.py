"""ImportMailer: the outcome of a CSV import, sent to the user who uploaded it."""

from __future__ import annotations

from brief_app import db
from brief_app.mailers.base import Mail, Mailer
from brief_app.models import Import


class ImportMailer(Mailer):
    @staticmethod
    def completed(import_id: int) -> Mail:
        with db.session() as session:
            record = session.get_one(Import, import_id)
            to = record.user.email
        return Mail(
            to=to,
            subject=f"Import of {record.filename} completed",
            body=(
                f"{record.processed_count} places imported, "
                f"{record.invalid_count} rows skipped as invalid.\n"
            ),
        )

    @staticmethod
    def failed(import_id: int) -> Mail:
        with db.session() as session:
            record = session.get_one(Import, import_id)
            to = record.user.email
        return Mail(
            to=to,
            subject=f"Import of {record.filename} failed",
            body=f"The import stopped: {record.error_message}\n",
        )
