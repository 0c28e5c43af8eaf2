"""Job results (issue 17 point 3): ``kiq.Result``, ``JobFailed``, storage and waiting.

Real Redis, real ``kiq worker`` processes (tests/support/result_jobs.py). The waiting
claim is checked by counting the server's own commands (``INFO commandstats``): many
concurrent waiters cost a bounded number of SUBSCRIBE/UNSUBSCRIBE/MGET calls and no
GET at all (docs/results.md, "What a wait costs").
"""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import redis

import kiq
import kiq.testing
from kiq import api
from kiq import payload as wire
from kiq import results as kiq_results
from kiq.config import Config
from kiq.errors import ConfigError
from kiq.store import Store
from tests.support.result_jobs import (
    ResultAdd,
    ResultAsyncAdd,
    ResultBig,
    ResultBoom,
    ResultDies,
    ResultKillsFirst,
    ResultNone,
    ResultRetries,
)
from tests.support.servers import RedisServer
from tests.support.wait import wait_until

sys.path.insert(0, str(Path(__file__).parent / "support"))
RESULTS = ("-r", "result_jobs")  # the worker loads tests/support/result_jobs.py
WAITERS = 2_000  # CI size; bench/results_bench.py runs 10,000


def commandstats(r: redis.Redis) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT, e.g. {"subscribe": 3}."""
    stats: dict[str, Any] = r.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


# -- the handle, from a real worker ------------------------------------------------------


@pytest.mark.slow
def test_get_returns_the_value_a_worker_process_returned(config, r, start_worker):
    start_worker(*RESULTS)
    handle = ResultAdd.enqueue(2, 3)
    assert isinstance(handle, kiq.Result)
    assert handle.get(timeout=20) == {"sum": 5, "jid": handle.jid}
    assert handle.status == "succeeded"
    assert handle.ready()
    assert kiq.Result(handle.jid).get(timeout=1) == {"sum": 5, "jid": handle.jid}  # again


@pytest.mark.slow
def test_await_and_aget_return_an_async_jobs_value(config, start_worker):
    start_worker(*RESULTS)

    async def main() -> tuple[Any, Any]:
        try:
            first = await ResultAsyncAdd.aenqueue(1, 2)
        finally:
            await config.store.aclose()  # the asyncio push's connection, on this loop
        second = ResultAdd.enqueue(4, 4)
        assert first is not None
        assert second is not None
        return await first, await second.aget(timeout=20)

    value, other = asyncio.run(main())
    assert value == 3
    assert other["sum"] == 8


@pytest.mark.slow
def test_job_failed_carries_the_remote_class_message_and_traceback(config, start_worker):
    start_worker(*RESULTS)
    handle = ResultBoom.enqueue("here")
    assert handle is not None
    with pytest.raises(kiq.JobFailed) as caught:
        handle.get(timeout=20)
    failed = caught.value
    assert (failed.status, failed.error_class, failed.error_message) == (
        "failed",
        "ValueError",
        "boom here",
    )
    assert failed.job_class == "ResultBoom"
    assert failed.jid == handle.jid
    assert 'raise ValueError(f"boom {word}")' in failed.traceback
    assert "in explode" in failed.traceback  # the remote frames, innermost included
    assert any("Remote traceback" in note for note in failed.__notes__)
    assert handle.status == "failed"


@pytest.mark.slow
def test_a_job_that_dies_raises_job_failed_with_status_dead(config, start_worker):
    start_worker(*RESULTS)
    handle = ResultDies.enqueue()
    assert handle is not None
    with pytest.raises(kiq.JobFailed) as caught:
        handle.get(timeout=20)
    assert (caught.value.status, caught.value.error_class) == ("dead", "KeyError")
    assert api.DeadSet(config).size() == 1


@pytest.mark.slow
def test_while_retries_remain_the_status_says_retrying_and_get_keeps_waiting(config, start_worker):
    start_worker(*RESULTS)
    handle = ResultRetries.enqueue()
    assert handle is not None
    wait_until(lambda: handle.status == "retrying", timeout=20)
    with pytest.raises(kiq.ResultTimeout, match="status retrying"):
        handle.get(timeout=0.2)
    record = handle.record()
    assert record is not None
    assert (record["error_class"], record["retry_count"]) == ("RuntimeError", 0)
    assert api.RetrySet(config).size() == 1


@pytest.mark.slow
def test_the_record_expires_after_result_ttl(config, r, start_worker):
    start_worker(*RESULTS)
    handle = ResultAdd.set(result_ttl=45).enqueue(1, 1)
    assert handle is not None
    handle.get(timeout=20)
    assert 40 < r.ttl(f"kiq|result|{handle.jid}") <= 45


@pytest.mark.slow
def test_a_result_over_result_max_bytes_fails_with_an_error_naming_the_job_and_bound(
    config, r, start_worker
):
    start_worker(*RESULTS, config_text=":result_max_bytes: 1000\n")
    handle = ResultBig.enqueue(5000)
    assert handle is not None
    with pytest.raises(kiq.JobFailed) as caught:
        handle.get(timeout=20)
    failed = caught.value
    assert failed.error_class == "kiq.ResultTooLarge"
    assert f"ResultBig jid={handle.jid} ran" in failed.error_message
    assert "over result_max_bytes=1000" in failed.error_message
    assert api.RetrySet(config).size() == 0
    assert api.DeadSet(config).size() == 0
    small = ResultBig.enqueue(10)
    assert small is not None
    assert small.get(timeout=20) == "x" * 10


@pytest.mark.slow
def test_set_result_ttl_gives_a_result_to_a_job_that_keeps_none(config, start_worker):
    start_worker(*RESULTS)
    handle = ResultNone.set(result_ttl=30).enqueue(7)
    assert handle is not None
    assert handle.get(timeout=20) == 7


@pytest.mark.slow
def test_a_waiter_gets_the_result_of_a_job_rerun_after_its_worker_was_sigkilled(
    config, r, start_worker
):
    """The worker dies mid-job (SIGKILL); once its heartbeat expires another worker
    recovers and re-runs the job, and the waiter, still on its one subscription, wakes."""
    fast_expiry = ":process_ttl: 1\n:prefetch: 0\n"
    victim = start_worker(*RESULTS, "-c", "1", config_text=fast_expiry)
    handle = ResultKillsFirst.enqueue()
    assert handle is not None
    out: list[Any] = []
    waiter = threading.Thread(target=lambda: out.append(handle.get(timeout=60)))
    waiter.start()
    wait_until(lambda: victim.proc.poll() is not None, timeout=30)
    assert handle.status == "running"  # what the killed run left
    rescuer = start_worker(*RESULTS, "-c", "1", config_text=fast_expiry)
    waiter.join(timeout=60)
    assert out == [f"ran in {rescuer.pid}"]
    assert int(r.get("test:result-runs")) == 2


def test_perform_async_still_returns_the_jid(config):
    jid = ResultAdd.perform_async(1, 2)
    assert isinstance(jid, str)
    assert len(jid) == 24
    assert kiq.Result(jid).status == "pending"


def test_enqueue_without_result_ttl_says_how_to_ask_for_one(config):
    with pytest.raises(ConfigError, match=r"class ResultNone\(kiq.Job, result_ttl=3600\)"):
        ResultNone.enqueue(1)


def test_a_bad_result_ttl_is_refused_at_push_and_ignored_at_the_door():
    with pytest.raises(ConfigError, match="result_ttl"):
        ResultAdd.set(result_ttl="soon")
    job = {"class": "ResultAdd", "args": [], "jid": "j", "queue": "q", "result_ttl": -1}
    assert "result_ttl" not in wire.validate(job)  # the job runs; its result is not kept


def test_get_times_out_with_the_status_and_the_likely_cause(config):
    handle = ResultAdd.enqueue(1, 2)
    assert handle is not None
    with pytest.raises(kiq.ResultTimeout, match=r"status pending.*result_ttl"):
        handle.get(timeout=0.05)
    assert config.store.result_listener.waiting() == 0  # the waiter left


# -- storing: one step, before the ack ------------------------------------------------


def test_storing_a_final_record_sets_publishes_and_counts_in_one_script(config, r):
    payload = {"class": "ResultAdd", "jid": "abc", "result_ttl": 60}
    kiq_results.store_success(config, payload, [0])  # loads the script (NOSCRIPT once)
    r.config_resetstat()
    kiq_results.store_success(config, payload, [1, 2])
    stats = commandstats(r)
    assert stats.get("evalsha", 0) + stats.get("eval", 0) == 1
    assert stats["set"] == stats["publish"] == stats["hincrby"] == 1  # inside the script
    assert api.result("abc", config)["value"] == [1, 2]
    assert api.result_counts(config) == {"succeeded": 2}


class _AckProbe:
    """The executor's Pool: at the ack, what did Redis already hold for the job?"""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.seen: list[dict[str, Any] | None] = []

    def requeue(self, unit: Any) -> None:  # an interrupted iterable job: none here
        raise AssertionError(f"unexpected requeue of {unit.payload}")

    def finished(self, unit: Any) -> None:
        jid = unit.payload["jid"]
        self.seen.append(api.result(jid, self.config))

    def abandon(self, unit: Any) -> None:  # kiq's own failure around a job: none here
        raise AssertionError(f"unexpected abandon of {unit.payload}")


@pytest.mark.parametrize(
    ("job", "args", "status"),
    [(ResultAdd, [1, 2], "succeeded"), (ResultBoom, ["w"], "failed"), (ResultDies, [], "dead")],
)
def test_the_final_record_is_stored_before_the_ack(config, job, args, status):
    from kiq.fetch import UnitOfWork
    from kiq.processor import Executor, State

    probe = _AckProbe(config)
    executor = Executor(config, State(), probe, threading.Event())
    try:
        payload = kiq.Client(config).normalize({"class": job, "args": args})
        executor.run_sync(UnitOfWork.parse("default", wire.dumps(payload)))
    finally:
        executor.reaper.stop()
    (record,) = probe.seen
    assert record is not None
    assert record["status"] == status


def test_a_job_without_result_ttl_stores_nothing(config, r):
    from kiq.fetch import UnitOfWork
    from kiq.processor import Executor, State

    probe = _AckProbe(config)
    executor = Executor(config, State(), probe, threading.Event())
    r.config_resetstat()
    try:
        payload = kiq.Client(config).normalize({"class": ResultNone, "args": [1]})
        executor.run_sync(UnitOfWork.parse("default", wire.dumps(payload)))
    finally:
        executor.reaper.stop()
    assert probe.seen == [None]
    stats = commandstats(r)
    assert (stats.get("set", 0), stats.get("evalsha", 0)) == (0, 0)  # MGET: the probe's


def test_a_value_json_cannot_hold_is_recorded_as_failed(config):
    payload = {"class": "ResultAdd", "jid": "obj", "result_ttl": 60}
    kiq_results.store_success(config, payload, object())
    record = api.result("obj", config)
    assert record is not None
    assert (record["status"], record["error_class"]) == ("failed", "kiq.ResultNotJSON")


# -- waiting: no polling storms -----------------------------------------------------------


@pytest.mark.slow
def test_many_concurrent_waiters_cost_a_bounded_number_of_redis_commands(config, r, start_worker):
    """WAITERS/2 threads and WAITERS/2 coroutines wait on WAITERS jobs pushed before any
    worker runs; the wait (registering, the idle time while the worker starts, every
    wake-up) costs no GET and at most one SUBSCRIBE + one UNSUBSCRIBE + one MGET per
    waiter, shared by batches: measured well under that."""
    half = WAITERS // 2
    jids = ResultAdd.set(result_ttl=60).perform_bulk([[i, i] for i in range(WAITERS)])
    handles = [kiq.Result(jid) for jid in jids if jid is not None]
    listener = config.store.result_listener
    r.config_resetstat()
    got: dict[str, Any] = {}
    lock = threading.Lock()

    def wait_thread(handle: kiq.Result) -> None:
        value = handle.get(timeout=120)
        with lock:
            got[handle.jid] = value

    async def wait_async() -> None:
        values = await asyncio.gather(*(h.aget(timeout=120) for h in handles[half:]))
        with lock:
            got.update({h.jid: v for h, v in zip(handles[half:], values, strict=True)})

    threads = [threading.Thread(target=wait_thread, args=(h,)) for h in handles[:half]]
    threads.append(threading.Thread(target=lambda: asyncio.run(wait_async())))
    for thread in threads:
        thread.start()
    wait_until(lambda: listener.waiting() == WAITERS, timeout=60)
    registered = commandstats(r)
    start_worker(*RESULTS, "-c", "10")
    for thread in threads:
        thread.join(timeout=120)
    assert len(got) == WAITERS
    assert all(got[h.jid]["sum"] == 2 * i for i, h in enumerate(handles))
    stats = commandstats(r)
    waiting = {name: stats.get(name, 0) for name in ("subscribe", "unsubscribe", "mget")}
    # The worker sends none of these: each is the listener's own, as it counts them.
    assert waiting == {name: listener.sent[name.upper()] for name in waiting}
    assert registered.get("mget", 0) <= registered.get("subscribe", 0)  # one per batch
    assert sum(waiting.values()) <= WAITERS  # under one command per waiter, all kinds
    assert stats["publish"] == WAITERS  # each wake-up rode on its job's own store step
    print(f"\n{WAITERS} waiters: {waiting} ({sum(waiting.values()) / WAITERS:.3f} per wait)")


def test_waiters_of_one_jid_share_one_subscription(config, r):
    handle = ResultAdd.enqueue(1, 1)
    assert handle is not None
    listener = config.store.result_listener
    r.config_resetstat()
    out: list[Any] = []
    threads = [
        threading.Thread(target=lambda: out.append(handle.get(timeout=20))) for _ in range(50)
    ]
    for thread in threads:
        thread.start()
    wait_until(lambda: listener.waiting() == 50)
    wait_until(lambda: r.pubsub_numsub(f"kiq|result-ready|{handle.jid}")[0][1] == 1)
    kiq_results.store_success(config, {"class": "ResultAdd", "jid": handle.jid, "result_ttl": 9}, 2)
    for thread in threads:
        thread.join(timeout=20)
    assert out == [2] * 50
    stats = commandstats(r)
    assert (stats["subscribe"], stats.get("get", 0)) == (1, 0)


def test_a_result_stored_before_the_wait_is_read_once_subscribed(config):
    payload = {"class": "ResultAdd", "jid": "early", "result_ttl": 60}
    kiq_results.store_success(config, payload, "already")
    assert kiq.Result("early").get(timeout=5) == "already"


def test_a_cancelled_coroutine_stops_waiting(config):
    listener = config.store.result_listener

    async def main() -> None:
        task = asyncio.ensure_future(kiq.Result("never").aget())
        while listener.waiting() == 0:
            await asyncio.sleep(0)  # let the task file its future (not a timed wait)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert listener.waiting() == 0


def test_closing_the_store_fails_its_waiters_with_a_clear_error(redis_url):
    config = Config(redis_url=redis_url)
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            kiq.Result("never", config=config).get(timeout=30)
        except kiq.KiqError as exc:
            errors.append(exc)

    thread = threading.Thread(target=wait)
    thread.start()
    wait_until(lambda: config.store.result_listener.waiting() == 1)
    config.close()
    thread.join(timeout=10)
    assert len(errors) == 1
    assert "closed" in str(errors[0])


@pytest.mark.slow
def test_waiters_survive_a_redis_restart(tmp_path: Path):
    """The listener reconnects, subscribes again and reads what it may have missed."""
    with RedisServer(tmp_path, ["appendonly yes"]) as server:
        config = Config(redis_url=server.url())
        try:
            handle = kiq.Result("later", config=config)
            out: list[Any] = []
            thread = threading.Thread(target=lambda: out.append(handle.get(timeout=60)))
            thread.start()
            listener = config.store.result_listener
            admin = server.client()
            wait_until(lambda: admin.pubsub_numsub("kiq|result-ready|later")[0][1] == 1)
            server.stop()
            server.start()
            payload = {"class": "X", "jid": "later", "result_ttl": 60}
            other = Store(server.url())
            kiq_results.store_success(Config(redis_url=server.url()), payload, "after restart")
            other.close()
            thread.join(timeout=60)
            assert out == ["after restart"]
            assert listener.waiting() == 0
        finally:
            config.close()


# -- test modes ---------------------------------------------------------------------------


def test_fake_mode_keeps_results_of_drained_jobs_in_memory(config):
    with kiq.testing.fake():
        handle = ResultAdd.enqueue(2, 2)
        boom = ResultBoom.enqueue("x")
        assert handle is not None
        assert boom is not None
        with pytest.raises(kiq.ResultTimeout, match="drain"):
            handle.get()
        assert handle.status == "pending"
        ResultAdd.drain()
        assert handle.get() == {"sum": 4, "jid": handle.jid}
        with pytest.raises(ValueError, match="boom x"):
            ResultBoom.drain()
        with pytest.raises(kiq.JobFailed, match="ValueError: boom x"):
            boom.get()
        kiq.testing.clear_all()
        assert handle.status == "pending"
    assert config.store.read_results([handle.jid]) == [None]  # Redis never saw them


def test_inline_mode_stores_the_result_at_the_push(config):
    with kiq.testing.inline():
        handle = ResultAdd.enqueue(5, 5)
        assert handle is not None
        assert handle.ready()
        assert handle.get(timeout=0) == {"sum": 10, "jid": handle.jid}


def test_a_job_without_result_ttl_keeps_nothing_in_test_mode(config):
    with kiq.testing.inline():
        jid = ResultNone.perform_async(3)
        assert jid is not None
        assert kiq.Result(jid).status == "pending"


# -- visible: API, Web UI, Prometheus ----------------------------------------------------


def test_the_api_reads_a_result_by_jid_and_counts_them(config):
    kiq_results.store_success(config, {"class": "A", "jid": "ok", "result_ttl": 60}, 1)
    kiq_results.store_failure(
        config, {"class": "A", "jid": "bad", "result_ttl": 60}, ValueError("no"), "dead"
    )
    found = api.results(["ok", "bad", "none"], config)
    assert set(found) == {"ok", "bad"}
    assert (found["bad"]["status"], found["bad"]["error_message"]) == ("dead", "no")
    assert api.result("none", config) is None
    assert api.result_counts(config) == {"succeeded": 1, "dead": 1}


def test_prometheus_exposes_the_results_stored_counter(config):
    from kiq.prometheus import render

    kiq_results.store_success(config, {"class": "A", "jid": "p", "result_ttl": 60}, 1)
    body, _ = render(config)
    assert b'kiq_results_stored_total{status="succeeded"} 1.0' in body


def test_the_web_ui_job_page_shows_the_stored_failure(config):
    from kiq.web import create_app
    from kiq.web.sets import entry_key
    from tests.web.conftest import TestClient  # Starlette's, with its httpx warning handled

    payload = {"class": "ResultDies", "args": [], "jid": "d1", "queue": "default"}
    payload["result_ttl"] = 60
    exc = KeyError("gone")
    config.store.add_dead(wire.dumps(payload), wire.now(), 100, 3600.0)
    kiq_results.store_failure(config, payload, exc, "dead")
    (entry,) = list(api.DeadSet(config))
    with TestClient(create_app(config)) as client:
        page = client.get(f"/morgue/{entry_key(entry)}")
    assert page.status_code == 200
    assert 'id="result"' in page.text
    assert "KeyError" in page.text
    assert ">dead<" in page.text
