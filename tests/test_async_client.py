"""The asyncio client: the same payloads and keys as the sync one, one round trip each."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import redis

import kiq
from kiq.config import Config


class AsyncPushed(kiq.Job, name="AsyncPushed", queue="async-q"):
    def perform(self, *args: object) -> None: ...


def test_aperform_async_writes_what_perform_async_writes(config: Config, r: redis.Redis) -> None:
    """An awaited push SADDs the queue and LPUSHes the same fields as a sync push."""

    async def push() -> str | None:
        try:
            return await AsyncPushed.aperform_async(1, "é")
        finally:
            await config.store.aclose()

    jid = asyncio.run(push())
    (raw,) = r.lrange("queue:async-q", 0, -1)
    payload = json.loads(raw)
    assert payload["jid"] == jid
    assert payload["args"] == [1, "é"]
    assert list(payload) == ["retry", "queue", "class", "args", "jid", "created_at", "enqueued_at"]
    assert r.smembers("queues") == {"async-q"}


def test_aperform_in_and_at_schedule(config: Config, r: redis.Redis) -> None:
    """Scheduled awaited pushes land in ``schedule`` at the right score, without ``at``."""

    async def push() -> None:
        await AsyncPushed.aperform_in(60, 1)
        await AsyncPushed.aperform_at(time.time() + 120, 2)
        await config.store.aclose()

    before = time.time()
    asyncio.run(push())
    entries = r.zrange("schedule", 0, -1, withscores=True)
    assert [json.loads(m)["args"] for m, _ in entries] == [[1], [2]]
    assert before + 59 < entries[0][1] < before + 62
    assert all("at" not in json.loads(m) and "enqueued_at" not in json.loads(m) for m, _ in entries)


def test_aperform_bulk_returns_aligned_jids(config: Config, r: redis.Redis) -> None:
    """A bulk awaited push enqueues every job and returns their jids in order."""

    async def push() -> list[str | None]:
        try:
            return await AsyncPushed.aperform_bulk([[i] for i in range(2500)])
        finally:
            await config.store.aclose()

    jids = asyncio.run(push())
    assert len(jids) == 2500
    stored = [json.loads(raw)["jid"] for raw in reversed(r.lrange("queue:async-q", 0, -1))]
    assert stored == jids


def test_async_push_to_a_dead_redis_names_the_url_without_password() -> None:
    """A push to a Redis that is not there raises RedisUnavailable with a redacted URL."""
    config = Config(redis_url="redis://user:s3cret@127.0.0.1:1/0")

    async def push() -> None:
        try:
            await kiq.AsyncClient(config).push({"class": "X", "args": []})
        finally:
            await config.store.aclose()

    with pytest.raises(kiq.RedisUnavailable) as info:
        asyncio.run(push())
    assert "127.0.0.1:1" in str(info.value)
    assert "s3cret" not in str(info.value)
