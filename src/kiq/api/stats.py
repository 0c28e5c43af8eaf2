"""The dashboard's numbers: cluster counters, daily history, queue summaries, Redis facts.

Why one module: these are the cheap cluster-wide reads that the Web UI's dashboard and
queues page, ``kiq status`` and the Prometheus exporter poll, each built from one or
two pipelines (Sidekiq's ``Stats``, ``Stats::History`` and 8.1's ``queue_summaries``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cached_property
from typing import Final

from kiq import payload as wire
from kiq.api.base import (
    busy_total,
    config_or_default,
    int_or_zero,
    latency_of,
    parse_job,
)
from kiq.config import Config

HISTORY_MAX_DAYS: Final = 1825  # daily stat keys live 5 years (Sidekiq's limit too)


class Stats:
    """Cluster counters, as on Sidekiq's dashboard.

    The cheap numbers (``processed``, ``failed``, ``scheduled_size``, ``retry_size``,
    ``dead_size``, ``processes_size``, ``default_queue_latency``) come from one
    pipeline when the Stats is built (Sidekiq 6.4); ``enqueued`` and ``workers_size``
    scan every queue or process, so they are loaded only when read. A Stats is a
    snapshot: build a new one to refresh.

    Example::

        stats = Stats()
        stats.processed, stats.failed, stats.retry_size, stats.default_queue_latency
        stats.queues()      # {"critical": 12, "default": 3}
        stats.reset()       # processed and failed back to 0
    """

    def __init__(self, config: Config | None = None) -> None:
        self.config = config_or_default(config)
        # processes_size may count a dead process until ProcessSet prunes it
        replies = self.config.store.stats()
        self.processed, self.failed, self.scheduled_size, self.retry_size = map(
            int_or_zero, replies[:4]
        )
        self.dead_size, self.processes_size = int_or_zero(replies[4]), int_or_zero(replies[5])
        oldest = replies[6]
        # Seconds the oldest job in ``default`` has waited; 0.0 when it is empty.
        self.default_queue_latency = latency_of(parse_job(oldest)[0], wire.now()) if oldest else 0.0

    @cached_property
    def enqueued(self) -> int:
        """Jobs waiting in every queue of the ``queues`` set."""
        return sum(self.queues().values())

    @cached_property
    def workers_size(self) -> int:
        """Jobs running now, summed from each process's last heartbeat."""
        return busy_total(self.config)

    def queues(self) -> dict[str, int]:
        """Queue name -> size, largest first (ties by name)."""
        names = self.config.store.queue_names()
        sizes = self.config.store.queue_sizes(names)
        return dict(sorted(zip(names, sizes, strict=True), key=lambda p: (-p[1], p[0])))

    def reset(self, *names: str) -> None:
        """Set ``stat:processed`` and/or ``stat:failed`` to 0 (default: both)."""
        chosen = names or ("processed", "failed")
        unknown = set(chosen) - {"processed", "failed"}
        if unknown:
            raise ValueError(f"Stats.reset: {sorted(unknown)} unknown; use 'processed', 'failed'")
        self.config.store.reset_stats(chosen)
        for name in chosen:
            setattr(self, name, 0)


class History:
    """Daily processed/failed counts (UTC days), newest first.

    Example::

        History(7).processed()    # {"2024-03-01": 120, "2024-02-29": 98, ...}
        History(30, start_date=date(2024, 2, 1)).failed()
    """

    def __init__(
        self, days: int, start_date: date | None = None, config: Config | None = None
    ) -> None:
        if not 1 <= days <= HISTORY_MAX_DAYS:
            raise ValueError(
                f"History: days={days} is out of range; use 1..{HISTORY_MAX_DAYS} "
                f"(daily stats are kept 5 years)"
            )
        self.days = days
        self.start_date = start_date or datetime.now(UTC).date()
        self.config = config_or_default(config)

    def processed(self) -> dict[str, int]:
        """``{"YYYY-MM-DD": jobs processed that day}`` (failures count as processed too)."""
        return self._by_date("processed")

    def failed(self) -> dict[str, int]:
        """``{"YYYY-MM-DD": jobs that failed that day}``."""
        return self._by_date("failed")

    def _by_date(self, kind: str) -> dict[str, int]:
        days = [self.start_date - timedelta(days=i) for i in range(self.days)]
        values = self.config.store.daily_stats(kind, days)
        return {day.isoformat(): int_or_zero(v) for day, v in zip(days, values, strict=True)}


@dataclass(frozen=True, slots=True)
class QueueSummary:
    """One row of the Queues page."""

    name: str
    size: int
    latency: float  # seconds the oldest job has waited
    paused: bool


def queue_summaries(config: Config | None = None, now: float | None = None) -> list[QueueSummary]:
    """Every queue with its size, latency and paused flag, by name, in one pipeline.

    Sidekiq 8.1's ``Stats#queue_summaries``: LLEN, LINDEX -1 and SISMEMBER per queue.
    """
    config = config_or_default(config)
    names = config.store.queue_names()
    rows = config.store.queue_summaries(names)
    now = wire.now() if now is None else now
    summaries = []
    for name, (size, oldest, paused) in zip(names, rows, strict=True):
        latency = latency_of(parse_job(oldest)[0], now) if oldest else 0.0
        summaries.append(QueueSummary(name, size, latency, paused))
    return summaries


@dataclass(frozen=True, slots=True)
class RedisInfo:
    """What the dashboard shows about the server (from INFO)."""

    server: str  # "Redis", "Valkey" or "Dragonfly"
    version: str
    uptime_days: int
    connections: int
    memory: str  # used_memory_human, e.g. "1.52M"
    peak_memory: str  # used_memory_peak_human


def redis_info(config: Config | None = None) -> RedisInfo:
    """The server's name, version, uptime, clients and memory (one INFO)."""
    info = config_or_default(config).store.info()
    server = "Redis"
    if "valkey_version" in info or info.get("server_name") == "valkey":
        server = "Valkey"
    elif "dragonfly_version" in info:
        server = "Dragonfly"
    version = info.get("valkey_version") or info.get("redis_version") or "?"
    return RedisInfo(
        server=server,
        version=str(version),
        uptime_days=int_or_zero(info.get("uptime_in_days")),
        connections=int_or_zero(info.get("connected_clients")),
        memory=str(info.get("used_memory_human", "?")),
        peak_memory=str(info.get("used_memory_peak_human", "?")),
    )
