"""DigestRecipients: the ids of users who asked for the digest, a batch at a time."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session

from brief_app.models import User


def id_batches(session: Session, size: int) -> Iterator[list[int]]:
    """Ids of digest-enabled users in id order, ``size`` per batch (``find_each``)."""
    last = 0
    while True:
        batch = list(
            session.scalars(
                select(User.id)
                .where(User.digest_enabled.is_(True), User.id > last)
                .order_by(User.id)
                .limit(size)
            )
        )
        if not batch:
            return
        yield batch
        last = batch[-1]
