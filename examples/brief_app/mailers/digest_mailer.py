"""DigestMailer: the daily and weekly digest of what happened on a user's entities."""

from __future__ import annotations

from sqlalchemy import func, select

from brief_app import db
from brief_app.mailers.base import Mail, Mailer
from brief_app.models import Entity, Submission, User


class DigestMailer(Mailer):
    @staticmethod
    def digest(user_id: int, kind: str, period: str) -> Mail:
        """``kind`` is daily or weekly; ``period`` names the day or ISO week."""
        with db.session() as session:
            user = session.get_one(User, user_id)
            entities = session.scalar(
                select(func.count()).select_from(Entity).where(Entity.owner_id == user_id)
            )
            ratings = session.scalar(
                select(func.count())
                .select_from(Submission)
                .join(Entity)
                .where(Entity.owner_id == user_id)
            )
        return Mail(
            to=user.email,
            subject=f"Your {kind} digest for {period}",
            body=(
                f"Hello {user.name},\n\nyour {entities or 0} places have "
                f"{ratings or 0} ratings in all.\n"
            ),
        )
