"""The store's lanes: one held connection for single pushes (issue 5), on real Redis.

What must hold: replies come back in order, an error reply is raised and leaves the
connection in step, a busy lane sends the caller to the pool instead of making it wait,
a dropped connection is reopened, and a forked child never writes on its parent's
socket. The asyncio lane: the same, plus a cancelled or timed-out call drops its
connection so a late reply cannot reach the next call.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from kiq.config import Config
from kiq.store import lane as lane_module
from kiq.store.lane import AsyncLane, Lane

T = TypeVar("T")


@pytest.fixture
def lane(config: Config) -> Lane:
    return Lane(config.store._redis.connection_pool)


@pytest.fixture
def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_replies_come_back_in_order(lane: Lane, r: redis.Redis) -> None:
    replies = lane.call([("SADD", "queues", "default"), ("LPUSH", "queue:default", "a", "b")])
    assert replies == [1, 2]
    assert r.lrange("queue:default", 0, -1) == ["b", "a"]


def test_an_error_reply_is_raised_and_the_connection_stays_in_step(
    lane: Lane, r: redis.Redis
) -> None:
    r.set("text", "x")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        lane.call([("LPUSH", "text", "a"), ("SADD", "queues", "after")])
    assert r.smembers("queues") == {"after"}  # the command after the error ran
    assert lane.call([("ECHO", "next")]) == [b"next"]  # its reply, not a stale one


def test_a_busy_lane_returns_none_at_once(lane: Lane) -> None:
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with lane._lock:
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert held.wait(10)
        assert lane.call([("PING",)]) is None
    finally:
        release.set()
        thread.join()
    assert lane.call([("PING",)]) == [b"PONG"]


def test_a_dropped_connection_is_reopened(lane: Lane, r: redis.Redis) -> None:
    """A held connection the server closed (a restart, an idle timeout) is replaced on the
    next call, which succeeds: the one resend redis-py's default Retry also makes."""
    first = lane.call([("CLIENT", "ID")])
    assert first is not None
    r.client_kill_filter(_id=first[0])
    second = lane.call([("CLIENT", "ID")])
    assert second is not None
    assert second[0] != first[0]


def test_without_resend_a_dropped_connection_is_raised(config: Config, r: redis.Redis) -> None:
    """A waiter's lane (resend=False): closing its connection must end the call, as the
    fetcher does to wake its waiters on stop; the next call reconnects."""
    lane = Lane(config.store._redis.connection_pool, resend=False)
    first = lane.call([("CLIENT", "ID")])
    assert first is not None
    r.client_kill_filter(_id=first[0])
    with pytest.raises(redis.ConnectionError):
        lane.call([("PING",)])
    assert lane.call([("PING",)]) == [b"PONG"]


def test_redis_away_is_raised(unused_port: int) -> None:
    pool = redis.ConnectionPool.from_url(f"redis://127.0.0.1:{unused_port}/0")
    with pytest.raises(redis.ConnectionError):
        Lane(pool).call([("PING",)])


def test_the_pool_disconnecting_is_survived(lane: Lane, config: Config) -> None:
    first = lane.call([("CLIENT", "ID")])
    config.store._redis.connection_pool.disconnect()
    second = lane.call([("CLIENT", "ID")])
    assert first is not None
    assert second is not None
    assert second[0] != first[0]


def test_a_forked_child_uses_a_connection_of_its_own(lane: Lane, r: redis.Redis) -> None:
    parent = lane.call([("CLIENT", "ID")])
    assert parent is not None
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its connection id, never touch the parent's socket
        try:
            child = lane.call([("CLIENT", "ID")])
            os.write(write, str(child[0] if child else -1).encode())
        finally:
            os._exit(0)
    os.close(write)
    child_id = int(os.read(read, 100) or b"-1")
    os.close(read)
    os.waitpid(pid, 0)
    assert child_id not in (-1, parent[0])
    assert lane.call([("CLIENT", "ID")]) == parent  # the parent's connection is intact


def test_an_idle_connection_is_health_checked_once(lane: Lane, r: redis.Redis) -> None:
    lane.call([("PING",)])
    before = r.info("commandstats").get("cmdstat_ping", {}).get("calls", 0)
    for _ in range(20):
        lane.call([("ECHO", "x")])
    assert r.info("commandstats").get("cmdstat_ping", {}).get("calls", 0) == before
    # As if idle longer than health_check_interval (30 s): both clocks have passed.
    lane._check_after = 0.0
    lane._conn.next_health_check = 0.0
    lane.call([("ECHO", "x")])
    assert r.info("commandstats")["cmdstat_ping"]["calls"] == before + 1


def test_a_store_push_lands_through_the_lane(config: Config, r: redis.Redis) -> None:
    config.store.push([("default", b'{"class":"A","args":[]}'), ("low", b'{"class":"B"}')])
    assert r.smembers("queues") == {"default", "low"}
    assert r.lrange("queue:default", 0, -1) == ['{"class":"A","args":[]}']
    assert config.store._lane._conn is not None  # the held connection did the write


# -- the private redis-py API the lane reads ---------------------------------------------


def test_installed_redis_py_is_a_version_the_lane_is_tested_on() -> None:
    """The lane reads private redis-py attributes: an untested major fails here, loudly,
    and pyproject.toml pins redis-py to exactly the tested range."""
    major = int(redis.__version__.split(".")[0])
    low, high = lane_module.TESTED_REDIS_PY
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()

    assert low <= major < high, (
        f"redis-py {redis.__version__} is not a version kiq.store.lane is tested on "
        f"({low}.x to {high - 1}.x): run tests/test_lane.py and tests/test_async_client.py "
        f"on it, then widen TESTED_REDIS_PY and the pin in pyproject.toml"
    )
    assert f'"redis[hiredis]>={low},<{high}"' in pyproject


def test_without_the_private_api_the_lane_turns_off_with_one_warning(
    config: Config,
    r: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A redis-py whose connections lack ``_parser``: pushes still land, through the pool,
    and the lane says so once."""
    monkeypatch.setattr(lane_module, "PARSER", "_parser_renamed_in_a_future_redis_py")
    monkeypatch.setattr(lane_module, "_warned", set())
    lane = Lane(config.store._redis.connection_pool)

    assert lane.call([("PING",)]) is None
    assert lane.call([("PING",)]) is None
    for i in range(3):
        config.store.push([("default", f'{{"n":{i}}}'.encode())])

    assert r.llen("queue:default") == 3
    warnings = [rec for rec in caplog.records if "take the connection pool" in rec.getMessage()]
    assert len(warnings) == 1


def test_async_lane_without_the_private_api_turns_off(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The asyncio lane checks ``_writer`` too, and hands every call to the pool."""
    monkeypatch.setattr(lane_module, "WRITER", "_writer_renamed")

    async def body(lane: AsyncLane) -> list[Any] | None:
        return await lane.call([("PING",)])

    assert run_with_lane(config, body) is None


# -- AsyncLane ------------------------------------------------------------------------------


def run_with_lane(config: Config, body: Callable[[AsyncLane], Awaitable[T]]) -> T:
    """Run ``body`` on a fresh loop with an AsyncLane over the store's asyncio pool."""

    async def main() -> T:
        client = config.store._async_client()
        lane = AsyncLane(client.connection_pool, timeout=5.0)
        try:
            return await body(lane)
        finally:
            await lane.close()
            await config.store.aclose()

    return asyncio.run(main())


def test_async_replies_come_back_in_order(config: Config, r: redis.Redis) -> None:
    async def body(lane: AsyncLane) -> list[Any] | None:
        return await lane.call([("SADD", "queues", "q"), ("LPUSH", "queue:q", "a", "b")])

    assert run_with_lane(config, body) == [1, 2]
    assert r.lrange("queue:q", 0, -1) == ["b", "a"]


def test_async_error_reply_is_raised_and_the_connection_stays_in_step(
    config: Config, r: redis.Redis
) -> None:
    r.set("text", "x")

    async def body(lane: AsyncLane) -> list[Any] | None:
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await lane.call([("LPUSH", "text", "a"), ("SADD", "queues", "after")])
        return await lane.call([("ECHO", "next")])

    assert run_with_lane(config, body) == [b"next"]
    assert r.smembers("queues") == {"after"}


def test_async_lane_is_busy_for_a_second_coroutine(config: Config) -> None:
    async def body(lane: AsyncLane) -> tuple[Any, Any]:
        slow = asyncio.create_task(lane.call([("BLPOP", "never", "0.2")]))
        await asyncio.sleep(0)  # let it take the lane and wait for its reply
        busy = await lane.call([("PING",)])
        return busy, await slow

    busy, slow = run_with_lane(config, body)
    assert busy is None
    assert slow == [None]


def test_async_cancelled_call_drops_the_connection(config: Config) -> None:
    async def body(lane: AsyncLane) -> list[Any] | None:
        first = await lane.call([("CLIENT", "ID")])
        task = asyncio.create_task(lane.call([("BLPOP", "never", "5")]))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        second = await lane.call([("CLIENT", "ID")])  # not BLPOP's late reply
        assert first is not None
        assert second is not None
        assert second[0] != first[0]
        return await lane.call([("ECHO", "ok")])

    assert run_with_lane(config, body) == [b"ok"]


def test_async_dropped_connection_is_reopened(config: Config, r: redis.Redis) -> None:
    async def body(lane: AsyncLane) -> bool:
        first = await lane.call([("CLIENT", "ID")])
        assert first is not None
        r.client_kill_filter(_id=first[0])
        second = await lane.call([("CLIENT", "ID")])
        assert second is not None
        return bool(second[0] != first[0])

    assert run_with_lane(config, body)


def test_async_timeout_is_redis_timeout_error(config: Config) -> None:
    async def body(lane: AsyncLane) -> list[Any] | None:
        lane._timeout = 0.1
        with pytest.raises(redis.TimeoutError):
            await lane.call([("BLPOP", "never", "2")])
        lane._timeout = 5.0
        return await lane.call([("ECHO", "after")])

    assert run_with_lane(config, body) == [b"after"]
