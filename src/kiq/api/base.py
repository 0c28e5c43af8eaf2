"""What every part of the admin API shares: the Config and lenient readers.

Every Redis command of the API is a ``config.store`` method (``kiq.store``); the API
turns their replies into objects.

Why lenient: the same keys hold what Ruby Sidekiq 6.4, 7.x and 8.x write as well as
kiq's own data (shared/sidekiq-wire.md §1, §2, §8), so a payload time may be float
seconds or integer milliseconds, a count bytes or text, and a member not JSON at all.
These readers turn each into one Python shape (or a neutral value) instead of raising,
as Sidekiq's api.rb does, so one odd entry never breaks a page of the Web UI.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from kiq import payload as wire
from kiq.config import Config, get_default
from kiq.errors import PayloadError
from kiq.payload import Payload

PAGE_SIZE: Final = 50  # entries per LRANGE/ZRANGE while iterating (Sidekiq's page size)


def config_or_default(config: Config | None) -> Config:
    return config if config is not None else get_default()


def parse_job(raw: bytes) -> tuple[Payload, bool]:
    """(payload, valid). Like Sidekiq, a member that is not a JSON object reads as {}."""
    try:
        return wire.loads(raw), True
    except PayloadError:
        pass
    try:
        data = json.loads(raw)
    except ValueError:
        return {}, False
    return (data, True) if isinstance(data, dict) else ({}, False)


def to_datetime(value: object) -> datetime | None:
    """A payload time (float seconds or int ms, as Sidekiq 8 reads them) as a UTC datetime."""
    seconds = wire.to_seconds(value)
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


def to_epoch(at: datetime | float) -> float:
    if isinstance(at, datetime):
        if at.tzinfo is None:
            raise ValueError(
                f"{at!r} has no time zone; pass an aware datetime such as "
                f"datetime.now(UTC) + timedelta(hours=1), or epoch seconds"
            )
        return at.timestamp()
    return float(at)


def str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def float_or_none(value: str | None) -> float | None:
    try:
        return float(value or "")
    except ValueError:
        return None


def int_or_zero(value: object) -> int:
    """A count from Redis or JSON (bytes, str, int); 0 when absent or not a number."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, bool) or not isinstance(value, int | str):
        return 0
    try:
        return int(value)
    except ValueError:
        return 0


def latency_of(payload: Mapping[str, Any], now: float) -> float:
    """now - enqueued_at, else created_at (Sidekiq 8); 0 when neither is present."""
    for name in ("enqueued_at", "created_at"):
        seconds = wire.to_seconds(payload.get(name))
        if seconds is not None:
            return now - seconds
    return 0.0


def busy_total(config: Config) -> int:
    """Σ ``busy`` over the heartbeat hashes: as fresh as the last beat (Sidekiq the same)."""
    store = config.store
    return sum(int_or_zero(busy) for busy in store.busy_counts(store.process_identities()))
