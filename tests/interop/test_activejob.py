"""ActiveJob both ways with the real thing: Debian's Rails 6.1 ActiveJob on Sidekiq 6.4.

Rails -> Python: activejob_app.rb calls ``perform_later`` with arguments of every
serializer kind Rails 6.1 has; a kiq worker runs them through the Jobs of
tests/support/ajjobs.py (``activejob="AjImport"``, ...), which record each value with
its Python type. Python -> Rails: ``kiq.activejob.enqueue`` writes AjReport jobs with
every Python kind kiq serialises; a real ``sidekiq`` with ActiveJob loaded runs them,
and AjReport records each value with its Ruby class.

Without Ruby, Sidekiq 6.x or the ruby-activejob package the tests skip saying so
(CI installs them and fails instead).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from kiq import activejob
from kiq.activejob import GlobalID, IndifferentDict, RubyModule, Symbol
from tests.interop import conftest as interop
from tests.interop.conftest import (
    FAST_SIDEKIQ_ENV,
    PY_DONE,
    RUBY_DIR,
    RUBY_TIMEOUT,
    SidekiqProcess,
    identity_of,
    wait_for,
    wait_records,
)

pytestmark = [pytest.mark.interop, pytest.mark.timeout(90)]

APP = RUBY_DIR / "activejob_app.rb"
PY_AJ_DONE = "interop:activejob:py"  # tests/support/ajjobs.py records here
RUBY_AJ_DONE = "interop:activejob:done"  # AjReport (activejob_app.rb) records here


@pytest.fixture(scope="module")
def rails_activejob(ruby_sidekiq: Any) -> str:
    """The sidekiq program, once Ruby can load ActiveJob 6.x and GlobalID next to Sidekiq."""
    try:  # tests/support/needs.py (issue 12): the one place that skips for a missing program
        from tests.support.needs import needs_ruby_gem
    except ImportError:  # before it lands: the interop conftest's skip-or-fail
        probe = subprocess.run(
            ["ruby", "-e", 'require "active_job"; require "global_id"'],
            capture_output=True,
            text=True,
            timeout=RUBY_TIMEOUT,
            check=False,
        )
        if probe.returncode != 0:
            first = (probe.stderr.strip().splitlines() or ["no output"])[0][:200]
            interop.unavailable(f"ruby cannot load ActiveJob ({first}); add ruby-activejob")
    else:
        needs_ruby_gem("activejob", require="active_job")
        needs_ruby_gem("globalid", require="global_id", package="ruby-activejob")
    return ruby_sidekiq if isinstance(ruby_sidekiq, str) else str(interop.SIDEKIQ)


def ruby_env(redis_url: str) -> dict[str, str]:
    env = dict(os.environ, REDIS_URL=redis_url, **FAST_SIDEKIQ_ENV)
    env.pop("SIDEKIQ_NAMESPACE", None)
    return env


@pytest.fixture
def rails_enqueue(rails_activejob: str, redis_url: str) -> Callable[[], list[list[str]]]:
    """Run ``activejob_app.rb enqueue`` (every perform_later); the [job_class, job_id]s."""

    def run() -> list[list[str]]:
        done = subprocess.run(
            ["ruby", str(APP), "enqueue"],
            capture_output=True,
            text=True,
            env=ruby_env(redis_url),
            timeout=RUBY_TIMEOUT,
            check=False,
        )
        assert done.returncode == 0, f"activejob_app.rb enqueue failed: {done.stderr}"
        jobs: list[list[str]] = json.loads(done.stdout)["jobs"]
        return jobs

    return run


@pytest.fixture
def rails_worker(
    rails_activejob: str, redis_url: str, r: Any, tmp_path: Path
) -> Iterator[Callable[[], SidekiqProcess]]:
    """Start ``sidekiq -r activejob_app.rb -q activejob``: a Rails-less ActiveJob worker."""
    started: list[SidekiqProcess] = []

    def start() -> SidekiqProcess:
        cmd = [rails_activejob, "-r", str(APP.resolve()), "-q", "activejob", "-c", "2"]
        log = tmp_path / "sidekiq-activejob.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=ruby_env(redis_url), cwd=tmp_path
            )
        process = SidekiqProcess(proc, log)
        started.append(process)

        def beaten() -> str | None:
            assert proc.poll() is None, f"sidekiq exited early:\n{process.output()}"
            return identity_of(r, proc.pid)

        process.identity = wait_for(beaten, timeout=30.0)
        return process

    yield start
    for process in started:
        process.kill()


def t(kind: str, value: Any, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "value": value, **extra}


# -- Rails -> Python ---------------------------------------------------------------------


def test_rails_perform_later_of_every_kind_runs_in_kiq(config, r, rails_enqueue, start_worker):
    """Every Rails 6.1 serializer kind arrives in kiq as its Python value and type."""
    start_worker("-r", "ajjobs", "-q", "activejob", "-c", "2")

    (every, keywords, later, nobody) = rails_enqueue()

    records = {rec["job_id"]: rec for rec in wait_records(r, PY_AJ_DONE, 3, timeout=30.0)}
    assert set(records) == {every[1], keywords[1], later[1]}
    got = records[every[1]]
    assert got["job_class"] == "AjImport"
    assert got["executions"] == 1
    assert got["args"] == [
        t("NoneType", None),
        t("bool", True),
        t("bool", False),
        t("int", 7),
        t("int", 2**70),
        t("float", 1.5),
        t("str", "text ü"),
        t("Symbol", "sym"),
        t("dict", {"string": t("int", 1), "symbol": t("int", 2)},
          keys=[["str", "string"], ["Symbol", "symbol"]]),
        t("dict", {"only": t("str", "strings")}, keys=[["str", "only"]]),
        t("IndifferentDict", {"a": t("int", 1)}),
        t("list", [t("int", 1), t("list", [
            t("Symbol", "nested"), t("dict", {"k": t("Symbol", "v")}, keys=[["str", "k"]])])]),
        t("datetime", "2026-12-03T13:54:39.500000+00:00", zone=None),
        t("datetime", "2026-12-03T14:30:15.250000+01:00", zone="Europe/Berlin"),  # Time.zone
        t("datetime", "2026-12-03T13:54:39+02:00", zone=None),
        t("date", "2026-12-03"),
        t("timedelta", 300.0),
        t("timedelta", 93600.0),
        t("str", "12.345"),  # Rails 6.1 sends a BigDecimal as a JSON string
        t("RubyModule", "Integer"),
        t("GlobalID", "gid://shop/Customer/42"),
    ]  # fmt: skip
    assert records[keywords[1]]["args"] == [t("int", 1)]
    assert records[keywords[1]]["kwargs"] == {
        "mode": t("str", "full"),
        "at": t("date", "2026-01-02"),
        "tags": t("list", [t("Symbol", "a")]),
    }
    assert records[later[1]]["args"] == [t("str", "later")]
    assert records[later[1]]["priority"] == 3
    # AjNobody is claimed by no activejob= Job: it reaches the Job tests/support/jobs.py
    # registers under the wrapper's own name, with the raw envelope (the fallback).
    (raw,) = wait_records(r, PY_DONE, 1)
    assert raw["class"] == activejob.LEGACY_WRAPPER
    assert raw["wrapped"] == "AjNobody"
    assert raw["args"][0]["job_id"] == nobody[1]
    assert raw["args"][0]["arguments"] == [1]


# -- Python -> Rails ---------------------------------------------------------------------


def describe_ruby(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in arg.items() if k != "keys"} for arg in record["args"]]


def test_kiq_enqueue_of_every_kind_runs_in_a_rails_worker(config, r, rails_worker):
    """kiq.activejob.enqueue's jobs run in Ruby's ActiveJob with the Ruby value of each kind."""
    rails_worker()
    berlin = datetime(2026, 12, 3, 14, 30, 15, 250000, ZoneInfo("Europe/Berlin"))
    values = [
        None, True, False, 7, 2**70, 1.5, "text ü",
        Symbol("sym"),
        {"string": 1, Symbol("symbol"): 2},
        IndifferentDict(a=1),
        [1, [Symbol("nested")]],
        datetime(2026, 12, 3, 13, 54, 39, 500000, UTC),
        berlin,
        datetime(2026, 12, 3, 13, 54, 39, tzinfo=timezone(timedelta(hours=2))),
        date(2026, 12, 3),
        timedelta(minutes=5),
        Decimal("12.345"),
        RubyModule("Integer"),
        GlobalID("gid://shop/Customer/42"),
    ]  # fmt: skip
    now_jid = activejob.enqueue("AjReport", *values, queue="activejob", priority=4)
    later_jid = activejob.enqueue(
        "AjReport", 1, kwargs={"mode": "full", "at": date(2026, 1, 2)}, queue="activejob", wait=0.5
    )

    records = wait_records(r, RUBY_AJ_DONE, 2, timeout=30.0)

    by_jid = {rec["provider_job_id"]: rec for rec in records}  # Rails: the Sidekiq jid
    first, second = by_jid[now_jid], by_jid[later_jid]
    assert first["job_class"] == "AjReport"
    assert first["priority"] == 4
    assert first["executions"] == 1
    assert describe_ruby(first) == [
        {"class": "NilClass", "value": None},
        {"class": "TrueClass", "value": True},
        {"class": "FalseClass", "value": False},
        {"class": "Integer", "value": 7},
        {"class": "Integer", "value": 2**70},
        {"class": "Float", "value": 1.5},
        {"class": "String", "value": "text ü"},
        {"class": "Symbol", "value": "sym"},
        {"class": "Hash", "value": {"string": {"class": "Integer", "value": 1},
                                    "symbol": {"class": "Integer", "value": 2}}},
        {"class": "HashWithIndifferentAccess", "value": {"a": {"class": "Integer", "value": 1}}},
        {"class": "Array", "value": [
            {"class": "Integer", "value": 1},
            {"class": "Array", "value": [{"class": "Symbol", "value": "nested"}]}]},
        {"class": "Time", "value": "2026-12-03T13:54:39.500000000Z"},
        {"class": "TimeWithZone", "value": "2026-12-03T14:30:15.250000000+01:00",
         "zone": "Europe/Berlin"},
        {"class": "Time", "value": "2026-12-03T13:54:39.000000000+02:00"},
        {"class": "Date", "value": "2026-12-03"},
        {"class": "Duration", "value": 300},
        {"class": "String", "value": "12.345"},  # Rails 6.1 has no BigDecimal serializer
        {"class": "Module", "value": "Integer"},
        {"class": "Customer", "value": "42"},
    ]  # fmt: skip
    assert first["args"][8]["keys"] == [["String", "string"], ["Symbol", "symbol"]]
    assert describe_ruby(second) == [{"class": "Integer", "value": 1}]
    assert second["kwargs"] == {
        "mode": {"class": "String", "value": "full"},
        "at": {"class": "Date", "value": "2026-01-02"},
    }
