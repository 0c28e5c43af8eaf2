"""kiq.activejob: ActiveJob envelopes both ways, on payloads exactly as Rails writes them.

The Rails 6.1 payloads below were written by Debian's ruby-activejob 6.1.7 with
Sidekiq 6.4's adapter (tests/interop/ruby/activejob_app.rb, ``perform_later``) and
copied verbatim; the Rails 7.1+ serializers (Range, BigDecimal, TimeWithZone with its
zone) follow activejob/lib/active_job/serializers/*.rb of 7.1-8.x. The end-to-end runs
against real Ruby are in tests/interop/test_activejob.py.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import kiq
from kiq import activejob
from kiq.activejob import (
    LEGACY_WRAPPER,
    SIDEKIQ_WRAPPER,
    GlobalID,
    IndifferentDict,
    RubyModule,
    RubyRange,
    Symbol,
    deserialize,
    serialize,
    split_arguments,
)
from kiq.errors import ConfigError, JobArgumentError
from kiq.job import _registry as job_registry
from kiq.job import lookup
from tests.support.inprocess import running
from tests.support.wait import wait_until

S = "ActiveJob::Serializers::"

# AjImport.perform_later(nil, true, false, 7, 2**70, 1.5, "text ü", :sym,
#   {"string" => 1, :symbol => 2}, {"only" => "strings"}, HashWithIndifferentAccess("a" => 1),
#   [1, [:nested, {"k" => :v}]], Time.utc(2026,12,3,13,54,39.5), Time.zone.local(...) in
#   Europe/Berlin, DateTime.new(2026,12,3,13,54,39,"+02:00"), Date.new(2026,12,3),
#   5.minutes, 1.day + 2.hours, BigDecimal("12.345"), Integer, Customer.new(42))
RAILS_61_ARGUMENTS = json.loads(
    r"""[null, true, false, 7, 1180591620717411303424, 1.5, "text \u00fc",
 {"_aj_serialized": "ActiveJob::Serializers::SymbolSerializer", "value": "sym"},
 {"string": 1, "symbol": 2, "_aj_symbol_keys": ["symbol"]},
 {"only": "strings", "_aj_symbol_keys": []},
 {"a": 1, "_aj_hash_with_indifferent_access": true},
 [1, [{"_aj_serialized": "ActiveJob::Serializers::SymbolSerializer", "value": "nested"},
      {"k": {"_aj_serialized": "ActiveJob::Serializers::SymbolSerializer", "value": "v"},
       "_aj_symbol_keys": []}]],
 {"_aj_serialized": "ActiveJob::Serializers::TimeSerializer",
  "value": "2026-12-03T13:54:39.500000000Z"},
 {"_aj_serialized": "ActiveJob::Serializers::TimeWithZoneSerializer",
  "value": "2026-12-03T14:30:15.250000000+01:00"},
 {"_aj_serialized": "ActiveJob::Serializers::DateTimeSerializer",
  "value": "2026-12-03T13:54:39.000000000+02:00"},
 {"_aj_serialized": "ActiveJob::Serializers::DateSerializer", "value": "2026-12-03"},
 {"_aj_serialized": "ActiveJob::Serializers::DurationSerializer", "value": 300,
  "parts": [[{"_aj_serialized": "ActiveJob::Serializers::SymbolSerializer",
              "value": "minutes"}, 5]]},
 {"_aj_serialized": "ActiveJob::Serializers::DurationSerializer", "value": 93600,
  "parts": [[{"_aj_serialized": "ActiveJob::Serializers::SymbolSerializer", "value": "days"}, 1],
            [{"_aj_serialized": "ActiveJob::Serializers::SymbolSerializer", "value": "hours"},
             2]]},
 "12.345",
 {"_aj_serialized": "ActiveJob::Serializers::ModuleSerializer", "value": "Integer"},
 {"_aj_globalid": "gid://shop/Customer/42"}]"""
)

# AjKeywords.perform_later(1, mode: "full", at: Date.new(2026, 1, 2), tags: [:a])
RAILS_61_KEYWORDS = json.loads(
    r"""[1, {"mode": "full",
 "at": {"_aj_serialized": "ActiveJob::Serializers::DateSerializer", "value": "2026-01-02"},
 "tags": [{"_aj_serialized": "ActiveJob::Serializers::SymbolSerializer", "value": "a"}],
 "_aj_ruby2_keywords": ["mode", "at", "tags"]}]"""
)


def rails_payload(
    wrapper: str, job_class: str, arguments: list[Any], **envelope: Any
) -> dict[str, Any]:
    """What Sidekiq 6.4's (or 7.3+'s) adapter pushes for ``perform_later``."""
    data = {
        "job_class": job_class,
        "job_id": "68544b8b-5b4c-41cc-b8e9-5cf82a1244a9",
        "provider_job_id": None,
        "queue_name": "activejob",
        "priority": None,
        "arguments": arguments,
        "executions": 0,
        "exception_executions": {},
        "locale": "en",
        "timezone": "Europe/Berlin",
        "enqueued_at": "2026-12-04T19:49:46Z",
        **envelope,
    }
    return {
        "retry": True,
        "queue": "activejob",
        "class": wrapper,
        "wrapped": job_class,
        "args": [data],
        "jid": "65a1e08f5b0d8eca9c29d6fb",
        "created_at": 1796413786.426709,
        "enqueued_at": 1796413786.427201,
    }


# -- Ruby -> Python: the deserialiser ----------------------------------------------------


def test_every_rails_61_serializer_kind_deserialises_to_its_python_value():
    """Each argument kind Rails 6.1 writes becomes the Python value it stands for."""
    values = deserialize(RAILS_61_ARGUMENTS)

    assert values[:7] == [None, True, False, 7, 2**70, 1.5, "text ü"]
    assert type(values[7]) is Symbol
    assert values[7] == "sym"
    assert values[8] == {"string": 1, "symbol": 2}
    assert [type(k) for k in values[8]] == [str, Symbol]
    assert values[9] == {"only": "strings"}
    assert type(values[9]) is dict
    assert type(values[10]) is IndifferentDict
    assert values[10] == {"a": 1}
    assert values[11] == [1, ["nested", {"k": "v"}]]
    assert type(values[11][1][0]) is Symbol
    assert type(values[11][1][1]["k"]) is Symbol
    assert values[12] == datetime(2026, 12, 3, 13, 54, 39, 500000, UTC)
    berlin = values[13]
    assert berlin == datetime(2026, 12, 3, 13, 30, 15, 250000, UTC)
    assert berlin.utcoffset() == timedelta(hours=1)
    assert values[14] == datetime(2026, 12, 3, 13, 54, 39, tzinfo=timezone(timedelta(hours=2)))
    assert values[15] == date(2026, 12, 3)
    assert type(values[15]) is date
    assert values[16] == timedelta(minutes=5)
    assert values[17] == timedelta(days=1, hours=2)
    assert values[18] == "12.345"  # Rails 6.1 writes a BigDecimal as a JSON string
    assert type(values[19]) is RubyModule
    assert values[19] == "Integer"
    assert type(values[20]) is GlobalID
    assert values[20] == "gid://shop/Customer/42"


def test_rails_61_time_with_zone_takes_the_envelopes_timezone():
    """Without 7.1's ``time_zone``, a TimeWithZone is put in the envelope's timezone."""
    zoned = RAILS_61_ARGUMENTS[13]

    (in_berlin,) = deserialize([zoned], zone="Europe/Berlin")
    (rails_name,) = deserialize([zoned], zone="Eastern Time (US & Canada)")

    assert in_berlin.tzinfo == ZoneInfo("Europe/Berlin")
    assert in_berlin == datetime(2026, 12, 3, 13, 30, 15, 250000, UTC)
    assert rails_name.utcoffset() == timedelta(hours=1)  # no tz key: the offset stays


def test_globalid_goes_through_the_configured_locator():
    """``{"_aj_globalid": ...}`` is handed to the locator hook; its result is the argument."""
    located = deserialize([{"_aj_globalid": "gid://shop/Customer/42"}], lambda gid: ("C", gid))

    assert located == [("C", "gid://shop/Customer/42")]


def test_ruby2_keywords_hash_becomes_python_keyword_arguments():
    """A last hash flagged ``_aj_ruby2_keywords`` (Ruby keywords) splits off as kwargs."""
    args, kwargs = split_arguments(RAILS_61_KEYWORDS)

    assert args == [1]
    assert kwargs == {"mode": "full", "at": date(2026, 1, 2), "tags": ["a"]}
    assert [type(k) for k in kwargs] == [str, str, str]


def test_a_symbol_keyed_hash_is_not_taken_for_keywords():
    """Only ``_aj_ruby2_keywords`` means keywords: ``_aj_symbol_keys`` stays a positional hash."""
    args, kwargs = split_arguments([{"a": 1, "_aj_symbol_keys": ["a"]}])

    assert (args, kwargs) == ([{"a": 1}], {})


def test_rails_71_serializers_range_bigdecimal_and_zoned_time():
    """Rails 7.1+: RangeSerializer, BigDecimalSerializer, TimeWithZone with ``time_zone``."""
    arguments = [
        {"_aj_serialized": f"{S}RangeSerializer", "begin": 1, "end": 10, "exclude_end": False},
        {"_aj_serialized": f"{S}RangeSerializer", "begin": 1, "end": 10, "exclude_end": True},
        {"_aj_serialized": f"{S}RangeSerializer", "begin": "a", "end": "z", "exclude_end": False},
        {"_aj_serialized": f"{S}BigDecimalSerializer", "value": "0.12345e2"},
        {
            "_aj_serialized": f"{S}TimeWithZoneSerializer",
            "value": "2026-12-03T14:30:15.250000000+01:00",
            "time_zone": "Europe/Berlin",
        },
    ]

    inclusive, exclusive, letters, money, zoned = deserialize(arguments)

    assert inclusive == range(1, 11)
    assert exclusive == range(1, 10)
    assert letters == RubyRange("a", "z", exclude_end=False)
    assert money == Decimal("12.345")
    assert zoned.tzinfo == ZoneInfo("Europe/Berlin")
    assert zoned == datetime(2026, 12, 3, 13, 30, 15, 250000, UTC)


def test_unknown_serializer_names_itself_and_the_fix():
    """A custom Rails serializer kiq cannot read fails saying how to add a reader."""
    with pytest.raises(activejob.DeserializationError, match="register_deserializer"):
        deserialize([{"_aj_serialized": "MoneySerializer", "cents": 100}])


# -- Python -> Ruby: the serialiser -------------------------------------------------------


def test_python_values_serialise_as_rails_61_writes_them():
    """The Python forms of the Rails 6.1 kinds serialise to the exact hashes Rails wrote."""
    berlin = datetime(2026, 12, 3, 14, 30, 15, 250000, ZoneInfo("Europe/Berlin"))
    values = [
        None, True, False, 7, 2**70, 1.5, "text ü",
        Symbol("sym"),
        {"string": 1, Symbol("symbol"): 2},
        {"only": "strings"},
        IndifferentDict(a=1),
        [1, [Symbol("nested"), {"k": Symbol("v")}]],
        datetime(2026, 12, 3, 13, 54, 39, 500000, timezone(timedelta(0))),
    ]  # fmt: skip

    out = serialize(values)

    assert out == RAILS_61_ARGUMENTS[:13]
    assert serialize([berlin]) == [
        {"_aj_serialized": f"{S}TimeWithZoneSerializer", "value": RAILS_61_ARGUMENTS[13]["value"]}
    ]
    assert serialize([date(2026, 12, 3), RubyModule("Integer"), GlobalID("gid://shop/C/42")]) == [
        RAILS_61_ARGUMENTS[15],
        RAILS_61_ARGUMENTS[19],
        {"_aj_globalid": "gid://shop/C/42"},
    ]
    assert serialize([Decimal("12.345")]) == ["12.345"]


def test_deserialise_of_serialise_is_identity_for_every_kind():
    """Every Python value kiq can send comes back as itself (Rails 7.1 format)."""
    values = [
        Symbol("s"),
        {Symbol("k"): [1, {"x": None}]},
        IndifferentDict(a=[Symbol("b")]),
        datetime(2026, 1, 2, 3, 4, 5, 6, ZoneInfo("America/New_York")),
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=-3))),
        date(2026, 1, 2),
        timedelta(seconds=90.5),
        Decimal("3.14159"),
        range(3, 9),
        RubyRange(1.5, 2.5, exclude_end=True),
        RubyModule("ImportJob"),
        GlobalID("gid://app/User/1"),
    ]

    back = deserialize(json.loads(json.dumps(serialize(values, rails="7.1"))))

    assert back == values
    assert [type(v) for v in back] == [type(v) for v in values]
    assert back[3].tzinfo == ZoneInfo("America/New_York")


def test_keyword_arguments_serialise_as_ruby2_keywords():
    """``kwargs`` become a trailing hash flagged ``_aj_ruby2_keywords`` (Ruby keywords)."""
    out = serialize([1], {"mode": "full", "at": date(2026, 1, 2), "tags": [Symbol("a")]})

    assert out == RAILS_61_KEYWORDS


def test_rails_61_cannot_get_a_range_and_bad_values_name_the_fix():
    """Range needs Rails 7.1; other unserialisable values and reserved keys are refused."""
    with pytest.raises(JobArgumentError, match=r"7\.1"):
        serialize([range(3)])
    with pytest.raises(JobArgumentError, match="cannot carry a set"):
        serialize([{1, 2}])
    with pytest.raises(JobArgumentError, match="reserved key"):
        serialize([{"_aj_symbol_keys": []}])
    with pytest.raises(JobArgumentError, match="keys must be strings"):
        serialize([{1: "a"}])


# -- the wrapper Job, in a real worker ---------------------------------------------------

received: list[dict[str, Any]] = []
received_lock = threading.Lock()


class ImportJob(kiq.Job, activejob="AjImport", queue="activejob"):
    def perform(self, *args: Any, **kwargs: Any) -> None:
        with received_lock:
            received.append({"args": args, "kwargs": kwargs, "aj": self.activejob, "jid": self.jid})


class FlakyImport(kiq.Job, activejob="Billing::FlakyImport", queue="activejob"):
    def perform(self, *args: Any) -> None:
        with received_lock:
            received.append({"args": args, "aj": self.activejob})
        raise RuntimeError("upstream down")


class AsyncKeywords(kiq.Job, activejob="AjKeywords", queue="activejob"):
    async def perform(self, first: int, *, mode: str, at: date, tags: list[str]) -> None:
        with received_lock:
            received.append({"args": (first,), "kwargs": {"mode": mode, "at": at, "tags": tags}})


class DiscardingImport(kiq.Job, activejob="AjDiscard", queue="activejob", discard_on=KeyError):
    def perform(self, *args: Any) -> None:
        raise KeyError("gone")


class KillingImport(kiq.Job, activejob="AjKill", queue="activejob"):
    @classmethod
    def retry_in(cls, count: int, exc: BaseException, payload: dict[str, Any]) -> str:
        return "kill"

    def perform(self, *args: Any) -> None:
        raise RuntimeError("hopeless")


@pytest.fixture(autouse=True)
def _clear_received():
    received.clear()


def push_raw(config: kiq.Config, payload: dict[str, Any]) -> None:
    kiq.Client(config).push(payload)


def test_both_wrapper_names_resolve_to_the_activejob_dispatcher():
    """The registry maps both wrapper class names to kiq's unwrapping Job."""
    assert lookup(LEGACY_WRAPPER) is activejob.ActiveJobWrapper
    assert lookup(SIDEKIQ_WRAPPER) is activejob.ActiveJobWrapper


@pytest.mark.parametrize("wrapper", [LEGACY_WRAPPER, SIDEKIQ_WRAPPER])
def test_rails_payload_runs_the_claiming_job_with_deserialised_arguments(config, wrapper):
    """perform_later's payload (either wrapper) runs the Job with activejob="AjImport"."""
    config.queues = [("activejob", 0)]
    push_raw(config, rails_payload(wrapper, "AjImport", RAILS_61_ARGUMENTS))

    with running(config):
        wait_until(lambda: received, timeout=10)

    (got,) = received
    assert list(got["args"]) == deserialize(RAILS_61_ARGUMENTS)
    assert got["kwargs"] == {}
    assert got["aj"].job_class == "AjImport"
    assert got["aj"].executions == 1  # Rails' perform_now counts the run
    assert got["aj"].provider_job_id == got["jid"] == "65a1e08f5b0d8eca9c29d6fb"
    assert got["aj"].locale == "en"
    assert got["aj"].timezone == "Europe/Berlin"


def test_keywords_reach_an_async_perform_as_python_kwargs(config):
    """Ruby keyword arguments arrive as keyword arguments, async perform included."""
    config.queues = [("activejob", 0)]
    push_raw(config, rails_payload(SIDEKIQ_WRAPPER, "AjKeywords", RAILS_61_KEYWORDS))

    with running(config):
        wait_until(lambda: received, timeout=10)

    assert received == [
        {"args": (1,), "kwargs": {"mode": "full", "at": date(2026, 1, 2), "tags": ["a"]}}
    ]


def test_retry_keeps_the_envelope_executions_and_exception_executions(config, r):
    """A failing ActiveJob job goes to the retry set with its envelope untouched.

    The job was already retried twice by Rails' ``retry_on`` (executions 2); it sees
    executions 3, and the retry entry still carries what Rails wrote, as Sidekiq's own
    retry keeps it (Rails counts up from the stored value on the next run).
    """
    config.queues = [("activejob", 0)]
    counts = {"[RuntimeError]": 2}
    payload = rails_payload(
        LEGACY_WRAPPER,
        "Billing::FlakyImport",
        [5],
        executions=2,
        exception_executions=counts,
    )
    push_raw(config, payload)

    with running(config):
        wait_until(lambda: r.zcard("retry") == 1, timeout=10)

    ((entry_text, _),) = r.zrange("retry", 0, -1, withscores=True)
    entry = json.loads(entry_text)
    assert entry["args"] == payload["args"]  # executions 2, exception_executions as written
    assert entry["retry_count"] == 0
    assert entry["error_class"] == "RuntimeError"
    (got,) = received
    assert got["args"] == (5,)
    assert got["aj"].executions == 3
    assert got["aj"].exception_executions == counts


def test_unclaimed_activejob_class_fails_naming_that_class(config, r, monkeypatch):
    """An ActiveJob class no kiq Job claims is retried as UnknownJobError naming it."""
    # A Job registered under a wrapper's own name takes unclaimed envelopes (the older
    # way, kept); tests.support.jobs registers two, so this test runs without them.
    for wrapper in (LEGACY_WRAPPER, SIDEKIQ_WRAPPER):
        monkeypatch.delitem(job_registry, wrapper, raising=False)
    config.queues = [("activejob", 0)]
    push_raw(config, rails_payload(SIDEKIQ_WRAPPER, "Reports::Nightly", [1]))

    with running(config):
        wait_until(lambda: r.zcard("retry") == 1, timeout=10)

    entry = json.loads(r.zrange("retry", 0, -1)[0])
    assert entry["error_class"] == "UnknownJobError"
    assert f"Reports::Nightly (ActiveJob via {SIDEKIQ_WRAPPER})" in entry["error_message"]
    assert "activejob='Reports::Nightly'" in entry["error_message"]


def test_claiming_jobs_discard_on_and_retry_in_apply(config, r):
    """The claimant's discard_on drops its error; its retry_in ("kill") sends to Dead."""
    config.queues = [("activejob", 0)]
    push_raw(config, rails_payload(LEGACY_WRAPPER, "AjDiscard", [1]))
    push_raw(config, rails_payload(SIDEKIQ_WRAPPER, "AjKill", [2]))

    with running(config):
        wait_until(lambda: r.zcard("dead") == 1, timeout=10)
        wait_until(lambda: r.get("stat:processed") == "2", timeout=10)

    (dead,) = [json.loads(raw) for raw in r.zrange("dead", 0, -1)]
    assert dead["args"][0]["job_class"] == "AjKill"
    assert dead["error_class"] == "RuntimeError"
    assert r.zcard("retry") == 0  # AjDiscard: discarded, neither retried nor dead


def test_globalid_locator_from_config_reaches_the_job(config):
    """config.globalid_locator turns ``_aj_globalid`` into the app's object."""
    config.queues = [("activejob", 0)]
    config.globalid_locator = lambda gid: {"located": gid}
    push_raw(config, rails_payload(LEGACY_WRAPPER, "AjImport", [{"_aj_globalid": "gid://a/U/1"}]))

    with running(config):
        wait_until(lambda: received, timeout=10)

    assert received[0]["args"] == ({"located": "gid://a/U/1"},)


# -- Python -> Rails: enqueue -------------------------------------------------------------


def queued(r: Any, queue: str = "default") -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in r.lrange(f"queue:{queue}", 0, -1)]


def test_enqueue_writes_the_envelope_rails_61_writes(config, r):
    """Key for key what Sidekiq 6.4's adapter pushes for ImportJob.perform_later(7, {...})."""
    jid = activejob.enqueue("ImportJob", 7, {"mode": "full"}, queue="default", priority=3)

    (job,) = queued(r)
    data = job["args"][0]
    assert job["class"] == LEGACY_WRAPPER
    assert job["wrapped"] == "ImportJob"
    assert job["queue"] == "default"
    assert job["retry"] is True
    assert job["jid"] == jid
    assert list(data) == [
        "job_class", "job_id", "provider_job_id", "queue_name", "priority", "arguments",
        "executions", "exception_executions", "locale", "timezone", "enqueued_at",
    ]  # fmt: skip
    assert data["arguments"] == [7, {"mode": "full", "_aj_symbol_keys": []}]
    assert data["priority"] == 3
    assert data["executions"] == 0
    assert data["exception_executions"] == {}
    assert data["provider_job_id"] is None
    assert len(data["job_id"]) == 36
    assert datetime.fromisoformat(data["enqueued_at"]).tzinfo is not None
    assert data["enqueued_at"].endswith("Z")
    assert "." not in data["enqueued_at"]


def test_enqueue_with_wait_schedules_and_sidekiq_wrapper_and_rails_71(config, r):
    """wait= goes to the schedule set; config picks the wrapper name and 7.1's fields."""
    config.activejob_wrapper = "sidekiq"
    config.activejob_rails = "7.1"
    before = datetime.now(UTC).timestamp()
    activejob.enqueue("ImportJob", kwargs={"mode": "full"}, wait=300)

    ((raw, score),) = r.zrange("schedule", 0, -1, withscores=True)
    job = json.loads(raw)
    data = job["args"][0]
    assert job["class"] == SIDEKIQ_WRAPPER
    assert before + 299 < score < before + 302
    assert data["arguments"] == [{"mode": "full", "_aj_ruby2_keywords": ["mode"]}]
    scheduled = datetime.fromisoformat(data["scheduled_at"]).timestamp()
    assert scheduled == pytest.approx(score, abs=1e-3)
    assert "." in data["enqueued_at"]  # Rails 7.1+: iso8601(9)


def test_enqueue_wait_until_and_kiq_reads_back_what_it_wrote(config, r):
    """wait_until= schedules at that time; the kiq dispatcher reads kiq's own envelope."""
    when = datetime(2030, 1, 1, tzinfo=UTC)
    activejob.enqueue("AjImport", Symbol("x"), when, wait_until=when, queue="activejob")

    ((raw, score),) = r.zrange("schedule", 0, -1, withscores=True)
    assert score == when.timestamp()
    payload = json.loads(raw)
    args, _kwargs = split_arguments(payload["args"][0]["arguments"])
    assert args == [Symbol("x"), when]
    assert type(args[0]) is Symbol


def test_activejob_settings_load_from_the_config_file(tmp_path):
    """``activejob_wrapper`` and ``activejob_rails`` are file settings like the others."""
    path = tmp_path / "kiq.yml"
    path.write_text('activejob_wrapper: sidekiq\nactivejob_rails: "7.1"\n')

    loaded = kiq.Config.load(path, env={})

    assert (loaded.activejob_wrapper, loaded.activejob_rails) == ("sidekiq", "7.1")


def test_activejob_config_is_validated():
    """A wrong wrapper name or Rails version fails with what is allowed."""
    with pytest.raises(ConfigError, match="activejob_wrapper"):
        kiq.Config(activejob_wrapper="rails")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="activejob_rails"):
        serialize([], rails="seven")
