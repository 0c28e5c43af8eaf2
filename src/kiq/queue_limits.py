"""Queue limits: a queue's concurrency and fetch rate across every process.

Why its own module: the config file's ``:limits:`` (the sidekiq-limit_fetch gem's key)
is read by Config, and the fetcher turns it into the permits step of ``fetch.lua``; the
parsing and its error messages are here, so config.py does not grow.

Forms (docs/limits.md)::

    :limits:
      stripe: 5                                   # at most 5 stripe jobs at once
      mailer: {concurrency: 10, rate: 100/minute} # and at most 100 fetched a minute

    stripe: {concurrency: 5, rate: 100/minute}    # the same, as a section named after
                                                  # a queue listed in :queues:

A process never fetches more from a limited queue than its permits allow, so there is
no fetch-then-reschedule churn, and the other queues keep flowing. The count is the
jobs every process holds from the queue (its in-progress list, fetched and not yet
acknowledged), summed over the processes holding a lease on the queue's permits
(``kiq|qlimit|<queue>``); a killed process's lease ends after ``process_ttl``, and its
jobs no longer count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from kiq.errors import ConfigError

PERIODS: Final = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
_RATE: Final = re.compile(r"\s*(\d+)\s*/\s*(\d*\.?\d*)\s*(second|minute|hour|day|s)?\s*")


@dataclass(frozen=True, slots=True)
class QueueLimit:
    """One queue's limits: ``concurrency`` jobs at once and/or ``rate`` jobs per
    ``per`` seconds (a leaky bucket: bursts up to ``rate``, then a steady rate)."""

    concurrency: int = 0  # 0: no concurrency limit
    rate: int = 0  # 0: no rate limit
    per: float = 1.0  # seconds

    def describe(self) -> str:
        parts = []
        if self.concurrency:
            parts.append(f"{self.concurrency} at once")
        if self.rate:
            parts.append(f"{self.rate} per {self.per:g}s")
        return ", ".join(parts)


def parse_rate(queue: str, text: object) -> tuple[int, float]:
    """``"100/minute"`` -> (100, 60.0); ``"5/2s"`` -> (5, 2.0); ``"3/second"`` -> (3, 1.0)."""
    match = _RATE.fullmatch(text) if isinstance(text, str) else None
    if match is None or int(match.group(1)) < 1:
        raise ConfigError(
            f"limits: {queue}: rate {text!r} is not allowed; write COUNT/PERIOD, e.g. "
            f'"100/minute", "10/second" or "5/2s" (COUNT >= 1)'
        )
    count, number, unit = int(match.group(1)), match.group(2), match.group(3)
    seconds = float(number) if number else 1.0
    if unit in PERIODS:
        seconds *= PERIODS[unit]
    if not seconds > 0:
        raise ConfigError(f"limits: {queue}: rate {text!r} has a period of 0; give one > 0")
    return count, seconds


def parse_limits(value: object) -> dict[str, QueueLimit]:
    """The ``limits`` setting (file or code) as {queue: QueueLimit}; ConfigError if bad."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(
            f"limits: {value!r} is not allowed; give a mapping of queue names, e.g. "
            f"{{stripe: 5}} or {{stripe: {{concurrency: 5, rate: 100/minute}}}}"
        )
    limits: dict[str, QueueLimit] = {}
    for queue, spec in value.items():
        name = str(queue).lstrip(":")
        if isinstance(spec, QueueLimit):
            limits[name] = spec
        elif isinstance(spec, int) and not isinstance(spec, bool):
            limits[name] = QueueLimit(concurrency=_concurrency(name, spec))
        elif isinstance(spec, dict):
            limits[name] = _from_mapping(name, spec)
        else:
            raise ConfigError(
                f"limits: {name}: {spec!r} is not allowed; give a number (jobs at once) or "
                f"{{concurrency: N, rate: COUNT/PERIOD}}"
            )
    return limits


def queue_sections(data: dict[str, object], values: dict[str, object]) -> dict[str, object]:
    """Top-level ``<queue>: {concurrency: .., rate: ..}`` sections of a config file, for
    queues listed in its ``queues``, merged into its ``limits`` (``:limits:`` wins for a
    queue named in both); {} when there are none."""
    queues = values.get("queues")
    names = {entry[0] for entry in queues} if isinstance(queues, list) else set()
    found: dict[object, object] = {}
    for key, value in data.items():
        limit_keys = {str(k).lstrip(":") for k in value} if isinstance(value, dict) else set()
        if key in names and limit_keys and limit_keys <= {"concurrency", "rate"}:
            found[key] = value
    if not found:
        return {}
    limits = values.get("limits")
    return {"limits": {**found, **(limits if isinstance(limits, dict) else {})}}


def _from_mapping(name: str, spec: dict[object, object]) -> QueueLimit:
    fields = {str(k).lstrip(":"): v for k, v in spec.items()}
    unknown = sorted(set(fields) - {"concurrency", "rate"})
    if unknown or not fields:
        raise ConfigError(
            f"limits: {name}: keys {unknown or '(none)'} are not allowed; use concurrency "
            f"and/or rate"
        )
    concurrency = _concurrency(name, fields["concurrency"]) if "concurrency" in fields else 0
    rate, per = parse_rate(name, fields["rate"]) if "rate" in fields else (0, 1.0)
    return QueueLimit(concurrency, rate, per)


def _concurrency(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"limits: {name}: concurrency {value!r} is not allowed; give a whole number >= 1"
        )
    return value
