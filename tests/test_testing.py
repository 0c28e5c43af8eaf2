"""kiq.testing and the pytest plugin: the Python form of Sidekiq::Testing
(shared/sidekiq-wire.md §9) and of the brief's "RSpec Tests for Jobs".

Fake and inline tests run with a default Config whose Redis cannot be reached, so
any push that escaped the test hook would fail loudly instead of passing."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest
import redis

import kiq
import kiq.config
from kiq import testing
from kiq.config import Config
from kiq.testing import EmptyQueueError, TestModeAlreadySetError

pytest_plugins = ["pytester"]

performed: list[tuple[str, list[Any]]] = []


class CalculateMetricsJob(kiq.Job, name="testing.CalculateMetricsJob"):
    def perform(self, entity_id: int) -> int:
        performed.append(("metrics", [entity_id]))
        return entity_id * 10


class SendNotificationJob(kiq.Job, name="testing.SendNotificationJob", queue="mailers"):
    def perform(self, user_id: int) -> None:
        performed.append(("notify", [user_id]))


class CountdownJob(kiq.Job, name="testing.CountdownJob"):
    """Enqueues itself again until n reaches 0, and a notification at the end."""

    def perform(self, n: int) -> None:
        performed.append(("countdown", [n]))
        if n > 0:
            CountdownJob.perform_async(n - 1)
        else:
            SendNotificationJob.perform_async(0)


class RecordJob(kiq.Job, name="testing.RecordJob"):
    def perform(self, *args: Any) -> None:
        performed.append(("record", list(args)))


class FailingJob(kiq.Job, name="testing.FailingJob"):
    def perform(self, n: int) -> None:
        raise ValueError(f"failed {n}")


class AsyncJob(kiq.Job, name="testing.AsyncJob"):
    async def perform(self, n: int) -> int:
        performed.append(("async", [n]))
        return n + 1


@kiq.job(name="testing.send_digest", queue="digests")
def send_digest(user_id: int) -> None:
    performed.append(("digest", [user_id]))


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Real pushes off, no fake jobs, no testing middleware, and an unreachable Redis."""
    monkeypatch.setattr(kiq.config, "_default", Config(redis_url="redis://127.0.0.1:1/0"))
    performed.clear()
    testing.clear_all()
    yield
    testing.disable()
    testing.clear_all()
    testing.server_middleware.clear()


def add_arg(value: Any) -> Callable[..., Any]:
    """A client middleware that appends ``value`` to every job's args."""

    def middleware(job: str, payload: dict[str, Any], queue: str, call_next: Any) -> Any:
        payload["args"].append(value)
        return call_next()

    return middleware


# -- fake mode: what was enqueued --------------------------------------------------------


def test_fake_mode_keeps_the_enqueued_job(kiq_fake: ModuleType) -> None:
    """perform_async in fake mode lists the job under its class, with args and queue."""
    CalculateMetricsJob.perform_async(1)

    assert len(CalculateMetricsJob.jobs) == 1
    job = CalculateMetricsJob.jobs[-1]
    assert job["args"] == [1]
    assert job["queue"] == "default"
    assert performed == []


def test_fake_job_looks_as_it_would_in_redis(kiq_fake: ModuleType) -> None:
    """A fake job has Sidekiq's fields: class, jid, retry, created_at and enqueued_at."""
    jid = SendNotificationJob.perform_async(5)

    (job,) = SendNotificationJob.jobs
    assert job["class"] == "testing.SendNotificationJob"
    assert job["jid"] == jid
    assert job["retry"] is True
    assert job["enqueued_at"] >= job["created_at"]


def test_fake_mode_works_as_a_block_in_a_test() -> None:
    """``with kiq.testing.fake():`` captures pushes and puts the previous mode back."""
    with testing.fake():
        CalculateMetricsJob.perform_async(1)
        assert CalculateMetricsJob.jobs[-1]["args"] == [1]

    assert testing.mode() == "disable"


def test_scheduled_job_keeps_at(kiq_fake: ModuleType) -> None:
    """perform_in stores the job with its ``at`` time and without enqueued_at."""
    before = kiq.payload.now()

    CalculateMetricsJob.perform_in(300, 1)

    (job,) = CalculateMetricsJob.jobs
    assert before + 300 <= job["at"] <= kiq.payload.now() + 300
    assert "enqueued_at" not in job


def test_client_middleware_runs_before_capture(kiq_fake: ModuleType) -> None:
    """The fake job is the payload after client middleware, as Redis would get it."""
    kiq.get_default().client_middleware.add(add_arg("extra"))

    RecordJob.perform_async(1)

    assert RecordJob.jobs[0]["args"] == [1, "extra"]


def test_jobs_are_listed_by_queue(kiq_fake: ModuleType) -> None:
    """``queues["name"]`` holds that queue's jobs, oldest first; an unknown queue is empty."""
    SendNotificationJob.perform_async(1)
    CalculateMetricsJob.perform_async(2)
    SendNotificationJob.perform_async(3)

    assert [job["args"] for job in testing.queues["mailers"]] == [[1], [3]]
    assert sorted(testing.queues) == ["default", "mailers"]
    assert testing.queues["nowhere"] == []
    assert "nowhere" not in testing.queues


def test_base_job_class_lists_every_job(kiq_fake: ModuleType) -> None:
    """kiq.Job.jobs and testing.jobs() list all classes' jobs (Sidekiq: Sidekiq::Job.jobs)."""
    CalculateMetricsJob.perform_async(1)
    SendNotificationJob.perform_async(2)

    assert [job["args"] for job in kiq.Job.jobs] == [[1], [2]]
    assert testing.jobs() == kiq.Job.jobs


def test_pushes_from_other_threads_are_captured(kiq_fake: ModuleType) -> None:
    """The mode is process-wide, so code under test running in a thread is captured too."""
    thread = threading.Thread(target=CalculateMetricsJob.perform_async, args=(7,))
    thread.start()
    thread.join(timeout=5)

    assert [job["args"] for job in CalculateMetricsJob.jobs] == [[7]]


def test_bulk_push_is_captured(kiq_fake: ModuleType) -> None:
    """perform_bulk lists one fake job per argument list."""
    CalculateMetricsJob.perform_bulk([[1], [2], [3]])

    assert [job["args"] for job in CalculateMetricsJob.jobs] == [[1], [2], [3]]


# -- fake mode: running and clearing ----------------------------------------------------


def test_drain_runs_the_jobs_and_empties_the_class(kiq_fake: ModuleType) -> None:
    """drain() performs every job of the class, oldest first, and returns how many ran."""
    CalculateMetricsJob.perform_async(1)
    CalculateMetricsJob.perform_async(2)

    assert CalculateMetricsJob.drain() == 2

    assert performed == [("metrics", [1]), ("metrics", [2])]
    assert CalculateMetricsJob.jobs == []


def test_drain_runs_jobs_enqueued_while_draining(kiq_fake: ModuleType) -> None:
    """A job that enqueues its own class is drained too; other classes stay queued."""
    CountdownJob.perform_async(2)

    assert CountdownJob.drain() == 3

    assert [args for name, args in performed] == [[2], [1], [0]]
    assert len(SendNotificationJob.jobs) == 1


def test_drain_ignores_at(kiq_fake: ModuleType) -> None:
    """A scheduled fake job is run by drain at once (Sidekiq: drain ignores ``at``)."""
    CalculateMetricsJob.perform_in(3600, 4)

    CalculateMetricsJob.drain()

    assert performed == [("metrics", [4])]


def test_drain_all_runs_every_class_until_empty(kiq_fake: ModuleType) -> None:
    """drain_all() runs all classes, including jobs enqueued by drained jobs."""
    CountdownJob.perform_async(1)
    CalculateMetricsJob.perform_async(9)

    assert testing.drain_all() == 4

    assert sorted(name for name, _ in performed) == ["countdown", "countdown", "metrics", "notify"]
    assert testing.jobs() == []


def test_drain_propagates_a_job_error(kiq_fake: ModuleType) -> None:
    """A failing job's exception leaves drain; that job is gone and later ones stay."""
    FailingJob.perform_async(1)
    FailingJob.perform_async(2)

    with pytest.raises(ValueError, match="failed 1"):
        FailingJob.drain()

    assert [job["args"] for job in FailingJob.jobs] == [[2]]


def test_drain_all_refuses_a_class_it_cannot_run(kiq_fake: ModuleType) -> None:
    """A fake job of an unregistered class (e.g. a Ruby job) makes drain_all say so."""
    kiq.Client().push({"class": "Billing::ChargeJob", "args": [7]})

    with pytest.raises(kiq.UnknownJobError, match="Billing::ChargeJob"):
        testing.drain_all()


def test_perform_one_runs_the_oldest_job(kiq_fake: ModuleType) -> None:
    """perform_one() runs one job, returns perform's result and leaves the rest."""
    CalculateMetricsJob.perform_async(1)
    CalculateMetricsJob.perform_async(2)

    assert CalculateMetricsJob.perform_one() == 10

    assert [job["args"] for job in CalculateMetricsJob.jobs] == [[2]]


def test_perform_one_on_an_empty_class_raises(kiq_fake: ModuleType) -> None:
    """perform_one() with no job of the class raises EmptyQueueError."""
    SendNotificationJob.perform_async(1)

    with pytest.raises(EmptyQueueError, match=r"testing\.CalculateMetricsJob"):
        CalculateMetricsJob.perform_one()


def test_async_job_is_drained(kiq_fake: ModuleType) -> None:
    """An ``async def perform`` job runs to completion in drain."""
    AsyncJob.perform_async(1)

    assert AsyncJob.perform_one() == 2

    assert performed == [("async", [1])]


def test_clear_forgets_only_its_class(kiq_fake: ModuleType) -> None:
    """MyJob.clear() drops that class's jobs and keeps the others."""
    CalculateMetricsJob.perform_async(1)
    SendNotificationJob.perform_async(2)

    CalculateMetricsJob.clear()

    assert CalculateMetricsJob.jobs == []
    assert len(SendNotificationJob.jobs) == 1


def test_clear_all_forgets_every_job(kiq_fake: ModuleType) -> None:
    """clear_all() empties every class and queue (Sidekiq: Sidekiq::Job.clear_all)."""
    CalculateMetricsJob.perform_async(1)
    SendNotificationJob.perform_async(2)

    testing.clear_all()

    assert testing.jobs() == []
    assert testing.queues["mailers"] == []


def test_drained_jobs_use_the_testing_server_middleware(
    kiq_fake: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Drain runs kiq.testing.server_middleware, never the Config's server chain."""
    seen: list[str] = []

    def testing_chain(job: Any, payload: Any, queue: str, call_next: Any) -> None:
        seen.append(f"testing {type(job).__name__} {queue}")
        call_next()

    def real_chain(job: Any, payload: Any, queue: str, call_next: Any) -> None:
        seen.append("real")
        call_next()

    testing.server_middleware.add(testing_chain)
    kiq.get_default().server_middleware.add(real_chain)
    SendNotificationJob.perform_async(1)

    SendNotificationJob.drain()

    assert seen == ["testing SendNotificationJob mailers"]
    assert performed == [("notify", [1])]


# -- function jobs ------------------------------------------------------------------------


def test_function_job_has_the_fake_accessors(kiq_fake: ModuleType) -> None:
    """``@kiq.job`` functions get jobs, drain, perform_one and clear as classes do."""
    send_digest.perform_async(1)
    send_digest.perform_async(2)

    assert [job["queue"] for job in send_digest.jobs] == ["digests", "digests"]
    send_digest.perform_one()
    assert send_digest.drain() == 1
    assert performed == [("digest", [1]), ("digest", [2])]


def test_function_job_clear(kiq_fake: ModuleType) -> None:
    """send_digest.clear() drops the function's jobs."""
    send_digest.perform_async(1)

    send_digest.clear()

    assert send_digest.jobs == []


# -- inline mode --------------------------------------------------------------------------


def test_inline_mode_runs_the_job_at_push(kiq_inline: ModuleType) -> None:
    """perform_async runs the job before it returns, through the client middleware."""
    kiq.get_default().client_middleware.add(add_arg(99))

    jid = RecordJob.perform_async(1)

    assert performed == [("record", [1, 99])]
    assert jid is not None
    assert RecordJob.jobs == []


def test_inline_mode_runs_scheduled_jobs_now(kiq_inline: ModuleType) -> None:
    """perform_in in inline mode runs at once (Sidekiq: the same)."""
    SendNotificationJob.perform_in(3600, 3)

    assert performed == [("notify", [3])]


def test_inline_job_error_reaches_the_caller(kiq_inline: ModuleType) -> None:
    """A job failing inline raises from perform_async."""
    with pytest.raises(ValueError, match="failed 4"):
        FailingJob.perform_async(4)


def test_inline_mode_refuses_an_unknown_class(kiq_inline: ModuleType) -> None:
    """Pushing a class no kiq Job registered raises UnknownJobError in inline mode."""
    with pytest.raises(kiq.UnknownJobError, match="Billing::ChargeJob"):
        kiq.Client().push({"class": "Billing::ChargeJob", "args": [7]})


def test_inline_job_sees_the_worker_payload(kiq_inline: ModuleType) -> None:
    """An inline job's payload has enqueued_at and no ``at``, as a worker would see it."""
    payloads: list[dict[str, Any]] = []

    def capture(job: Any, payload: dict[str, Any], queue: str, call_next: Any) -> None:
        payloads.append(payload)
        call_next()

    testing.server_middleware.add(capture)
    CalculateMetricsJob.perform_in(60, 1)

    (payload,) = payloads
    assert "at" not in payload
    assert "enqueued_at" in payload


def test_inline_async_job_pushed_from_async_code(kiq_inline: ModuleType) -> None:
    """An async job pushed inline from a running event loop runs to completion."""

    async def view() -> None:
        await AsyncJob.aperform_async(5)

    asyncio.run(view())

    assert performed == [("async", [5])]


def test_async_push_is_captured(kiq_fake: ModuleType) -> None:
    """aperform_async (the AsyncClient push) is kept in memory in fake mode too."""
    asyncio.run(CalculateMetricsJob.aperform_async(3))

    assert [job["args"] for job in CalculateMetricsJob.jobs] == [[3]]


# -- switching modes ----------------------------------------------------------------------


def test_mode_switch_lasts_until_changed() -> None:
    """Called without ``with``, a mode function switches until another one is called."""
    testing.fake()
    CalculateMetricsJob.perform_async(1)
    assert testing.mode() == "fake"

    testing.inline()
    CalculateMetricsJob.perform_async(2)

    assert testing.mode() == "inline"
    assert [job["args"] for job in CalculateMetricsJob.jobs] == [[1]]
    assert performed == [("metrics", [2])]


def test_block_restores_the_switched_mode() -> None:
    """A block inside a switched-on mode puts that mode back when it ends."""
    testing.inline()

    with testing.fake():
        assert testing.mode() == "fake"

    assert testing.mode() == "inline"


def test_different_mode_inside_a_block_raises() -> None:
    """Nesting another mode in a block raises TestModeAlreadySetError (Sidekiq 7.2)."""
    with testing.fake(), pytest.raises(TestModeAlreadySetError, match="nesting"):
        testing.inline()


def test_same_mode_inside_a_block_is_allowed(kiq_fake: ModuleType) -> None:
    """``with kiq.testing.fake():`` inside the kiq_fake fixture is fine, as in the brief."""
    with testing.fake():
        CalculateMetricsJob.perform_async(1)

    assert testing.mode() == "fake"
    assert len(CalculateMetricsJob.jobs) == 1


def test_overlapping_blocks_restore_when_the_last_ends() -> None:
    """Blocks of one mode ending out of order (two threads) keep it until the last ends."""
    first, second = testing.fake(), testing.fake()
    first.__enter__()
    second.__enter__()

    first.__exit__(None, None, None)
    assert testing.mode() == "fake"
    second.__exit__(None, None, None)

    assert testing.mode() == "disable"


def test_error_inside_a_block_restores_the_mode() -> None:
    """The previous mode comes back even when the block raises."""
    with pytest.raises(RuntimeError), testing.fake():
        raise RuntimeError("boom")

    assert testing.mode() == "disable"


def test_disable_pushes_to_real_redis(config: Config, r: redis.Redis) -> None:
    """After disable() pushes go to Redis again, and nothing is kept in memory."""
    with testing.fake():
        CalculateMetricsJob.perform_async(1)
    testing.disable()

    CalculateMetricsJob.perform_async(2)

    assert r.llen("queue:default") == 1
    assert testing.jobs()[0]["args"] == [1]


# -- the pytest plugin --------------------------------------------------------------------

PLUGIN_TESTS = """
import kiq
import pytest
from tests.support.rawredis import raw_redis

seen = []


class Welcome(kiq.Job, name="pytester.Welcome"):
    def perform(self, email):
        seen.append(email)


def test_fake(kiq_fake):
    Welcome.perform_async("ann@example.com")
    assert Welcome.jobs[-1]["args"] == ["ann@example.com"]
    assert kiq_fake.mode() == "fake"


def test_fake_starts_empty(kiq_fake):
    assert Welcome.jobs == []
    Welcome.perform_async("bob@example.com")
    assert kiq_fake.drain_all() == 1
    assert seen == ["bob@example.com"]


def test_inline(kiq_inline):
    Welcome.perform_async("cy@example.com")
    assert seen[-1] == "cy@example.com"


def test_mode_is_off_after_the_fixtures():
    assert kiq.testing.mode() == "disable"


def test_config(kiq_config):
    Welcome.perform_async("dee@example.com")
    assert kiq.get_default() is kiq_config
    assert raw_redis(kiq_config).llen("queue:default") == 1
"""


def test_plugin_fixtures_work_from_an_installed_kiq(
    pytester: pytest.Pytester, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A project's tests get kiq_fake, kiq_inline and kiq_config from the entry point."""
    monkeypatch.setenv("KIQ_TEST_REDIS_URL", redis_url)
    pytester.makepyfile(test_app=PLUGIN_TESTS)

    result = pytester.runpytest("-p", "no:cacheprovider")

    result.assert_outcomes(passed=5)


def test_kiq_config_skips_without_redis(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside CI, kiq_config skips a test when its Redis cannot be reached."""
    monkeypatch.setenv("KIQ_TEST_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.delenv("CI", raising=False)
    pytester.makepyfile("def test_needs_redis(kiq_config):\n    pass\n")

    result = pytester.runpytest("-p", "no:cacheprovider", "-rs")

    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*127.0.0.1:1*KIQ_TEST_REDIS_URL*"])
