"""Retries exactly as Sidekiq (shared/sidekiq-wire.md §6), driven through
``RetryHandler.handle`` with a fixed ``now``, plus the failures only a real worker
meets: unknown classes, unparseable payloads and wrong arguments.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest

import kiq
from kiq import payload as wire
from kiq.client import Client
from kiq.payload import decode_backtrace
from kiq.retry import RetryHandler
from tests.support.wait import wait_until

NOW = 1_700_000_000.0


class Flaky(kiq.Job, name="test_retry.Flaky"):
    def perform(self, *args: Any) -> None:
        raise NotImplementedError  # never run: the handler gets the exception directly


class Twice(kiq.Job, name="test_retry.Twice", retry=2):
    exhausted: list[tuple[dict[str, Any], BaseException]] = []  # noqa: RUF012

    @classmethod
    def retries_exhausted(cls, payload, exc):
        cls.exhausted.append((payload, exc))
        return None


class DiscardWhenExhausted(kiq.Job, name="test_retry.DiscardWhenExhausted", retry=0):
    @classmethod
    def retries_exhausted(cls, payload, exc):
        return "discard"


class CustomDelay(kiq.Job, name="test_retry.CustomDelay"):
    calls: list[tuple[int, BaseException, dict[str, Any]]] = []  # noqa: RUF012

    @classmethod
    def retry_in(cls, count, exc, payload):
        cls.calls.append((count, exc, payload))
        return payload["args"][0]


class BrokenDelay(kiq.Job, name="test_retry.BrokenDelay"):
    @classmethod
    def retry_in(cls, count, exc, payload):
        raise RuntimeError("bug in retry_in")


class NotFound(Exception):
    pass


class DiscardsNotFound(kiq.Job, name="test_retry.DiscardsNotFound", discard_on=NotFound):
    pass


def raised(exc: BaseException) -> BaseException:
    """``exc`` with a traceback, as the processor hands it over."""
    try:
        raise exc
    except BaseException as caught:
        return caught


def nested(depth: int) -> BaseException:
    """A ValueError raised ``depth`` calls below this function."""

    def dive(n: int) -> None:
        if n == 0:
            raise ValueError("deep")
        dive(n - 1)

    try:
        dive(depth)
    except ValueError as exc:
        return exc
    raise AssertionError("unreachable")


def fail(
    config,
    job: type[kiq.Job] = Flaky,
    exc: BaseException | None = None,
    *,
    queue: str = "default",
    **fields: Any,
) -> str:
    """Push-shaped payload of ``job`` fails once at NOW; return the handler's outcome."""
    fields.setdefault("args", [1])
    payload = Client(config).normalize({"class": job, **fields})
    raw = wire.dumps(payload)
    return RetryHandler(config).handle(raw, queue, exc or raised(ValueError("nope")), job, NOW)


def retries(r) -> list[tuple[dict[str, Any], float]]:
    return [(orjson.loads(m), s) for m, s in r.zrange("retry", 0, -1, withscores=True)]


def dead(r) -> list[tuple[dict[str, Any], float]]:
    return [(orjson.loads(m), s) for m, s in r.zrange("dead", 0, -1, withscores=True)]


@pytest.fixture
def deaths(config) -> list[tuple[dict[str, Any], BaseException]]:
    calls: list[tuple[dict[str, Any], BaseException]] = []
    config.death_handlers.append(lambda payload, exc: calls.append((payload, exc)))
    return calls


# -- the retry record --------------------------------------------------------------------


def test_first_failure_schedules_a_retry_with_count_zero(config, r):
    """The first failure sets retry_count 0, failed_at, error_class and error_message,
    and puts the job in the retry set."""
    assert fail(config, exc=raised(ValueError("nope"))) == "retry"

    ((payload, _),) = retries(r)
    assert payload["retry_count"] == 0
    assert payload["failed_at"] == NOW
    assert "retried_at" not in payload
    assert (payload["error_class"], payload["error_message"]) == ("ValueError", "nope")
    assert r.zcard("dead") == 0


def test_later_failure_increments_retry_count_and_sets_retried_at(config, r):
    """A job that already failed gets retry_count + 1 and retried_at; failed_at is kept."""
    fail(config, retry_count=3, failed_at=NOW - 500)

    ((payload, _),) = retries(r)
    assert (payload["retry_count"], payload["retried_at"]) == (4, NOW)
    assert payload["failed_at"] == NOW - 500


@pytest.mark.parametrize("count", [0, 1, 2, 5, 24])
def test_retry_score_is_count4_plus_15_plus_jitter(config, r, count):
    """The retry time is now + count**4 + 15 + rand(10) * (count + 1) (Sidekiq 6.4/7.x)."""
    previous = {} if count == 0 else {"retry_count": count - 1, "failed_at": NOW}
    base = NOW + count**4 + 15

    for _ in range(20):
        fail(config, **previous)

    scores = [score for _, score in retries(r)]
    assert len(scores) == 20
    for score in scores:
        jitter = score - base
        assert 0 <= jitter <= 9 * (count + 1)
        assert jitter % (count + 1) == 0


def test_error_message_is_capped_at_10000_characters(config, r):
    """error_message keeps the first 10,000 characters of a longer message."""
    fail(config, exc=raised(ValueError("é" * 12_000)))

    ((payload, _),) = retries(r)
    assert payload["error_message"] == "é" * 10_000


def test_retries_go_to_retry_queue_when_set(config, r):
    """``retry_queue`` names the queue the retry will run on."""
    fail(config, retry_queue="slow-lane")

    ((payload, _),) = retries(r)
    assert payload["queue"] == "slow-lane"


def test_retries_go_to_the_queue_the_job_was_fetched_from(config, r):
    """Without ``retry_queue`` the retry runs on the queue the job was fetched from."""
    fail(config, queue="fetched-here")

    ((payload, _),) = retries(r)
    assert payload["queue"] == "fetched-here"


# -- how many retries ---------------------------------------------------------------------


def test_retry_zero_goes_to_dead_on_the_first_failure(config, r, deaths):
    """``retry: 0`` is Ruby-truthy: retries on, none left, so the job dies at once."""
    assert fail(config, retry=0) == "dead"

    assert r.zcard("retry") == 0
    ((payload, score),) = dead(r)
    assert (payload["retry_count"], score) == (0, NOW)
    assert len(deaths) == 1


def test_retry_false_drops_the_job_and_calls_only_death_handlers(config, r, deaths):
    """``retry: False``: neither retry set nor dead set; death handlers still hear of it."""
    exc = raised(ValueError("nope"))

    assert fail(config, exc=exc, retry=False) == "dropped"

    assert r.zcard("retry") == r.zcard("dead") == 0
    ((payload, seen),) = deaths
    assert (payload["class"], seen) == ("test_retry.Flaky", exc)


def test_exhausted_retries_go_to_dead_with_hook_and_death_handlers(config, r, deaths):
    """The failure that uses the last retry sends the job to the dead set, after calling
    the job's ``retries_exhausted`` and then every death handler."""
    Twice.exhausted.clear()
    exc = raised(ValueError("again"))

    assert fail(config, Twice, exc, retry_count=1, failed_at=NOW - 60) == "dead"

    assert r.zcard("retry") == 0
    ((payload, score),) = dead(r)
    assert (payload["retry_count"], payload["error_message"], score) == (2, "again", NOW)
    ((hook_payload, hook_exc),) = Twice.exhausted
    assert (hook_payload["jid"], hook_exc) == (payload["jid"], exc)
    assert [(p["jid"], e) for p, e in deaths] == [(payload["jid"], exc)]


def test_retry_true_allows_config_max_retries(config, r):
    """``retry: True`` means ``max_retries`` retries (25 by default, here 2)."""
    config.max_retries = 2

    assert fail(config, retry_count=0, failed_at=NOW) == "retry"
    assert fail(config, retry_count=1, failed_at=NOW) == "dead"


def test_retries_exhausted_returning_discard_skips_the_dead_set(config, r, deaths):
    """``retries_exhausted`` may answer "discard": no dead set, death handlers still run."""
    assert fail(config, DiscardWhenExhausted) == "discard"

    assert r.zcard("retry") == r.zcard("dead") == 0
    assert len(deaths) == 1


def test_dead_false_skips_the_dead_set(config, r, deaths):
    """``dead: False`` keeps an exhausted job out of the dead set."""
    assert fail(config, retry=0, dead=False) == "discard"

    assert r.zcard("dead") == 0
    assert len(deaths) == 1


# -- retry_in ------------------------------------------------------------------------------


def test_retry_in_seconds_replace_the_default_delay(config, r):
    """``retry_in`` gets (count, exception, payload); the seconds it returns, plus the
    jitter, set the retry time."""
    CustomDelay.calls.clear()
    exc = raised(ValueError("slow down"))

    fail(config, CustomDelay, exc, args=[1000], retry_count=1, failed_at=NOW)

    ((_, score),) = retries(r)
    assert NOW + 1000 <= score <= NOW + 1000 + 9 * 3
    ((count, seen, payload),) = CustomDelay.calls
    assert (count, seen, payload["args"]) == (2, exc, [1000])


def test_retry_in_discard_drops_the_job(config, r, deaths):
    """``retry_in`` returning "discard": no retry, no dead set, death handlers run."""
    assert fail(config, CustomDelay, args=["discard"]) == "discard"

    assert r.zcard("retry") == r.zcard("dead") == 0
    assert len(deaths) == 1


def test_retry_in_kill_sends_the_job_to_dead_now(config, r, deaths):
    """``retry_in`` returning "kill" treats the retries as exhausted at once."""
    assert fail(config, CustomDelay, args=["kill"]) == "dead"

    assert r.zcard("retry") == 0
    assert r.zcard("dead") == 1
    assert len(deaths) == 1


@pytest.mark.parametrize("answer", [None, "later", 0, -5, True])
def test_retry_in_other_answers_use_the_default_delay(config, r, answer):
    """Anything but positive seconds, "discard" or "kill" means the default delay."""
    fail(config, CustomDelay, args=[answer])

    ((_, score),) = retries(r)
    assert NOW + 15 <= score <= NOW + 15 + 9


def test_retry_in_raising_is_logged_and_uses_the_default_delay(config, r, caplog):
    """A bug inside ``retry_in`` is logged and the job is still retried, with the default
    delay, instead of the failure going unrecorded."""
    with caplog.at_level(logging.ERROR, logger="kiq.retry"):
        assert fail(config, BrokenDelay) == "retry"

    ((_, score),) = retries(r)
    assert NOW + 15 <= score <= NOW + 15 + 9
    assert "bug in retry_in" in caplog.text


# -- backtraces ------------------------------------------------------------------------------


def test_backtrace_true_stores_every_frame_decodably(config, r):
    """``backtrace: True`` stores all frames, innermost first, as zlib + Base64 JSON."""
    fail(config, exc=nested(3), backtrace=True)

    ((payload, _),) = retries(r)
    lines = decode_backtrace(payload["error_backtrace"])
    assert len(lines) == 5  # dive x4, nested
    assert lines[0].endswith(":in `dive'")
    assert lines[-1].endswith(":in `nested'")
    assert __file__ in lines[0]


def test_backtrace_n_stores_the_first_n_frames(config, r):
    """``backtrace: N`` keeps the N innermost frames."""
    fail(config, exc=nested(3), backtrace=2)

    ((payload, _),) = retries(r)
    lines = decode_backtrace(payload["error_backtrace"])
    assert len(lines) == 2
    assert all(line.endswith(":in `dive'") for line in lines)


def test_backtrace_zero_stores_an_empty_backtrace(config, r):
    """``backtrace: 0`` is Ruby-truthy: an empty backtrace is stored."""
    fail(config, exc=nested(1), backtrace=0)

    ((payload, _),) = retries(r)
    assert decode_backtrace(payload["error_backtrace"]) == []


def test_no_backtrace_option_stores_none(config, r):
    """Without ``backtrace`` no error_backtrace is written."""
    fail(config, exc=nested(1))

    ((payload, _),) = retries(r)
    assert "error_backtrace" not in payload


# -- discard ---------------------------------------------------------------------------------


def test_kiq_discard_ends_the_job_without_retry_or_dead(config, r, deaths):
    """Raising ``kiq.Discard`` ends the job: no retry, no dead set; death handlers run."""
    assert fail(config, exc=raised(kiq.Discard("user is gone"))) == "discard"

    assert r.zcard("retry") == r.zcard("dead") == 0
    assert len(deaths) == 1


def test_discard_on_ends_the_job_without_retry_or_dead(config, r, deaths):
    """An exception listed in the job's ``discard_on`` is treated like ``kiq.Discard``."""
    assert fail(config, DiscardsNotFound, raised(NotFound("nope"))) == "discard"

    assert r.zcard("retry") == r.zcard("dead") == 0
    assert len(deaths) == 1


def test_discard_on_does_not_match_other_exceptions(config, r):
    """Other exceptions of a job with ``discard_on`` are retried as usual."""
    assert fail(config, DiscardsNotFound, raised(KeyError("x"))) == "retry"


# -- error handlers and the dead set ---------------------------------------------------------


def test_error_handlers_get_the_exception_and_context(config, r):
    """Every failure calls each error handler with the exception and a context naming
    the job and its queue."""
    calls: list[tuple[BaseException, dict[str, Any]]] = []
    config.error_handlers.append(lambda exc, ctx: calls.append((exc, ctx)))
    exc = raised(ValueError("nope"))

    fail(config, exc=exc, queue="billing")

    ((seen, context),) = calls
    assert seen is exc
    assert context["context"] == "Job raised exception"
    assert context["queue"] == "billing"
    assert context["job"]["class"] == "test_retry.Flaky"


def test_error_handlers_run_after_the_retry_is_recorded(config, r):
    """As in Sidekiq, handlers see the payload as recorded: retry_count and error fields,
    and the retry is already in Redis when they run."""
    seen: list[tuple[Any, Any, int]] = []
    config.error_handlers.append(
        lambda exc, ctx: seen.append(
            (ctx["job"].get("retry_count"), ctx["job"].get("error_class"), r.zcard("retry"))
        )
    )

    fail(config, exc=raised(ValueError("nope")))

    assert seen == [(0, "ValueError", 1)]


def test_a_failing_error_handler_does_not_stop_the_retry(config, r):
    """An error handler that raises is logged; the retry is still recorded."""

    def broken(exc, ctx):
        raise RuntimeError("handler bug")

    config.error_handlers.append(broken)

    assert fail(config) == "retry"
    assert r.zcard("retry") == 1


def test_dead_set_is_trimmed_to_dead_max_jobs(config, r):
    """Adding to the dead set keeps only the newest ``dead_max_jobs`` entries."""
    config.dead_max_jobs = 3
    for i in range(5):
        fail(config, retry=0, args=[i])

    assert sorted(p["args"][0] for p, _ in dead(r)) == [2, 3, 4]


def test_dead_set_is_trimmed_by_age(config, r):
    """Adding to the dead set drops entries older than ``dead_timeout`` seconds."""
    config.dead_timeout = 3600.0
    r.zadd("dead", {'{"class":"Old","args":[]}': NOW - 3601, '{"class":"Recent","args":[]}': NOW})

    fail(config, retry=0)

    assert sorted(p["class"] for p, _ in dead(r)) == ["Recent", "test_retry.Flaky"]


# -- failures a worker meets ------------------------------------------------------------------


@pytest.mark.slow
def test_unknown_class_is_retried_with_unknown_job_error(config, r, start_worker):
    """A payload naming a class no kiq Job registered (a Ruby job on a shared queue) is
    retried, as Sidekiq retries a NameError, never lost."""
    jid = Client(config).push({"class": "Billing::ChargeJob", "args": [7]})

    start_worker()

    ((payload, _),) = wait_until(lambda: retries(r))
    assert (payload["jid"], payload["error_class"]) == (jid, "UnknownJobError")
    assert "Billing::ChargeJob" in payload["error_message"]


@pytest.mark.slow
def test_unparseable_payloads_go_to_the_dead_set_unchanged(config, r, start_worker):
    """Invalid JSON, a payload without ``class`` and one without ``args`` go straight to
    the dead set as they were, and are not retried."""
    bad = ["{not json", '{"args":[1],"jid":"a1"}', '{"class":"Record","jid":"b2"}']
    r.sadd("queues", "default")
    r.lpush("queue:default", *bad)

    start_worker()

    wait_until(lambda: r.zcard("dead") == 3)
    assert sorted(r.zrange("dead", 0, -1)) == sorted(bad)
    assert r.zcard("retry") == 0


@pytest.mark.slow
def test_wrong_number_of_arguments_is_retried_as_type_error(config, r, start_worker):
    """Calling perform with the wrong number of arguments fails with TypeError and is
    retried like any error."""
    jid = Client(config).push({"class": "Pair", "args": [1]})

    start_worker()

    ((payload, _),) = wait_until(lambda: retries(r))
    assert (payload["jid"], payload["error_class"]) == (jid, "TypeError")
