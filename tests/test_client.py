"""Client pushes against real Redis: single and bulk pushes, the scheduling verbs,
per-call options, client middleware, inline runs and a Redis that is down
(shared/sidekiq-wire.md §3)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest
import redis

import kiq
from kiq import payload as wire
from kiq import store as kiq_store
from kiq.config import Config
from kiq.payload import Payload

NOW = 1_700_000_000.0


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> float:
    """Stop the wall clock at NOW for every time kiq reads."""
    monkeypatch.setattr(wire, "now", lambda: NOW)
    return NOW


def queued(r: redis.Redis, queue: str = "default") -> list[Payload]:
    """The jobs in ``queue:<queue>``, oldest first."""
    return [json.loads(raw) for raw in reversed(r.lrange(f"queue:{queue}", 0, -1))]


def scheduled(r: redis.Redis) -> list[tuple[Payload, float]]:
    """The members of ``schedule`` with their scores, earliest first."""
    entries: list[tuple[str, float]] = r.zrange("schedule", 0, -1, withscores=True)  # type: ignore[assignment]
    return [(json.loads(member), score) for member, score in entries]


class Charge(kiq.Job, queue="billing", retry=3):
    performed: ClassVar[list[tuple[Any, ...]]] = []

    def perform(self, *args: Any) -> Any:
        Charge.performed.append(args)
        return sum(args)


@pytest.fixture(autouse=True)
def _reset_performed() -> None:
    Charge.performed = []


class Tag:
    """Client middleware that stamps a tenant into every payload."""

    def __call__(self, job: str, payload: Payload, queue: str, call_next: Callable[[], Any]) -> Any:
        payload["tenant"] = "acme"
        return call_next()


class StopOdd:
    """Client middleware that stops pushes whose first argument is odd."""

    def __call__(self, job: str, payload: Payload, queue: str, call_next: Callable[[], Any]) -> Any:
        if payload["args"] and payload["args"][0] % 2:
            return None
        return call_next()


# -- push --------------------------------------------------------------------------------


def test_push_returns_the_jid_of_the_stored_job(config: Config, r: redis.Redis) -> None:
    """push() answers the jid it generated, and that job is in its queue."""
    jid = kiq.Client().push({"class": Charge, "args": [1]})

    (job,) = queued(r, "billing")
    assert job["jid"] == jid
    assert job["class"] == "tests.test_client.Charge"
    assert (job["queue"], job["retry"]) == ("billing", 3)


def test_push_of_a_ruby_class_by_name_gets_sidekiq_defaults(config: Config, r: redis.Redis) -> None:
    """A class name kiq does not know is pushed with retry: true and queue: default."""
    kiq.Client().push({"class": "Billing::ChargeJob", "args": [7]})

    (job,) = queued(r)
    assert list(job) == ["retry", "queue", "class", "args", "jid", "created_at", "enqueued_at"]
    assert (job["class"], job["retry"], job["queue"], job["args"]) == (
        "Billing::ChargeJob",
        True,
        "default",
        [7],
    )


def test_push_keeps_a_callers_jid_and_extra_keys(config: Config, r: redis.Redis) -> None:
    """A given jid and any other key (tags, bid...) travel in the payload unchanged."""
    kiq.Client().push({"class": "Ruby", "args": [], "jid": "a" * 24, "tags": ["vip"]})

    (job,) = queued(r)
    assert (job["jid"], job["tags"]) == ("a" * 24, ["vip"])


def test_push_with_an_explicit_past_at_still_goes_to_schedule(
    config: Config, clock: float, r: redis.Redis
) -> None:
    """A raw ``at`` is honoured as given (Sidekiq's client); the poller enqueues it."""
    kiq.Client().push({"class": "Ruby", "args": [], "at": clock - 10})

    ((_, score),) = scheduled(r)
    assert score == clock - 10


@pytest.mark.parametrize("at", [float("nan"), float("inf"), "tomorrow", True])
def test_push_refuses_an_at_that_is_not_a_finite_time(
    config: Config, r: redis.Redis, at: object
) -> None:
    """``at`` is finite epoch seconds: NaN would fail in Redis, inf would never run."""
    with pytest.raises(kiq.JobArgumentError, match="'at' must be epoch seconds"):
        kiq.Client().push({"class": "Ruby", "args": [], "at": at})

    assert r.keys("*") == []


@pytest.mark.parametrize(
    "item",
    [{"args": [1]}, {"class": "", "args": []}, {"class": 5, "args": []}, {"class": "A"}],
    ids=["no-class", "empty-class", "int-class", "no-args"],
)
def test_push_refuses_an_item_without_class_or_args(config: Config, item: dict[str, Any]) -> None:
    """A push needs a Job class or a non-empty name, and an args list."""
    with pytest.raises(kiq.JobArgumentError):
        kiq.Client().push(item)


def test_push_refuses_an_empty_queue(config: Config) -> None:
    """queue must be a non-empty string."""
    with pytest.raises(kiq.JobArgumentError, match="'queue' must be a non-empty string"):
        kiq.Client().push({"class": "A", "args": [], "queue": ""})


# -- push_bulk ---------------------------------------------------------------------------


def test_push_bulk_writes_one_pipeline_per_thousand_jobs(
    config: Config, monkeypatch: pytest.MonkeyPatch, r: redis.Redis
) -> None:
    """2,500 jobs take three writes of 1,000, 1,000 and 500, all of which land."""
    writes: list[int] = []
    push = config.store.push

    def counting_push(jobs: Any) -> None:
        writes.append(len(jobs))
        push(jobs)

    monkeypatch.setattr(config.store, "push", counting_push)

    jids = kiq.Client().push_bulk({"class": Charge, "args": [[n] for n in range(2500)]})

    assert writes == [1000, 1000, 500]
    assert [job["jid"] for job in queued(r, "billing")] == jids


def test_push_bulk_gives_every_job_its_own_jid_in_input_order(
    config: Config, r: redis.Redis
) -> None:
    """The answer lines up with the input: jids[i] is the job with args[i]."""
    jids = kiq.Client().push_bulk({"class": "Ruby", "args": [[0], [1], [2]]})

    by_jid = {job["jid"]: job["args"] for job in queued(r)}
    assert len(set(jids)) == 3
    assert [by_jid[jid] for jid in jids] == [[0], [1], [2]]


def test_push_bulk_answers_none_where_middleware_stopped_a_job(
    config: Config, r: redis.Redis
) -> None:
    """Stopped jobs are None in place (Sidekiq 7.1+), the others are stored."""
    config.client_middleware.add(StopOdd())

    jids = kiq.Client().push_bulk({"class": "Ruby", "args": [[0], [1], [2], [3]]})

    assert [jid is None for jid in jids] == [False, True, False, True]
    assert sorted(job["args"][0] for job in queued(r)) == [0, 2]


def test_push_bulk_schedules_each_job_at_its_own_time(
    config: Config, clock: float, r: redis.Redis
) -> None:
    """An ``at`` list gives one time per job; None in it means now."""
    kiq.Client().push_bulk(
        {"class": "Ruby", "args": [[0], [1], [2]], "at": [clock + 10, None, clock + 30]}
    )

    assert sorted((job["args"], score) for job, score in scheduled(r)) == [
        ([0], clock + 10),
        ([2], clock + 30),
    ]
    assert [job["args"] for job in queued(r)] == [[1]]


def test_push_bulk_refuses_an_at_list_of_the_wrong_length(config: Config) -> None:
    """``at`` must be one time or exactly one per job."""
    with pytest.raises(kiq.JobArgumentError, match="'at' has 1 times for 2 jobs"):
        kiq.Client().push_bulk({"class": "Ruby", "args": [[0], [1]], "at": [NOW]})


def test_push_bulk_writes_nothing_if_any_job_is_invalid(config: Config, r: redis.Redis) -> None:
    """A bad argument list anywhere refuses the whole bulk push before any write."""
    with pytest.raises(kiq.JobArgumentError, match="argument 0"):
        kiq.Client().push_bulk({"class": "Ruby", "args": [[1]] * 1500 + [[object()]]})

    assert r.keys("*") == []


# -- perform_in / perform_at -------------------------------------------------------------


@pytest.mark.parametrize(
    "interval", [300, 300.0, timedelta(minutes=5)], ids=["int", "float", "timedelta"]
)
def test_perform_in_schedules_relative_to_now(
    config: Config, clock: float, r: redis.Redis, interval: float | timedelta
) -> None:
    """Seconds or a timedelta from now become the schedule score."""
    Charge.perform_in(interval, 1)

    ((job, score),) = scheduled(r)
    assert score == clock + 300
    assert "at" not in job


def test_perform_in_takes_a_number_past_1e9_as_an_epoch(
    config: Config, clock: float, r: redis.Redis
) -> None:
    """Sidekiq's rule: a value >= 1,000,000,000 is already an absolute time."""
    Charge.perform_in(clock + 60, 1)

    ((_, score),) = scheduled(r)
    assert score == clock + 60


@pytest.mark.parametrize("interval", [0, -5, timedelta(seconds=-1)], ids=["zero", "neg", "td"])
def test_perform_in_without_a_future_time_enqueues_now(
    config: Config, clock: float, r: redis.Redis, interval: float | timedelta
) -> None:
    """A time not after now is pushed to the queue at once (no ``at``)."""
    Charge.perform_in(interval, 1)

    assert r.zcard("schedule") == 0
    assert len(queued(r, "billing")) == 1


@pytest.mark.parametrize(
    "when",
    [datetime.fromtimestamp(NOW + 90, tz=UTC), NOW + 90],
    ids=["datetime", "epoch"],
)
def test_perform_at_schedules_at_the_given_time(
    config: Config, clock: float, r: redis.Redis, when: datetime | float
) -> None:
    """An aware datetime or epoch seconds becomes the schedule score."""
    Charge.perform_at(when, 1)

    ((_, score),) = scheduled(r)
    assert score == clock + 90


def test_perform_at_a_past_time_enqueues_now(config: Config, clock: float, r: redis.Redis) -> None:
    """A time already passed is pushed to the queue at once."""
    Charge.perform_at(datetime.fromtimestamp(NOW - 3600, tz=UTC), 1)

    assert r.zcard("schedule") == 0
    assert len(queued(r, "billing")) == 1


def test_perform_in_refuses_a_non_time(config: Config) -> None:
    """A string is neither seconds, a timedelta nor a datetime."""
    with pytest.raises(kiq.JobArgumentError, match="a time must be seconds"):
        Charge.perform_in("5 minutes", 1)  # type: ignore[arg-type]


# -- set(...) ----------------------------------------------------------------------------


def test_set_overrides_queue_and_retry_for_one_push(config: Config, r: redis.Redis) -> None:
    """Per-call options change this payload only, not the class."""
    Charge.set(queue="urgent", retry=False).perform_async(1)
    Charge.perform_async(2)

    ((urgent,), (normal,)) = queued(r, "urgent"), queued(r, "billing")
    assert (urgent["queue"], urgent["retry"]) == ("urgent", False)
    assert (normal["queue"], normal["retry"]) == ("billing", 3)


def test_set_wait_schedules_relative_to_now(config: Config, clock: float, r: redis.Redis) -> None:
    """``wait`` (ActiveJob's name) is perform_in by another name."""
    Charge.set(wait=timedelta(seconds=45)).perform_async(1)

    ((_, score),) = scheduled(r)
    assert score == clock + 45


def test_set_wait_until_schedules_at_the_time(config: Config, clock: float, r: redis.Redis) -> None:
    """``wait_until`` is perform_at by another name."""
    Charge.set(wait_until=datetime.fromtimestamp(NOW + 120, tz=UTC)).perform_async(1)

    ((_, score),) = scheduled(r)
    assert score == clock + 120


def test_set_sync_runs_the_job_now_and_writes_nothing(config: Config, r: redis.Redis) -> None:
    """``sync=True`` performs inline (Sidekiq: perform_inline) and returns no jid."""
    assert Charge.set(sync=True).perform_async(1, 2) is None

    assert Charge.performed == [(1, 2)]
    assert r.keys("*") == []


def test_set_refuses_an_invalid_queue(config: Config) -> None:
    """Per-call options are validated like class options."""
    with pytest.raises(kiq.ConfigError, match="queue=''"):
        Charge.set(queue="")


# -- perform_inline ----------------------------------------------------------------------


def test_perform_inline_runs_through_both_middleware_chains(config: Config, r: redis.Redis) -> None:
    """Client middleware shapes the payload, server middleware sees it, then perform runs."""
    seen: list[tuple[str, str, Any]] = []

    def server(job: kiq.Job, payload: Payload, queue: str, call_next: Callable[[], None]) -> None:
        seen.append((type(job).__name__, queue, payload["tenant"]))
        call_next()

    config.client_middleware.add(Tag())
    config.server_middleware.add(server)

    assert Charge.perform_inline(2, 3) == 5
    assert seen == [("Charge", "billing", "acme")]
    assert Charge.performed == [(2, 3)]
    assert r.keys("*") == []


def test_perform_inline_stopped_by_client_middleware_does_not_run(config: Config) -> None:
    """A client middleware that stops the push stops the inline run too."""
    config.client_middleware.add(StopOdd())

    assert Charge.perform_inline(1) is None
    assert Charge.performed == []


def test_perform_inline_refuses_non_json_arguments(config: Config) -> None:
    """Inline runs get the same argument check as pushes (Sidekiq 8.1)."""
    with pytest.raises(kiq.JobArgumentError):
        Charge.perform_inline({1, 2})
    assert Charge.performed == []


# -- client middleware -------------------------------------------------------------------


def test_client_middleware_can_change_the_stored_payload(config: Config, r: redis.Redis) -> None:
    """What the middleware writes into the payload is what Redis stores."""
    config.client_middleware.add(Tag())

    kiq.Client().push({"class": "Ruby", "args": []})

    (job,) = queued(r)
    assert job["tenant"] == "acme"


def test_client_middleware_gets_the_job_name_and_queue(config: Config) -> None:
    """Client middleware sees the wire name (a str) and the target queue."""
    calls: list[tuple[str, str]] = []

    def spy(job: str, payload: Payload, queue: str, call_next: Callable[[], Any]) -> Any:
        calls.append((job, queue))
        return call_next()

    config.client_middleware.add(spy)
    Charge.perform_async(1)

    assert calls == [("tests.test_client.Charge", "billing")]


def test_arguments_added_by_client_middleware_are_checked_too(
    config: Config, r: redis.Redis
) -> None:
    """A middleware that puts a non-JSON value into args gets the push refused (Sidekiq 6.4.2+)."""

    def stamp(job: str, payload: Payload, queue: str, call_next: Callable[[], Any]) -> Any:
        payload["args"].append(datetime(2024, 1, 1, tzinfo=UTC))
        return call_next()

    config.client_middleware.add(stamp)

    with pytest.raises(kiq.JobArgumentError, match=r"argument 0 contains .*datetime"):
        kiq.Client().push({"class": "Ruby", "args": []})
    assert r.keys("*") == []


def test_client_middleware_that_stops_a_push_returns_none(config: Config, r: redis.Redis) -> None:
    """Returning None instead of call_next() cancels the push: no jid, nothing stored."""
    config.client_middleware.add(StopOdd())

    assert kiq.Client().push({"class": "Ruby", "args": [1]}) is None
    assert r.keys("*") == []


# -- Redis down --------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_push_to_a_closed_port_raises_redis_unavailable_without_the_password() -> None:
    """Connection refused is RedisUnavailable at once, naming the URL but not the password."""
    port = _closed_port()
    config = Config(redis_url=f"redis://app:s3cret-pw@127.0.0.1:{port}/0")
    started = time.monotonic()

    with pytest.raises(kiq.RedisUnavailable) as info:
        kiq.Client(config).push({"class": "Ruby", "args": []})

    assert time.monotonic() - started < kiq_store.CONNECT_TIMEOUT
    assert f"redis://app:***@127.0.0.1:{port}/0" in str(info.value)
    assert "s3cret-pw" not in str(info.value)
    config.close()


def test_scheduled_push_to_a_closed_port_raises_redis_unavailable() -> None:
    """The ZADD path translates the error too."""
    config = Config(redis_url=f"redis://:s3cret-pw@127.0.0.1:{_closed_port()}/0")

    with pytest.raises(kiq.RedisUnavailable) as info:
        kiq.Client(config).push({"class": "Ruby", "args": [], "at": time.time() + 60})

    assert "s3cret-pw" not in str(info.value)
    config.close()


@pytest.mark.slow
@pytest.mark.timeout(30)
def test_push_to_a_silent_server_gives_up_within_the_documented_timeouts() -> None:
    """A server that accepts but never answers fails within connect + command timeout."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        config = Config(redis_url=f"redis://:s3cret-pw@127.0.0.1:{port}/0")
        started = time.monotonic()

        with pytest.raises(kiq.RedisUnavailable) as info:
            kiq.Client(config).push({"class": "Ruby", "args": []})

        elapsed = time.monotonic() - started
        config.close()
    assert elapsed < kiq_store.CONNECT_TIMEOUT + kiq_store.SOCKET_TIMEOUT + 1
    assert "s3cret-pw" not in str(info.value)
