"""ExportMailer: tell a user that the export they asked for is ready."""

from __future__ import annotations

from brief_app import db
from brief_app.mailers.base import Mail, Mailer
from brief_app.models import Export


class ExportMailer(Mailer):
    @staticmethod
    def ready(export_id: int) -> Mail:
        with db.session() as session:
            export = session.get_one(Export, export_id)
            to = export.user.email
        return Mail(
            to=to,
            subject=f"Your {export.export_type} export is ready",
            body=f"{export.row_count} rows: {export.file_path}\n",
        )
