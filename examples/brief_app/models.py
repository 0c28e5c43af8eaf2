"""The app's tables (the brief's ``app/models``), as SQLAlchemy 2.x typed models.

Jobs receive ids and load these rows themselves: a job's arguments are JSON in Redis,
and a row read at enqueue time would be stale by the time the job runs.

Times are naive UTC ``datetime``s (SQLite has no time zones): always use ``utcnow()``.
Statuses are plain strings; each model lists its own.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(255), unique=True)
    name: Mapped[str] = mapped_column(String(255))
    notifications_enabled: Mapped[bool] = mapped_column(default=True)
    digest_enabled: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    entities: Mapped[list[Entity]] = relationship(back_populates="owner")


class Entity(Base):
    """A place people rate; created by hand or by an import (one per CSV row)."""

    __tablename__ = "entities"
    # One entity per import row, so an import that is retried never duplicates rows.
    __table_args__ = (UniqueConstraint("import_id", "import_row"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    name: Mapped[str] = mapped_column(String(255))
    address: Mapped[str] = mapped_column(String(255))
    phone: Mapped[str | None] = mapped_column(String(50))
    average_score: Mapped[float | None]
    submissions_count: Mapped[int] = mapped_column(default=0)
    latitude: Mapped[float | None]
    longitude: Mapped[float | None]
    import_id: Mapped[int | None] = mapped_column(ForeignKey("imports.id", ondelete="SET NULL"))
    import_row: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    owner: Mapped[User | None] = relationship(back_populates="entities")
    submissions: Mapped[list[Submission]] = relationship(
        back_populates="entity", cascade="all, delete-orphan", passive_deletes=True
    )


class Submission(Base):
    """One rating (1-5) of an entity."""

    __tablename__ = "submissions"

    id: Mapped[int] = mapped_column(primary_key=True)
    entity_id: Mapped[int] = mapped_column(ForeignKey("entities.id", ondelete="CASCADE"))
    rating: Mapped[int]
    content: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    entity: Mapped[Entity] = relationship(back_populates="submissions")


class Import(Base):
    """An uploaded CSV of entities. Status: pending, processing, completed, failed."""

    __tablename__ = "imports"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    filename: Mapped[str] = mapped_column(String(255))
    content: Mapped[str] = mapped_column(Text)  # the uploaded file (the brief's import.file)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    processed_count: Mapped[int] = mapped_column(default=0)
    invalid_count: Mapped[int] = mapped_column(default=0)
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    user: Mapped[User] = relationship()


class Export(Base):
    """A CSV export a user asked for. Status: pending, processing, completed, failed."""

    __tablename__ = "exports"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    export_type: Mapped[str] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(20), default="pending")
    progress: Mapped[float] = mapped_column(default=0.0)  # percent, as the brief's column
    jid: Mapped[str | None] = mapped_column(String(24))  # the job writing it: live progress
    file_path: Mapped[str | None] = mapped_column(String(500))
    row_count: Mapped[int] = mapped_column(default=0)
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None]

    user: Mapped[User] = relationship()


class Notification(Base):
    """A message for a user. Status: pending, sent, skipped (disabled), failed (bad address)."""

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(50))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
    read_at: Mapped[datetime | None]

    user: Mapped[User] = relationship()


class DigestDelivery(Base):
    """One digest sent (or refused) to one user for one period: what makes digests idempotent."""

    __tablename__ = "digest_deliveries"
    __table_args__ = (UniqueConstraint("user_id", "kind", "period"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))  # daily or weekly
    period: Mapped[str] = mapped_column(String(20))  # 2026-01-05 or 2026-W02
    status: Mapped[str] = mapped_column(String(20))  # sent or failed
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebSession(Base):
    """A web login session (the brief's ActiveRecord::SessionStore::Session)."""

    __tablename__ = "sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    data: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ActivityLog(Base):
    """An audit line (the brief's ActivityLog), kept 180 days."""

    __tablename__ = "activity_logs"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    action: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
