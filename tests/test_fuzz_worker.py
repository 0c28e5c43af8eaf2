"""Hostile payloads against a running worker (issue 12: "Hypothesis fuzzing of whole
payloads against a running worker").

One real ``kiq worker`` process on a private redis-server works a queue into which
each Hypothesis example pushes one hostile payload (random bytes, non-UTF-8, JSON that
is not an object, deep nesting, NaN/Infinity tokens, and job objects whose every known
field may hold a wrong type, a huge, negative or odd value) followed by one good job.
After each example the good job has run, nothing is left queued or in progress, and
the hostile one has an outcome: dead (with a message), retried (with a message), run
(it was a valid job after all) or, with ``retry: false``, discarded as Sidekiq does.
At the end the worker is alive, still beating, and no engine thread crashed. The
tally is printed (``-s``) for the issue's closing note.
"""

from __future__ import annotations

import collections
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiq import payload as wire
from tests.support.jobs import identity_of
from tests.support.servers import RedisServer, Worker
from tests.support.wait import wait_until

pytestmark = pytest.mark.slow

EXAMPLES = 400
TALLY: collections.Counter[str] = collections.Counter()

# -- strategies ------------------------------------------------------------------------------

ODD_TEXT = st.text(
    st.characters(codec="utf-8") | st.sampled_from(["\n", "\r", "\x1b", "\x00", "=", " "]),
    max_size=30,
) | st.sampled_from(["", "\x1b[31mred", "a class=Spoof jid=x", "nan", "1e300", "Record\nforged"])
HUGE = st.sampled_from([1e300, -1e300, 1e308, 2**63, -(2**63) - 1, 10**30, 2**31, -1, 0])
SCALAR = st.none() | st.booleans() | st.integers() | HUGE | st.floats(allow_nan=False) | ODD_TEXT
VALUE = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ODD_TEXT, inner, max_size=3),
    max_leaves=8,
)
FIELDS = [
    "class", "args", "jid", "queue", "retry", "retry_count", "retry_for", "timeout",
    "kiq_recoveries", "at", "created_at", "enqueued_at", "failed_at", "retried_at",
    "discarded_at", "error_class", "error_message", "error_backtrace", "backtrace", "dead",
    "wrapped", "log_level", "tags", "bid", "retry_queue",
]  # fmt: skip
# The classes a hostile job may name: a registered one (it runs), an unknown one (it is
# retried), odd text, or no string at all (dead).
CLASSES = st.sampled_from(["Record", "AsyncRecord", "NoSuch::Job"]) | ODD_TEXT | VALUE


@st.composite
def hostile_job(draw: st.DrawFn) -> dict[str, Any]:
    """A job object: a valid base, then up to six known fields set to anything."""
    job: dict[str, Any] = {"class": draw(CLASSES), "args": draw(st.lists(VALUE, max_size=3))}
    job["jid"] = draw(st.uuids()).hex[:24]
    job["queue"] = "fuzz"
    for field in draw(st.lists(st.sampled_from(FIELDS), max_size=6, unique=True)):
        job[field] = draw(VALUE)
    return job


def nested(depth: int) -> bytes:
    return b'{"class":"Record","args":' + b"[" * depth + b"]" * depth + b"}"


def encode(job: dict[str, Any], ascii_only: bool) -> bytes:
    # allow_nan: NaN and Infinity tokens (and 1e300 written by Python) are part of the
    # hostile input; ensure_ascii=False keeps odd characters raw.
    return json.dumps(job, ensure_ascii=ascii_only, allow_nan=True).encode()


RAW = st.one_of(
    st.binary(max_size=60),  # mostly not UTF-8, not JSON
    st.sampled_from([b"", b"null", b"[]", b'"job"', b"1e400", b"{", b'{"class":"Record"}']),
    VALUE.map(lambda value: json.dumps(value).encode()),  # JSON, seldom an object
    st.integers(1000, 5000).map(nested),  # beyond the decoders' nesting limits
    st.builds(encode, hostile_job(), st.booleans()),
    st.builds(encode, hostile_job(), st.booleans()),
    st.builds(encode, hostile_job(), st.booleans()),
)

# -- the worker ------------------------------------------------------------------------------


class Setup:
    def __init__(self, server: RedisServer, worker: Worker) -> None:
        self.server = server
        self.worker = worker
        self.r: redis.Redis = server.client()
        self.count = 0


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    folder: Path = tmp_path_factory.mktemp("fuzz")
    with RedisServer(folder) as server:
        worker = Worker(folder, server.url(), "-q", "fuzz", "-c", "2")
        try:
            r = server.client()
            wait_until(lambda: identity_of(r, worker.pid), timeout=20)
            yield Setup(server, worker)
        finally:
            worker.kill()


def settled(r: redis.Redis) -> bool:
    """Nothing queued and nothing held in progress by any process."""
    if r.llen("queue:fuzz"):
        return False
    return all(r.llen(key) == 0 for key in r.keys("kiq|inprogress|*"))


def ran(r: redis.Redis, good: str) -> int:
    """How many times the good job ``good`` ran (it records its one argument)."""
    return sum(json.loads(item)["args"] == [good] for item in r.lrange("test:done", 0, -1))


def outcome(r: redis.Redis, raw: bytes, marker: int) -> str | None:
    """Where the hostile payload ``marker`` ended, or None if nowhere (yet)."""
    for name, key in (("dead", "dead"), ("retried", "retry")):
        for member in r.zrange(key, 0, -1):
            if member == raw:
                return name
            try:
                data = orjson.loads(member)
            except orjson.JSONDecodeError:
                continue
            if type(data) is dict and data.get("fuzz_id") == marker:
                assert isinstance(data.get("error_message"), str), data  # with a message
                return name
    for item in r.lrange("test:done", 0, -1):
        if json.loads(item)["args"][:1] == [f"ran-{marker}"]:
            return "ran"
    return None


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(raw=RAW)
def test_hostile_payloads_never_stop_the_worker_nor_vanish(setup: Setup, raw: bytes) -> None:
    """Each hostile payload ends dead, retried, run or (retry: false) discarded, and the
    good job pushed after it runs exactly once."""
    r = setup.r
    setup.count += 1
    marker = setup.count
    try:
        job = json.loads(raw)
    except (ValueError, RecursionError):
        job = None
    if type(job) is dict:
        # A marker the worker carries through untouched, so the outcome can be found
        # whatever the jid; a first argument the Record job records when it runs.
        job["fuzz_id"] = marker
        if type(job.get("args")) is list:
            job["args"] = [f"ran-{marker}", *job["args"]]
        raw = json.dumps(job, allow_nan=True).encode()
    good = f"good-{marker}"
    r.sadd("queues", "fuzz")
    r.lpush("queue:fuzz", raw)
    r.lpush("queue:fuzz", wire.dumps({"class": "Record", "args": [good], "jid": good}))

    wait_until(lambda: ran(r, good) and settled(r), 15)
    assert ran(r, good) == 1
    found = wait_until(lambda: outcome(r, raw, marker) or _discarded(job), 5)
    TALLY[found] += 1
    assert setup.worker.proc.poll() is None, setup.worker.output()[-3000:]


def _discarded(job: Any) -> str | None:
    """Sidekiq's rule: a failed job with ``retry: false`` goes to neither set."""
    if type(job) is dict and job.get("retry") is False:
        return "discarded (retry: false)"
    return None


def test_the_worker_is_alive_beating_and_no_thread_crashed(setup: Setup) -> None:
    """After the fuzzing: the process runs, its heartbeat is fresh and keeps moving, its
    log has no thread crash; the tally of outcomes is printed."""
    r = setup.r
    identity = identity_of(r, setup.worker.pid)
    assert identity is not None
    first = float(r.hget(identity, "beat") or 0)
    wait_until(lambda: float(r.hget(identity, "beat") or 0) > first, 5)
    assert time.time() - float(r.hget(identity, "beat") or 0) < 5
    log = setup.worker.output()
    assert "Exception in thread" not in log
    assert re.search(r"processor \d+ died", log) is None
    print(f"\nfuzzed payloads: {sum(TALLY.values())}; outcomes: {dict(TALLY)}")
    print(f"dead set {r.zcard('dead')}, retry set {r.zcard('retry')}")
