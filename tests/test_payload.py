"""The job payload on the wire: the bytes a push stores must be the bytes Ruby Sidekiq
6.4 would store (shared/sidekiq-wire.md §2.4, §3), and decoding must turn anything
that is not a Sidekiq job into PayloadError, never another exception."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

import kiq
from kiq import payload as wire
from kiq.config import Config
from kiq.errors import JobArgumentError, PayloadError

NOW = 1_700_000_000.0  # a whole second: the case where a naive encoder drops the ".0"
JID = "b4a577edbccf1d805744efa9"
FUZZ = settings(max_examples=300, deadline=None, database=None)


@pytest.fixture
def fixed(monkeypatch: pytest.MonkeyPatch, config: Config) -> Config:
    """The default Config with the wall clock stopped at NOW and a known next jid."""
    monkeypatch.setattr(wire, "now", lambda: NOW)
    monkeypatch.setattr(wire, "new_jid", lambda: JID)
    return config


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    """A client that returns stored bytes untouched."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


# Registered under a name of its own: other tests push "HardJob" as a class kiq does
# not know, and the job registry is process-wide.
class HardJob(kiq.Job, name="Tests::HardJob"):
    def perform(self, *args: object) -> None: ...


# -- stored bytes of a push --------------------------------------------------------------


def test_pushed_job_bytes_match_ruby_sidekiq_64(fixed: Config, raw: redis.Redis) -> None:
    """Key order, compact separators and float timestamps are Sidekiq 6.4's, byte for byte."""
    kiq.Client().push({"class": "HardJob", "args": [1, "x"]})

    assert raw.lrange("queue:default", 0, -1) == [
        b'{"retry":true,"queue":"default","class":"HardJob","args":[1,"x"],'
        b'"jid":"b4a577edbccf1d805744efa9","created_at":1700000000.0,'
        b'"enqueued_at":1700000000.0}'
    ]


def test_job_class_push_has_the_same_shape(fixed: Config, raw: redis.Redis) -> None:
    """perform_async on a kiq Job writes the same bytes, class options first."""
    HardJob.perform_async(1, "x")

    assert raw.lrange("queue:default", 0, -1) == [
        b'{"retry":true,"queue":"default","class":"Tests::HardJob","args":[1,"x"],'
        b'"jid":"b4a577edbccf1d805744efa9","created_at":1700000000.0,'
        b'"enqueued_at":1700000000.0}'
    ]


def test_pushed_job_keeps_non_ascii_as_utf8(fixed: Config, raw: redis.Redis) -> None:
    """Non-ASCII text is stored as UTF-8 bytes, not \\u escapes (Ruby's JSON.generate)."""
    HardJob.perform_async("café ☕")

    stored = raw.lindex("queue:default", 0)
    assert stored is not None
    assert '"args":["café ☕"]'.encode() in stored
    assert b"\\u" not in stored


def test_timestamps_keep_a_decimal_point_when_the_clock_returns_an_int(
    monkeypatch: pytest.MonkeyPatch, fixed: Config, r: redis.Redis
) -> None:
    """A whole-second clock still writes 1700000000.0, which Sidekiq 6.4 reads as seconds."""
    monkeypatch.setattr(wire, "now", lambda: 1_700_000_000)

    HardJob.perform_async()

    stored = r.lindex("queue:default", 0)
    assert stored is not None
    assert '"created_at":1700000000.0,"enqueued_at":1700000000.0}' in stored


def test_ms_timestamp_format_writes_integer_milliseconds(fixed: Config, r: redis.Redis) -> None:
    """timestamp_format="ms" writes Sidekiq 8's integer epoch milliseconds."""
    fixed.timestamp_format = "ms"

    HardJob.perform_async()

    stored = r.lindex("queue:default", 0)
    assert stored is not None
    assert isinstance(stored, str)
    assert stored.endswith('"created_at":1700000000000,"enqueued_at":1700000000000}')


def test_push_adds_the_bare_queue_name_to_queues(config: Config, r: redis.Redis) -> None:
    """SADD queues gets "critical", not "queue:critical" (Sidekiq's UI lists queues from it)."""
    HardJob.set(queue="critical").perform_async()

    assert r.smembers("queues") == {"critical"}


def test_push_puts_the_newest_job_at_the_head(config: Config, r: redis.Redis) -> None:
    """Clients LPUSH, so the oldest job sits at the tail where workers pop."""
    HardJob.perform_async("first")
    HardJob.perform_async("second")

    jobs = [json.loads(j)["args"] for j in r.lrange("queue:default", 0, -1)]
    assert jobs == [["second"], ["first"]]


def test_scheduled_push_zadds_schedule_without_at_or_enqueued_at(
    fixed: Config, r: redis.Redis
) -> None:
    """A job with ``at`` goes to the schedule ZSET, scored by ``at``, member free of both."""
    kiq.Client().push({"class": "HardJob", "args": [1], "at": NOW + 60.5, "enqueued_at": NOW - 5})

    entries: list[tuple[str, float]] = r.zrange("schedule", 0, -1, withscores=True)  # type: ignore[assignment]
    ((member, score),) = entries
    assert score == NOW + 60.5
    assert member == (
        '{"retry":true,"queue":"default","class":"HardJob","args":[1],'
        '"jid":"b4a577edbccf1d805744efa9","created_at":1700000000.0}'
    )
    assert r.keys("queue:*") == []


def test_jids_are_24_lowercase_hex(config: Config) -> None:
    """A jid is 12 random bytes as lowercase hex, as Sidekiq's SecureRandom.hex(12)."""
    jids = {wire.new_jid() for _ in range(100)}

    assert len(jids) == 100
    assert all(re.fullmatch(r"[0-9a-f]{24}", jid) for jid in jids)


# -- dumps / loads -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "number",
    [2**64, 2**64 + 1, 2**100, -(2**64), 2**63, -(2**63) - 1, 2**63 - 1, -(2**63)],
)
def test_big_integers_round_trip_exactly(number: int) -> None:
    """Integers past 64 bits (Ruby bignums) survive dumps/loads unchanged, as ints."""
    job = {"class": "HardJob", "args": [number, [number], {"n": number}]}

    back = wire.loads(wire.dumps(job))

    assert back == job
    assert type(back["args"][0]) is int


def test_dumps_is_compact_and_keeps_key_order() -> None:
    """No spaces after separators and insertion order kept, as Ruby's JSON.generate."""
    assert (
        wire.dumps({"z": 1, "a": [1, 2], "m": {"y": None}}) == b'{"z":1,"a":[1,2],"m":{"y":null}}'
    )


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"not json", b'{"class":"A","args":[1]} trailing', b"\xff\xfe"],
    ids=["empty", "truncated", "text", "trailing", "invalid-utf8"],
)
def test_loads_rejects_malformed_json(raw: bytes) -> None:
    """Bytes that are not JSON raise PayloadError quoting the start of the input."""
    with pytest.raises(PayloadError, match="not valid JSON"):
        wire.loads(raw)


@pytest.mark.parametrize("raw", ["[1,2]", '"job"', "42", "null"])
def test_loads_rejects_json_that_is_not_an_object(raw: str) -> None:
    """A JSON array, string, number or null is not a job."""
    with pytest.raises(PayloadError, match="must be a JSON object"):
        wire.loads(raw)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('{"args":[]}', "no 'class'"),
        ('{"class":"","args":[]}', "no 'class'"),
        ('{"class":7,"args":[]}', "no 'class'"),
        ('{"class":"A"}', "no 'args'"),
        ('{"class":"A","args":{"a":1}}', "no 'args'"),
    ],
)
def test_loads_rejects_objects_without_class_or_args(raw: str, message: str) -> None:
    """A job needs a non-empty ``class`` string and an ``args`` array."""
    with pytest.raises(PayloadError, match=message):
        wire.loads(raw)


@pytest.mark.parametrize(
    "raw",
    [
        '{"class":"A","args":[NaN, 12345678901234567890]}',
        '{"class":"A","args":[Infinity, 12345678901234567890]}',
        '{"class":"A","args":[1e400, 12345678901234567890]}',
    ],
)
def test_loads_rejects_non_json_numbers_next_to_big_integers(raw: str) -> None:
    """NaN, Infinity and overflowing floats are refused on the big-integer path too."""
    with pytest.raises(PayloadError):
        wire.loads(raw)


def test_loads_rejects_deep_nesting_next_to_big_integers() -> None:
    """Nesting deeper than the parser allows is a PayloadError, not a RecursionError."""
    raw = "[" * 5000 + "12345678901234567890" + "]" * 5000

    with pytest.raises(PayloadError):
        wire.loads(raw)


def test_loads_rejects_text_with_lone_surrogates() -> None:
    """A str that cannot be UTF-8 encoded is a PayloadError, not a UnicodeEncodeError."""
    with pytest.raises(PayloadError):
        wire.loads('{"class":"A","args":["\ud800"]}')


# Any text (lone surrogates included), any bytes, and strings built from JSON
# fragments, so that near-valid jobs and the big-integer path get exercised too.
_ANY_TEXT = st.text(st.characters() | st.characters(categories=["Cs"]))
_FRAGMENTS = st.lists(
    st.sampled_from(
        [
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            '"class"',
            '"args"',
            '"A"',
            '"\\ud800"',
            "NaN",
            "-Infinity",
            "1e400",
            "12345678901234567890",
            "-0",
            "1.5",
            "true",
            "null",
            " ",
        ]
    ),
    max_size=30,
).map("".join)


@FUZZ
@given(st.one_of(_ANY_TEXT, st.binary(), _FRAGMENTS, _FRAGMENTS.map(str.encode)))
def test_loads_fuzz_returns_a_job_or_raises_payload_error(data: str | bytes) -> None:
    """Any text or bytes decode to a job with class and args, or raise PayloadError."""
    try:
        job = wire.loads(data)
    except PayloadError:
        return
    assert isinstance(job["class"], str)
    assert isinstance(job["args"], list)


_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**130), max_value=2**130)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _ANY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_ANY_TEXT, inner, max_size=4),
    max_leaves=20,
)


@FUZZ
@given(st.text(min_size=1), st.lists(_JSON_VALUES, max_size=5))
def test_json_arguments_round_trip_exactly(klass: str, args: list[object]) -> None:
    """Arguments that pass check_args come back equal from dumps/loads."""
    try:
        wire.check_args("HardJob", args)
    except JobArgumentError:
        return  # text with lone surrogates cannot be UTF-8; refusing it is right
    job = {"class": klass, "args": args}

    assert wire.loads(wire.dumps(job)) == job


# -- arguments refused at push -----------------------------------------------------------


@pytest.mark.parametrize(
    ("arg", "shown"),
    [
        (math.nan, "nan"),
        (math.inf, "inf"),
        ({1, 2}, "set"),
        ((1, 2), "tuple"),
        (datetime(2024, 1, 1, tzinfo=UTC), "datetime"),
        ({1: "a"}, "int dict key"),
        (Decimal("1.5"), "Decimal"),
        (object(), "object"),
        ("\ud800", "UTF-8"),
    ],
    ids=["nan", "inf", "set", "tuple", "datetime", "int-key", "decimal", "object", "surrogate"],
)
def test_push_refuses_non_json_arguments(config: Config, arg: object, shown: str) -> None:
    """Non-JSON arguments fail at push, naming the argument index, the value and the fix."""
    with pytest.raises(JobArgumentError) as info:
        HardJob.perform_async("ok", arg)

    message = str(info.value)
    assert "argument 1" in message
    assert shown in message
    assert "Pass ids and plain values" in message


def test_push_refuses_non_json_values_nested_in_lists_and_dicts(config: Config) -> None:
    """The check walks into lists and dict values, not just the top level."""
    with pytest.raises(JobArgumentError, match=r"argument 0 contains .*datetime"):
        HardJob.perform_async({"when": [datetime(2024, 1, 1, tzinfo=UTC)]})


def test_refused_push_writes_nothing(config: Config, r: redis.Redis) -> None:
    """A refused job leaves Redis untouched."""
    with pytest.raises(JobArgumentError):
        HardJob.perform_async(object())

    assert r.keys("*") == []


# -- timestamps --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (1_700_000_000.25, 1_700_000_000.25),
        (1_700_000_000, 1_700_000_000.0),
        (1_700_000_000_250, 1_700_000_000.25),
        ("1700000000", None),
        (True, None),
        (None, None),
    ],
    ids=["float-seconds", "int-seconds", "int-ms", "string", "bool", "none"],
)
def test_to_seconds_reads_floats_as_seconds_and_big_ints_as_ms(
    value: object, seconds: float | None
) -> None:
    """Sidekiq 8's rule: a float is seconds, an integer in the ms range is milliseconds."""
    assert wire.to_seconds(value) == seconds
