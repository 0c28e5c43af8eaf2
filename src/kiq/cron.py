"""Recurring jobs: the schedule file, cron expressions and their fire times.

The schedule format is sidekiq-cron's (``config/sidekiq_schedule.yml`` works
unchanged) and kiq's own ``config/kiq_schedule.yml`` is the same format: a mapping of
job name to properties, or a list of properties each with a ``name``::

    cleanup_old_data:
      class: CleanupOldDataJob          # the job's wire name (``klass`` also accepted)
      cron: "0 2 * * * Europe/Berlin"   # 5 or 6 fields, optional trailing time zone
      queue: maintenance                # else the job's own queue, else "default"
      args: [30]                        # a list, a dict (one argument) or JSON text
      description: Delete old rows
      status: enabled                   # or disabled (``active: false`` too)

Fire times come from ``croniter`` with ``zoneinfo`` zones (DST handled by those
maintained libraries, not here); a line without a zone is UTC, as sidekiq-cron
outside Rails. This module does no I/O beyond reading the file: kiq.recurring
stores and enqueues.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiq.errors import ConfigError

if TYPE_CHECKING:
    from croniter import croniter

DEFAULT_FILES = ("config/kiq_schedule.yml", "config/sidekiq_schedule.yml", "config/schedule.yml")


@dataclass(frozen=True, slots=True)
class CronJob:
    """One recurring job definition."""

    name: str
    klass: str
    cron: str  # the five/six fields, without the zone
    zone: str = "UTC"
    queue: str | None = None
    args: list[Any] = field(default_factory=list)
    description: str = ""
    enabled: bool = True
    retry: bool | int | None = None

    @property
    def tz(self) -> tzinfo:
        from zoneinfo import ZoneInfo  # local, as croniter: a worker without cron jobs

        return UTC if self.zone == "UTC" else ZoneInfo(self.zone)

    @property
    def line(self) -> str:
        """The cron line as written in the file (with its zone unless UTC)."""
        return self.cron if self.zone == "UTC" else f"{self.cron} {self.zone}"

    def previous_tick(self, now: datetime) -> datetime:
        """The latest fire time at or before ``now`` (aware, in UTC)."""
        local = self._wall(now)
        if (
            local.microsecond == 0
            and _croniter().match(self.cron, local, second_at_beginning=self._seconds)
            and (self._seconds or local.second == 0)
        ):
            return self._aware(local)
        tick: datetime = _croniter()(self.cron, local, second_at_beginning=self._seconds).get_prev(
            datetime
        )
        return self._aware(tick)

    def next_tick(self, now: datetime) -> datetime:
        """The first fire time after ``now`` (aware, in UTC)."""
        tick: datetime = _croniter()(
            self.cron, self._wall(now), second_at_beginning=self._seconds
        ).get_next(datetime)
        return self._aware(tick)

    # Ticks are computed on the zone's wall clock (naive), then placed in the zone with
    # fold=0: in the repeated hour of a DST fall-back a 02:30 job fires once (the first
    # 02:30), and in the skipped hour of a spring-forward it fires once (at the wall
    # time zoneinfo maps it to). croniter on aware times fires twice on fall-back.
    @property
    def _seconds(self) -> bool:
        return len(self.cron.split()) == 6  # sidekiq-cron/Fugit: seconds come first

    def _wall(self, now: datetime) -> datetime:
        return now.astimezone(self.tz).replace(tzinfo=None)

    def _aware(self, wall: datetime) -> datetime:
        return wall.replace(tzinfo=self.tz, fold=0).astimezone(UTC)


def _croniter() -> type[croniter]:
    """croniter, imported on first use: a worker without recurring jobs never loads it
    (with dateutil and six it is ~1 MB of a worker's idle RSS, issue 5)."""
    from croniter import croniter

    return croniter


def parse_line(name: str, line: str) -> tuple[str, str]:
    """Split ``"0 22 * * 1-5 America/Chicago"`` into fields and zone; validate both."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    parts = line.split()
    zone = "UTC"
    if (
        len(parts) in (6, 7)
        and parts[-1][0].isalpha()
        and ("/" in parts[-1] or parts[-1] in ("UTC", "GMT"))
    ):
        zone = parts.pop()
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(f"cron job {name!r}: unknown time zone {zone!r}") from exc
    expression = " ".join(parts)
    seconds_first = len(parts) == 6
    if len(parts) not in (5, 6) or not _croniter().is_valid(
        expression, second_at_beginning=seconds_first
    ):
        raise ConfigError(
            f"cron job {name!r}: {line!r} is not a cron line; use 5 fields "
            f"(minute hour day month weekday) or 6 with leading seconds, then an optional "
            f"time zone, e.g. '0 2 * * * Europe/Berlin'"
        )
    return expression, zone


def from_dict(name: str, props: dict[str, Any]) -> CronJob:
    """Build a CronJob from sidekiq-cron's properties, with errors that name the job."""
    if not isinstance(props, dict):
        raise ConfigError(f"cron job {name!r}: expected a mapping of properties, got {props!r}")
    klass = props.get("class") or props.get("klass")
    if not isinstance(klass, str) or not klass:
        raise ConfigError(f"cron job {name!r}: 'class' (the job's name) is required")
    line = props.get("cron")
    if not isinstance(line, str):
        raise ConfigError(f"cron job {name!r}: 'cron' is required, e.g. '*/15 * * * *'")
    expression, zone = parse_line(name, line)
    args = props.get("args", [])
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError as exc:
            raise ConfigError(f"cron job {name!r}: args {args!r} is not JSON") from exc
    if isinstance(args, dict):
        args = [args]
    if not isinstance(args, list):
        raise ConfigError(f"cron job {name!r}: args must be a list, got {args!r}")
    status = props.get("status", "enabled")
    enabled = status != "disabled" and props.get("active", True) is not False
    queue = props.get("queue")
    return CronJob(
        name=name,
        klass=klass,
        cron=expression,
        zone=zone,
        queue=str(queue) if queue else None,
        args=args,
        description=str(props.get("description", "")),
        enabled=enabled,
        retry=props.get("retry"),
    )


def load(path: str | Path) -> list[CronJob]:
    """Read a schedule file (sidekiq-cron's format)."""
    import yaml  # local: only processes given a schedule file load PyYAML

    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"schedule file {file}: cannot read it ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"schedule file {file}: not valid YAML: {exc}") from exc
    if isinstance(data, dict):
        return [from_dict(str(name), props) for name, props in data.items()]
    if isinstance(data, list):
        jobs = []
        for props in data:
            if not isinstance(props, dict) or not props.get("name"):
                raise ConfigError(f"schedule file {file}: each list entry needs a 'name'")
            jobs.append(from_dict(str(props["name"]), props))
        return jobs
    raise ConfigError(f"schedule file {file}: expected a mapping or list of jobs")


def find_default(root: Path | None = None) -> Path | None:
    base = root or Path.cwd()
    return next((base / p for p in DEFAULT_FILES if (base / p).is_file()), None)
