"""Cron lines, zones and the schedule file (pure functions: no Redis)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from kiq import cron
from kiq.errors import ConfigError


def job(line: str) -> cron.CronJob:
    return cron.from_dict("j", {"class": "A", "cron": line})


@pytest.mark.parametrize(
    ("line", "now", "previous", "following"),
    [
        ("*/15 * * * *", "2026-01-01T10:07:00", "2026-01-01T10:00:00", "2026-01-01T10:15:00"),
        ("*/15 * * * *", "2026-01-01T10:15:00", "2026-01-01T10:15:00", "2026-01-01T10:30:00"),
        ("0 8 * * *", "2026-01-01T07:59:59", "2025-12-31T08:00:00", "2026-01-01T08:00:00"),
        ("0 9 * * 1", "2026-01-07T00:00:00", "2026-01-05T09:00:00", "2026-01-12T09:00:00"),
        ("*/10 * * * * *", "2026-01-01T10:00:05", "2026-01-01T10:00:00", "2026-01-01T10:00:10"),
    ],
)
def test_ticks_in_utc(line: str, now: str, previous: str, following: str) -> None:
    """previous_tick is the latest fire time at or before now; next_tick the first after."""
    at = datetime.fromisoformat(now).replace(tzinfo=UTC)
    assert job(line).previous_tick(at) == datetime.fromisoformat(previous).replace(tzinfo=UTC)
    assert job(line).next_tick(at) == datetime.fromisoformat(following).replace(tzinfo=UTC)


def test_zone_after_the_expression_is_honoured() -> None:
    """'0 22 * * 1-5 America/Chicago' fires at 22:00 Chicago time (04:00 UTC in winter).

    2026-01-01 00:00 UTC is Wednesday 31 Dec 18:00 in Chicago: the next tick is that
    evening at 22:00, 04:00 UTC on the 1st."""
    chicago = job("0 22 * * 1-5 America/Chicago")
    assert chicago.zone == "America/Chicago"
    assert chicago.cron == "0 22 * * 1-5"
    assert chicago.next_tick(datetime(2026, 1, 1, tzinfo=UTC)) == datetime(
        2026, 1, 1, 4, tzinfo=UTC
    )


def test_dst_spring_forward_skipped_hour_fires_once() -> None:
    """A 02:30 job on the night clocks jump from 02:00 to 03:00 still fires once that day."""
    berlin = job("30 2 * * * Europe/Berlin")
    before = datetime(2026, 3, 29, 0, 0, tzinfo=UTC)  # 01:00 in Berlin, DST starts at 02:00
    first = berlin.next_tick(before)
    second = berlin.next_tick(first)
    assert first.date() == datetime(2026, 3, 29).date()
    assert (second - first).total_seconds() > 20 * 3600


def test_dst_fall_back_repeated_hour_fires_once() -> None:
    """A 02:30 job on the night 02:00-03:00 happens twice fires once, not twice."""
    berlin = job("30 2 * * * Europe/Berlin")
    start = datetime(2026, 10, 24, 12, tzinfo=UTC)
    ticks = [berlin.next_tick(start)]
    for _ in range(2):
        ticks.append(berlin.next_tick(ticks[-1]))
    days = [t.astimezone(berlin.tz).date() for t in ticks]
    assert len(set(days)) == 3


def test_weekday_names_are_not_taken_for_a_zone() -> None:
    """'0 22 * * MON-FRI' is five fields, UTC."""
    assert job("0 22 * * MON-FRI").zone == "UTC"


@pytest.mark.parametrize("line", ["every 3 hours", "* * *", "61 * * * *", "0 2 * * * Mars/Base"])
def test_bad_lines_name_the_job_and_the_fix(line: str) -> None:
    """A bad cron line is a ConfigError naming the job."""
    with pytest.raises(ConfigError, match="'j'"):
        job(line)


def test_sidekiq_cron_hash_format_loads_unchanged(tmp_path: Path) -> None:
    """The brief's config/sidekiq_schedule.yml loads as written."""
    path = tmp_path / "sidekiq_schedule.yml"
    path.write_text(
        "send_daily_digest:\n  class: SendDailyDigestJob\n  cron: '0 8 * * *'\n  queue: mailers\n"
        "cleanup_old_data:\n  class: CleanupOldDataJob\n  cron: '0 2 * * *'\n"
        "  queue: maintenance\n  args: [30]\n  status: disabled\n"
    )
    jobs = {j.name: j for j in cron.load(path)}
    assert jobs["send_daily_digest"].klass == "SendDailyDigestJob"
    assert jobs["send_daily_digest"].queue == "mailers"
    assert jobs["cleanup_old_data"].args == [30]
    assert jobs["cleanup_old_data"].enabled is False


def test_list_format_and_klass_and_hash_args(tmp_path: Path) -> None:
    """The list form with 'name', 'klass' and a hash of args (wrapped in a list) loads."""
    path = tmp_path / "schedule.yml"
    path.write_text("- name: a\n  klass: A\n  cron: '* * * * *'\n  args: {x: 1}\n  active: false\n")
    (a,) = cron.load(path)
    assert (a.klass, a.args, a.enabled) == ("A", [{"x": 1}], False)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a: {cron: '* * * * *'}", "'class'"),
        ("a: {class: A}", "'cron'"),
        ("a: {class: A, cron: '* * * * *', args: 5}", "args"),
        ("- {class: A, cron: '* * * * *'}", "name"),
        ("a: [", "YAML"),
        ("42", "mapping or list"),
    ],
)
def test_bad_files_say_what_is_wrong(tmp_path: Path, text: str, match: str) -> None:
    """Each schedule-file mistake gets a ConfigError that says what to fix."""
    path = tmp_path / "s.yml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        cron.load(path)
