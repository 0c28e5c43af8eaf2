"""Error reporting from a running kiq process (issue 8 §4): ``config.error_handlers`` hear of
every failure and ``config.death_handlers`` of every job that dies, with what a service
such as Sentry needs (docs/operations.md has the Sentry version of these handlers)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import kiq
from kiq import log as kiq_log
from kiq.config import Config
from tests.support.inprocess import running
from tests.support.wait import wait_until


class ChargeJob(kiq.Job, name="ReportedChargeJob", retry=0):
    """retry=0: retries on, none left, so the first failure is also its death."""

    def perform(self, order_id: int) -> None:
        raise ValueError(f"card declined for order {order_id}")


class Reporter:
    """What a Sentry integration records: the exception, tags, context and log context."""

    def __init__(self) -> None:
        self.errors: list[dict[str, Any]] = []
        self.deaths: list[dict[str, Any]] = []

    def on_error(self, exc: BaseException, context: dict[str, Any]) -> None:
        job = context.get("job", {})
        self.errors.append(
            {
                "exc": exc,
                "queue": context.get("queue"),
                "class": job.get("class"),
                "jid": job.get("jid"),
                "retry_count": job.get("retry_count"),
                "args": job.get("args"),
                "log": kiq_log.current_context(),
            }
        )

    def on_death(self, payload: dict[str, Any], exc: BaseException) -> None:
        self.deaths.append({"exc": exc, "jid": payload.get("jid"), "payload": payload})


@pytest.fixture
def reporter(config: Config) -> Iterator[Reporter]:
    reporter = Reporter()
    config.error_handlers.append(reporter.on_error)
    config.death_handlers.append(reporter.on_death)
    with running(config):
        yield reporter


def test_error_and_death_handlers_get_the_exception_and_the_job(config, r, reporter):
    """A failing job calls the error handler with the exception, its class, jid, queue,
    args and retry_count, inside the job's log context; when it dies the death handler
    gets the same exception and the payload as it went to the dead set."""
    jid = ChargeJob.perform_async(42)
    wait_until(lambda: reporter.deaths and r.zcard("dead") == 1)

    (error,) = reporter.errors
    assert isinstance(error["exc"], ValueError)
    assert str(error["exc"]) == "card declined for order 42"
    assert (error["class"], error["jid"], error["queue"]) == ("ReportedChargeJob", jid, "default")
    assert (error["args"], error["retry_count"]) == ([42], 0)
    assert error["log"]["jid"] == jid  # lines a handler logs carry the job's context
    (death,) = reporter.deaths
    assert death["exc"] is error["exc"]
    assert death["payload"]["error_class"] == "ValueError"
    assert death["jid"] == jid


def test_a_failing_handler_does_not_stop_the_others(config, r, reporter):
    """A reporting service being down (its handler raising) must not stop the other
    handlers, nor the job's move to the dead set."""

    def broken(exc: BaseException, context: dict[str, Any]) -> None:
        raise ConnectionError("sentry is down")

    config.error_handlers.insert(0, broken)
    ChargeJob.perform_async(7)

    wait_until(lambda: reporter.deaths and r.zcard("dead") == 1)
    assert len(reporter.errors) == 1
