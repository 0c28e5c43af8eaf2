"""The kiq.api additions the Web UI reads: queue summaries, Redis facts, job progress,
recurring jobs and "add all to queue"."""

from __future__ import annotations

import json
import time

import redis

from kiq import api
from kiq.client import Client
from kiq.config import Config
from kiq.cron import CronJob
from kiq.recurring import save
from tests.web.conftest import payload


def test_queue_summaries_have_size_latency_and_paused(config: Config, r: redis.Redis) -> None:
    """One row per queue, by name, with its size, oldest job's wait and paused flag."""
    Client(config).push({"class": "HardJob", "args": [], "queue": "b"})
    Client(config).push({"class": "HardJob", "args": [], "queue": "a"})
    r.sadd("kiq|paused", "b")
    now = time.time() + 10
    rows = api.queue_summaries(config, now=now)
    assert [(q.name, q.size, q.paused) for q in rows] == [("a", 1, False), ("b", 1, True)]
    assert 9 < rows[0].latency < 11


def test_redis_info_reads_info(config: Config) -> None:
    """Server name and version, uptime, clients and memory from INFO."""
    info = api.redis_info(config)
    assert info.server in ("Redis", "Valkey")
    assert info.version[0].isdigit()
    assert info.connections >= 1
    assert info.memory


def test_progress_reads_several_jobs_at_once(config: Config, r: redis.Redis) -> None:
    """progress(jids) returns what each job reported; jobs without progress are absent."""
    r.hset("kiq|progress|" + "a" * 24, mapping={"percent": "55.5", "message": "half", "at": "1.0"})
    found = api.progress(["a" * 24, "b" * 24], config)
    assert list(found) == ["a" * 24]
    assert (found["a" * 24]["percent"], found["a" * 24]["message"]) == (55.5, "half")


def test_cron_set_lists_recurring_jobs(config: Config) -> None:
    """cron_set() is kiq.recurring's CronSet on this config."""
    save(config, CronJob(name="hourly", klass="Tick", cron="0 * * * *"))
    assert [entry.name for entry in api.cron_set(config)] == ["hourly"]


def test_add_all_to_queue_keeps_retry_count(config: Config, r: redis.Redis) -> None:
    """Unlike retry_all, add_all_to_queue pushes payloads unchanged."""
    api.ScheduledSet(config).schedule(time.time() + 60, payload(retry_count=4))
    assert api.ScheduledSet(config).add_all_to_queue() == 1
    (raw,) = r.lrange("queue:default", 0, -1)
    assert json.loads(raw)["retry_count"] == 4
