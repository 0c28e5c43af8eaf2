"""Payload fields are checked once, at the door (issue 12).

``payload.loads`` hands the engine typed values only: a bad value in a field the engine
acts on makes that one job dead with a message naming the field, a bad value in a field
that only describes the job is dropped with a warning, and what Ruby Sidekiq writes is
accepted as it is. The client refuses at push what the worker would refuse. The real
worker tests show a bad job costs only itself: its neighbours run, the process keeps
beating, recovering and timing jobs out (defects 1 and 4).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys
import time
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kiq
from kiq import payload as wire
from kiq.client import Client
from kiq.errors import PayloadError
from kiq.handlers import call_each
from kiq.retry import REFUSED, RetryHandler
from tests.conftest import ROOT
from tests.support.jobs import identity_of, records
from tests.support.wait import wait_until

NOW = 1_700_000_000.0
BASE: dict[str, Any] = {"class": "Record", "args": [1], "jid": "j1", "queue": "default"}


def raw_job(**fields: Any) -> bytes:
    """A payload as a Ruby or hand-written producer would LPUSH it (stdlib JSON, so a
    bignum stays exact)."""
    return json.dumps({**BASE, **fields}).encode()


# -- fields that refuse the job ----------------------------------------------------------

FATAL = [
    ("jid", 5),
    ("jid", ["j"]),
    ("queue", ""),
    ("queue", 7),
    ("retry_queue", ""),
    ("retry_queue", {"q": 1}),
    ("retry", "x"),
    ("retry", "3"),
    ("retry", 1.5),
    ("retry", -1),
    ("retry", 2**31),
    ("retry_count", "x"),
    ("retry_count", -(2**31)),
    ("retry_count", 2.0),
    ("retry_count", True),
    ("retry_count", 10**30),  # beyond 64 bits: orjson reads a float, the exact pass an int
    ("kiq_recoveries", "x"),  # defect 1: int("x") in every worker's heartbeat thread
    ("kiq_recoveries", -3),
    ("kiq_recoveries", [1]),
    ("retry_for", "2 days"),
    ("retry_for", -1),
    ("retry_for", 1e9),
    ("timeout", 1e300),  # defect 4: OverflowError in the reaper, timeouts off for all
    ("timeout", "nan"),  # defect 4: float("nan") made the reaper spin a core
    ("timeout", 0),
    ("timeout", -2),
    ("timeout", "30"),
    ("timeout", True),
    ("timeout", 86_401),
    ("at", "soon"),
    ("at", True),
]


@pytest.mark.parametrize(("field", "value"), FATAL, ids=[f"{f}={v!r}"[:40] for f, v in FATAL])
def test_a_bad_value_in_a_field_the_engine_acts_on_refuses_the_job(field: str, value: Any) -> None:
    """loads raises PayloadError naming the field and value, with the job attached."""
    with pytest.raises(PayloadError) as caught:
        wire.loads(raw_job(**{field: value}))

    message = str(caught.value)
    assert f"{field}=" in message
    assert "the job was not run" in message
    assert caught.value.job is not None
    if field != "jid":
        assert "jid='j1'" in message
        assert caught.value.job["jid"] == "j1"


def test_the_message_says_what_is_allowed() -> None:
    """The message tells the fix: the allowed values, not only that the value is wrong."""
    with pytest.raises(PayloadError, match=r"timeout=1e\+300 must be seconds > 0 and at most"):
        wire.loads(raw_job(timeout=1e300))
    with pytest.raises(PayloadError, match=r"kiq_recoveries='x' must be an integer from 0"):
        wire.loads(raw_job(kiq_recoveries="x"))


# -- fields that are ignored -------------------------------------------------------------

IGNORED = [
    ("created_at", "yesterday"),
    ("enqueued_at", []),
    ("failed_at", {"t": 1}),
    ("retried_at", True),
    ("discarded_at", "x"),
    ("backtrace", "5"),
    ("dead", "false"),
    ("wrapped", "Mailer class=Spoofed jid=x"),
    ("wrapped", "Mailer\nforged line"),
    ("wrapped", ""),
    ("wrapped", 5),
    ("log_level", ["debug"]),
    ("tags", "vip"),
    ("tags", ["vip", 1]),
    ("bid", 5),
    ("error_class", 5),
    ("error_message", ["boom"]),
    ("error_backtrace", 7),
    ("error_backtrace", {"line": 1}),
]


@pytest.mark.parametrize(("field", "value"), IGNORED, ids=[f"{f}={v!r}"[:40] for f, v in IGNORED])
def test_a_bad_value_in_a_descriptive_field_is_dropped_with_a_warning(
    field: str, value: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The job is kept without the field; one warning names the field and the job."""
    with caplog.at_level(logging.WARNING, logger="kiq.payload"):
        job = wire.loads(raw_job(**{field: value}))

    assert field not in job
    assert job == BASE
    (record,) = caplog.records
    assert f"{field}=" in record.getMessage()
    assert "jid='j1'" in record.getMessage()


# -- what Sidekiq and kiq write is accepted ----------------------------------------------

ACCEPTED = [
    {"retry": True},
    {"retry": False},
    {"retry": 0},
    {"retry": 25},
    {"retry_count": 0, "failed_at": 1700000000.5, "retried_at": 1700000100.25},
    {"retry_count": -1},  # Sidekiq's API lowers 0 to -1 for a manual retry
    {"error_backtrace": ["app.rb:1:in `x'"]},  # very old Sidekiq: a plain array
    {"created_at": 1700000000123, "enqueued_at": 1700000000124},  # Sidekiq 8: int ms
    {"created_at": 1700000000.123456, "enqueued_at": 1700000000.2},  # 6.4/7.x: float s
    {"created_at": 1700000000, "at": 1700000000},  # int seconds
    {"backtrace": True},
    {"backtrace": False},
    {"backtrace": 10},
    {"dead": False},
    {"retry_for": 172_800},
    {"retry_for": 3600.5},
    {"timeout": 30},
    {"timeout": 0.5},
    {"timeout": 86_400},
    {"kiq_recoveries": 2},
    {"wrapped": "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper"},
    {"wrapped": "SendWelcomeEmail"},
    {"wrapped": "tests.support.jobs.Record"},
    {"log_level": "debug"},
    {"log_level": 10},
    {"tags": ["vip", "billing"]},
    {"bid": "b-123", "error_class": "NoMethodError", "error_message": "boom"},
    {"error_backtrace": "eJyLjgUAARUAuQ=="},
    {"retry_queue": "low", "cattr": {"user": 7}, "locale": "fr", "unique_for": 60},
]


@pytest.mark.parametrize("fields", ACCEPTED, ids=[repr(f)[:50] for f in ACCEPTED])
def test_sidekiq_shaped_fields_are_accepted_unchanged(
    fields: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Every shape Sidekiq 6.4-8.x (or kiq) writes loads as it was, without a warning."""
    with caplog.at_level(logging.WARNING, logger="kiq.payload"):
        job = wire.loads(raw_job(**fields))

    assert job == {**BASE, **fields}
    assert caplog.records == []


def test_null_fields_read_as_absent_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """Ruby reads nil as absent: a null retry, retry_count or timeout is dropped quietly."""
    nulls = dict.fromkeys(("retry", "retry_count", "timeout", "kiq_recoveries", "wrapped"))
    with caplog.at_level(logging.WARNING, logger="kiq.payload"):
        job = wire.loads(raw_job(**nulls))

    assert job == BASE
    assert caplog.records == []


def test_an_exact_bignum_argument_survives_the_check() -> None:
    """The check and the bignum search share one pass: a 30-digit argument stays exact."""
    job = wire.loads(raw_job(args=[10**30, {"n": -(10**25)}], created_at=1700000000.5))
    assert job["args"] == [10**30, {"n": -(10**25)}]


_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([2**31, -(2**31), 10**30, 1e300, -1.5, 0, 86_400, 86_401])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | st.sampled_from(["", "Mailer", "A::B", "a b", "x=y"])
)
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=2), max_leaves=4)


@settings(max_examples=300, deadline=None, database=None)
@given(st.dictionaries(st.sampled_from(sorted(wire._FIELDS)), _VALUES, max_size=8))
def test_loads_hands_out_only_checked_values(fields: dict[str, Any]) -> None:
    """Whatever the known fields hold, loads either refuses the job or returns one in
    which every known field passes its rule: the engine never reads an unchecked value."""
    raw = json.dumps({"class": "Record", "args": [], **fields}).encode()
    try:
        job = wire.loads(raw)
    except PayloadError as exc:
        refused: PayloadError | None = exc
    else:
        refused = None
    if refused is not None:
        assert refused.job is not None  # a field was named: buried with its message
        return
    for key, value in job.items():
        if key in wire._FIELDS:
            assert value is not None
            assert wire.field_problem(key, value) is None, (key, value)


# -- the client refuses what the worker would --------------------------------------------


class Timed(kiq.Job, name="test_payload_fields.Timed"):
    def perform(self) -> None: ...


@pytest.mark.parametrize("timeout", [1e300, math.inf, math.nan, 0, 86_401, "30"])
def test_client_refuses_a_timeout_the_worker_could_not_keep(config, r, timeout: Any) -> None:
    """Defect 4, client side: push with such a timeout raises and writes nothing."""
    with pytest.raises(kiq.JobArgumentError, match="timeout="):
        Client(config).push({"class": "Timed", "args": [], "timeout": timeout})
    assert r.keys("queue:*") == []


@pytest.mark.parametrize("timeout", [1e300, math.nan, math.inf])
def test_set_refuses_a_timeout_the_worker_could_not_keep(timeout: float) -> None:
    """``Job.set(timeout=1e300)`` fails at once with the rule, before any push."""
    with pytest.raises(kiq.ConfigError, match=r"timeout=.* must be seconds > 0 and at most"):
        Timed.set(timeout=timeout)


def test_a_job_class_option_is_held_to_the_same_rules() -> None:
    """A class defined with an unusable option fails at definition, as set() does."""
    with pytest.raises(kiq.ConfigError, match="timeout=1e"):

        class Bad(kiq.Job, timeout=1e300):
            def perform(self) -> None: ...

    with pytest.raises(kiq.ConfigError, match="tags="):

        class BadTags(kiq.Job, tags="vip"):
            def perform(self) -> None: ...


@pytest.mark.parametrize(
    ("field", "value"),
    [("retry_count", "x"), ("kiq_recoveries", -1), ("wrapped", "a b"), ("jid", 5)],
)
def test_client_refuses_any_field_the_worker_would_refuse_or_drop(
    config, field: str, value: Any
) -> None:
    """Client.push applies the door's rules to every field it is given."""
    with pytest.raises(kiq.JobArgumentError, match=f"{field}=.*the worker would refuse"):
        Client(config).push({"class": "Record", "args": [], field: value})


# -- retry bookkeeping reads the checked values ------------------------------------------


def test_moving_a_job_to_the_dead_set_logs_one_warning(config, r, caplog) -> None:
    """Issue 12: nothing was logged when a job died; now one WARNING line names the
    class, jid, queue and error."""
    raw = wire.dumps(Client(config).normalize({"class": "Record", "args": [1], "retry": 0}))
    with caplog.at_level(logging.WARNING, logger="kiq.retry"):
        outcome = RetryHandler(config).handle(raw, "default", RuntimeError("boom 7"), None, NOW)

    assert outcome == "dead"
    jid = orjson.loads(raw)["jid"]
    lines = [rec for rec in caplog.records if rec.name == "kiq.retry"]
    assert [(rec.levelno, rec.getMessage()) for rec in lines] == [
        (logging.WARNING, f"dead: class=Record jid={jid} queue=default error=RuntimeError: boom 7")
    ]


def test_a_retried_job_is_not_logged_as_dead(config, r, caplog) -> None:
    """The dead line is for the dead set only: a scheduled retry logs no such line."""
    raw = wire.dumps(Client(config).normalize({"class": "Record", "args": [1]}))
    with caplog.at_level(logging.WARNING, logger="kiq.retry"):
        assert RetryHandler(config).handle(raw, "default", RuntimeError("x"), None, NOW) == "retry"
    assert "dead:" not in caplog.text


def test_retry_for_ends_retries_once_the_first_failure_is_that_old(config, r) -> None:
    """Sidekiq 7.1.3+: with ``retry_for`` the job dies once failed_at + retry_for passed."""
    handler = RetryHandler(config)
    young = Client(config).normalize(
        {"class": "Record", "args": [1], "retry_for": 3600, "retry_count": 0, "failed_at": NOW - 60}
    )
    old = dict(young, jid="old", failed_at=NOW - 7200)

    assert handler.handle(wire.dumps(young), "default", RuntimeError("x"), None, NOW) == "retry"
    assert handler.handle(wire.dumps(old), "default", RuntimeError("x"), None, NOW) == "dead"


def test_a_custom_delay_that_would_never_come_uses_the_default(config, r) -> None:
    """retry_in returning inf or 1e300 cannot park a job forever: the default applies."""

    class Forever(kiq.Job, name="test_payload_fields.Forever"):
        @classmethod
        def retry_in(cls, count, exc, payload):
            return math.inf

    raw = wire.dumps(Client(config).normalize({"class": Forever, "args": []}))
    assert RetryHandler(config).handle(raw, "default", RuntimeError("x"), Forever, NOW) == "retry"
    ((_, score),) = r.zrange("retry", 0, -1, withscores=True)
    assert NOW + 15 <= score <= NOW + 15 + 9


def test_bury_keeps_a_refused_job_with_its_reason(config, r) -> None:
    """A job refused at the door goes to the dead set with error_class kiq.PayloadError
    and the message; the error handlers hear of it, the death handlers do not."""
    errors: list[tuple[BaseException, dict[str, Any]]] = []
    deaths: list[Any] = []
    config.error_handlers.append(lambda exc, ctx: errors.append((exc, ctx)))
    config.death_handlers.append(lambda payload, exc: deaths.append(payload))
    raw = raw_job(kiq_recoveries="x")
    with pytest.raises(PayloadError) as caught:
        wire.loads(raw)

    RetryHandler(config).bury(raw, "default", caught.value)

    (member,) = r.zrange("dead", 0, -1)
    payload = orjson.loads(member)
    assert (payload["jid"], payload["kiq_recoveries"]) == ("j1", "x")
    assert payload["error_class"] == REFUSED
    assert "kiq_recoveries='x'" in payload["error_message"]
    assert isinstance(payload["failed_at"], float)
    assert [(exc, ctx["jobstr"]) for exc, ctx in errors] == [(caught.value, raw)]
    assert deaths == []


def test_call_each_logs_a_raising_handler_and_calls_the_next(caplog) -> None:
    """The one handler loop: a handler that raises is logged with its traceback and the
    handlers after it still run."""
    calls: list[Any] = []

    def broken(*args: Any) -> None:
        raise RuntimeError("handler bug")

    with caplog.at_level(logging.ERROR, logger="kiq.handlers"):
        call_each([broken, lambda *args: calls.append(args)], "death handler", {"jid": "j"}, 7)

    assert calls == [({"jid": "j"}, 7)]
    (record,) = caplog.records
    assert record.getMessage().startswith("death handler <function")
    assert record.exc_info is not None
    assert "handler bug" in str(record.exc_info[1])


# -- real workers --------------------------------------------------------------------------

QUICK_BEAT = ":process_ttl: 5\n:orphan_check_interval: 2\n:heartbeat_interval: 1\n"
DEAD_IDENTITY = "ghost:4242:dead00000000"


def dead_members(r, key: str = "jid") -> dict[str, dict[str, Any]]:
    return {p[key]: p for p in (orjson.loads(m) for m in r.zrange("dead", 0, -1))}


def no_thread_crash(log: str) -> None:
    assert "Exception in thread" not in log
    assert re.search(r"processor \d+ died", log) is None  # the processor's watchdog line


@pytest.mark.slow
def test_each_bad_field_costs_only_its_own_job(config, r, start_worker) -> None:
    """One bad payload per refusing field, each between good jobs, on a real worker:
    every bad one is in the dead set with its field named, every good one ran, a job
    with an ignored field ran too, and no engine thread crashed."""
    good: list[str] = []
    bad: dict[str, str] = {}
    r.sadd("queues", "default")
    for index, (field, value) in enumerate(FATAL):
        jid = f"bad{index}"
        bad[jid] = field
        r.lpush("queue:default", json.dumps({**BASE, "jid": jid, "test_id": jid, field: value}))
        good_jid = f"good{index}"
        good.append(good_jid)
        r.lpush("queue:default", json.dumps({**BASE, "jid": good_jid, "args": [index]}))
    r.lpush("queue:default", json.dumps({**BASE, "jid": "odd", "tags": "vip", "wrapped": "a b"}))

    worker = start_worker("-c", "4")

    wait_until(lambda: r.zcard("dead") == len(bad) and len(records(r)) == len(good) + 1, 30)
    died = dead_members(r, "test_id")  # not the jid: some of them have a bad one
    assert set(died) == set(bad)
    for jid, field in bad.items():
        assert died[jid]["error_class"] == REFUSED
        assert f"{field}=" in died[jid]["error_message"], died[jid]
    assert sorted(d["jid"] for d in records(r)) == sorted([*good, "odd"])
    assert r.zcard("retry") == 0
    assert r.llen("queue:default") == 0
    log = wait_until(
        lambda: worker.output().count("dead: class=Record") == len(bad) and worker.output(), 5
    )
    assert "ignored tags='vip'" in log
    assert "class=Record jid=odd" in log  # defect 8: a bad wrapped no longer names the class
    assert "class=a b" not in log
    no_thread_crash(log)
    assert identity_of(r, worker.pid) is not None


@pytest.mark.slow
def test_a_huge_or_nan_timeout_leaves_timeouts_working_for_the_others(
    config, r, start_worker
) -> None:
    """Defect 4: ``timeout: 1e300`` (or ``"nan"``) killed the reaper thread, after which a
    job with ``timeout: 1`` ran its full 4 s. Now both bad jobs are dead with the message
    and the next job is stopped by its 1 s timeout."""
    r.sadd("queues", "default")
    for jid, timeout in (("huge", 1e300), ("nan", "nan")):
        r.lpush(
            "queue:default",
            json.dumps({**BASE, "class": "Slow", "args": [0.1], "jid": jid, "timeout": timeout}),
        )
    worker = start_worker("-c", "2")
    wait_until(lambda: r.zcard("dead") == 2, 20)
    started = time.monotonic()

    kiq.Client(config).push({"class": "Slow", "args": [4, "timed"], "timeout": 1, "jid": "timed"})

    (member,) = wait_until(lambda: r.zrange("retry", 0, -1), 10)
    assert time.monotonic() - started < 3.5  # the job would have run 4 s
    assert orjson.loads(member)["error_class"] == "JobTimeout"
    assert "timed" not in [d["jid"] for d in records(r)]
    died = dead_members(r)
    assert "timeout=1e+300" in died["huge"]["error_message"]
    assert "timeout='nan'" in died["nan"]["error_message"]
    no_thread_crash(worker.output())


def beat_of(r, identity: str) -> float:
    value = r.hget(identity, "beat")
    return float(value) if value else 0.0


@pytest.mark.slow
def test_a_bad_kiq_recoveries_never_stops_beating_or_recovering(
    config, r, start_worker, redis_url
) -> None:
    """Defect 1: ``kiq_recoveries: "x"`` in a dead process's in-progress list raised
    ValueError in every worker's heartbeat thread (status showed 0 processes). Now the
    sweep requeues it unread, the worker buries it with the message, the process keeps
    beating (``kiq status`` lists it) and keeps recovering: a second orphan planted later
    is requeued and runs."""
    bad = {"class": "Segv", "jid": "j", "kiq_recoveries": "x", "args": []}
    config.store.register_fetcher(DEAD_IDENTITY, orjson.dumps(["default"]))
    r.lpush(f"kiq|inprogress|{DEAD_IDENTITY}|default", json.dumps(bad))
    r.lpush("queue:default", json.dumps({**bad, "jid": "j2"}))  # the LPUSH as well
    r.sadd("queues", "default")

    worker = start_worker("-c", "2", config_text=QUICK_BEAT)

    died = wait_until(lambda: len(dead_members(r)) == 2 and dead_members(r), 20)
    for jid in ("j", "j2"):
        assert died[jid]["error_class"] == REFUSED
        assert "kiq_recoveries='x'" in died[jid]["error_message"]
    identity = wait_until(lambda: identity_of(r, worker.pid), 10)
    first = wait_until(lambda: beat_of(r, identity), 10)
    wait_until(lambda: beat_of(r, identity) > first, 5)  # still beating after the sweep

    config.store.register_fetcher(DEAD_IDENTITY, orjson.dumps(["default"]))
    r.lpush(f"kiq|inprogress|{DEAD_IDENTITY}|default", json.dumps({**BASE, "jid": "later"}))
    wait_until(lambda: "later" in [d["jid"] for d in records(r)], 15)

    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    env.pop("KIQ_REDIS_URL", None)
    status = subprocess.run(
        [sys.executable, "-m", "kiq.cli", "status", "--redis-url", redis_url],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    assert "Processes: 1 " in status.stdout
    assert identity in status.stdout
    assert worker.proc.poll() is None
    no_thread_crash(worker.output())
