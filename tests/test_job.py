"""Job classes: options as class keywords (Sidekiq's sidekiq_options), their
validation and inheritance, registry names, and ``@kiq.job`` function jobs."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import redis

import kiq
from kiq.config import Config
from kiq.job import lookup


class Base(kiq.Job, queue="critical", retry=5, backtrace=True):
    def perform(self) -> None: ...


class Child(Base, retry=False):
    def perform(self) -> None: ...


class Plain(kiq.Job):
    def perform(self, n: int) -> int:
        return n * 2


class Renamed(kiq.Job, name="Tests::RenamedJob"):
    def perform(self) -> None: ...


class AsyncPlain(kiq.Job):
    async def perform(self, n: int) -> int:
        await asyncio.sleep(0)
        return n * 2


@kiq.job(queue="mailers", retry=2)
def send_digest(user_id: int) -> str:
    return f"sent {user_id}"


@kiq.job(name="tests.async_digest")
async def async_digest(user_id: int) -> str:
    await asyncio.sleep(0)
    return f"sent {user_id}"


@kiq.job
def bare(n: int) -> int:
    return n + 1


def newest(r: redis.Redis, queue: str = "default") -> dict[str, Any]:
    """The job most recently pushed to ``queue``."""
    raw = r.lindex(f"queue:{queue}", 0)
    assert isinstance(raw, str)
    job: dict[str, Any] = json.loads(raw)
    return job


def test_options_are_inherited_and_overridden_key_by_key() -> None:
    """A subclass keeps its parent's options and replaces only those it names."""
    assert Child.options == {"retry": False, "queue": "critical", "backtrace": True}
    assert Base.options == {"retry": 5, "queue": "critical", "backtrace": True}


def test_default_options_are_sidekiqs() -> None:
    """A job without options is retry: true, queue: default."""
    assert Plain.options == {"retry": True, "queue": "default"}


def test_unknown_option_is_a_config_error() -> None:
    """A misspelt option fails at class definition, listing the allowed ones."""
    with pytest.raises(kiq.ConfigError, match=r"unknown job option\(s\) \['retries'\]; allowed"):

        class Bad(kiq.Job, retries=3):
            def perform(self) -> None: ...


@pytest.mark.parametrize(
    "options",
    [
        {"retry": -1},
        {"retry": "3"},
        {"retry": None},
        {"queue": ""},
        {"queue": 5},
        {"timeout": 0},
        {"timeout": -1.5},
        {"timeout": "30"},
        {"timeout": True},
    ],
    ids=lambda options: repr(options),
)
def test_invalid_option_values_are_config_errors(options: dict[str, Any]) -> None:
    """retry is a bool or a count >= 0, queue a non-empty str, timeout seconds > 0."""
    (key,) = options
    with pytest.raises(kiq.ConfigError, match=f"{key}="):

        class Bad(kiq.Job, **options):
            def perform(self) -> None: ...


def test_retry_zero_is_allowed() -> None:
    """retry: 0 means "no retries, straight to the dead set" (Ruby truthiness)."""

    class NoRetry(kiq.Job, retry=0):
        def perform(self) -> None: ...

    assert NoRetry.options["retry"] == 0


def test_default_name_is_module_and_qualname() -> None:
    """The registry and payload name is f"{module}.{qualname}"."""
    assert Plain.wire_name == "tests.test_job.Plain"


def test_name_overrides_the_registry_and_payload_name(config: Config, r: redis.Redis) -> None:
    """``name=`` sets the payload's class, e.g. to a Ruby peer's constant path."""
    Renamed.perform_async()

    assert newest(r)["class"] == "Tests::RenamedJob"


def test_registry_finds_jobs_by_wire_name() -> None:
    """The worker resolves a payload's class through the registry, never by import path."""
    assert lookup("tests.test_job.Plain") is Plain
    assert lookup("Tests::RenamedJob") is Renamed
    assert lookup("tests.test_job.Nope") is None


def test_subclass_registers_under_its_own_name() -> None:
    """A subclass does not inherit its parent's registry entry."""
    assert lookup("tests.test_job.Child") is Child
    assert lookup("tests.test_job.Base") is Base


def test_is_async_tells_async_perform_from_sync() -> None:
    """``is_async`` is True exactly when perform is ``async def``."""
    assert (Plain.is_async, AsyncPlain.is_async) == (False, True)


def test_async_job_performs_inline() -> None:
    """perform_inline runs an async perform to completion and returns its value."""
    assert AsyncPlain.perform_inline(21) == 42


def test_perform_async_returns_a_jid(config: Config, r: redis.Redis) -> None:
    """perform_async enqueues on the default Config and answers the jid."""
    jid = Plain.perform_async(4)

    assert newest(r)["jid"] == jid


# -- @kiq.job ----------------------------------------------------------------------------


def test_function_job_is_still_callable_directly() -> None:
    """The decorated function runs in-process when called, keyword arguments included."""
    assert send_digest(7) == "sent 7"
    assert send_digest(user_id=8) == "sent 8"


def test_async_function_job_is_callable_directly() -> None:
    """An async function job called directly is its coroutine, awaited by the caller."""
    assert asyncio.run(async_digest(7)) == "sent 7"


def test_function_job_perform_async_enqueues_with_its_options(
    config: Config, r: redis.Redis
) -> None:
    """perform_async pushes a payload named after the function, with the decorator options."""
    send_digest.perform_async(7)

    job = newest(r, "mailers")
    assert (job["class"], job["args"], job["retry"]) == ("tests.test_job.send_digest", [7], 2)


def test_function_job_refuses_keyword_arguments_at_enqueue(config: Config) -> None:
    """Sidekiq's args is a JSON array: kwargs cannot travel, and the error says what to do."""
    with pytest.raises(kiq.JobArgumentError, match="pass them positionally"):
        send_digest.perform_async(user_id=7)


def test_function_jobs_know_whether_they_are_async() -> None:
    """The job class behind ``@kiq.job`` reports is_async from the function."""
    assert (send_digest.job_class.is_async, async_digest.job_class.is_async) == (False, True)


def test_function_job_is_registered_under_its_name() -> None:
    """``@kiq.job(name=...)`` registers the function job under that name."""
    assert lookup("tests.async_digest") is async_digest.job_class


def test_async_function_job_performs_inline() -> None:
    """perform_inline through the job class awaits the async function."""
    assert async_digest.job_class.perform_inline(3) == "sent 3"


def test_bare_decorator_makes_a_function_job(config: Config, r: redis.Redis) -> None:
    """``@kiq.job`` without parentheses works like ``@kiq.job()``."""
    assert bare(1) == 2
    bare.perform_async(1)

    assert newest(r)["class"] == "tests.test_job.bare"
