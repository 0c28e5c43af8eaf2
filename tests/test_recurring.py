"""Recurring jobs in Redis: exactly once per tick across processes, with a test clock."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta

import pytest
import redis

import kiq
from kiq.config import Config
from kiq.cron import CronJob
from kiq.outage import Outage
from kiq.recurring import CronPoller, CronSet, save

T0 = datetime(2026, 1, 1, 10, 0, 30, tzinfo=UTC)


class Tick(kiq.Job, name="RecurringTick", queue="cron"):
    def perform(self, *args: object) -> None: ...


def poller(config: Config) -> CronPoller:
    return CronPoller(config, Outage(config.store.safe_url))


def queued(r: redis.Redis) -> list[dict[str, object]]:
    return [json.loads(raw) for raw in r.lrange("queue:cron", 0, -1)]


def test_five_processes_three_minutes_each_tick_exactly_once(
    config: Config, r: redis.Redis
) -> None:
    """5 pollers racing over 3 minutes of a clock stepped every 5 s fire each tick once."""
    save(config, CronJob(name="every-minute", klass="RecurringTick", cron="* * * * *"), now=T0)
    save(
        config,
        CronJob(name="every-10s", klass="RecurringTick", cron="*/10 * * * * *", args=[1]),
        now=T0,
    )
    pollers = [poller(config) for _ in range(5)]
    barrier = threading.Barrier(len(pollers))
    fired = [0] * len(pollers)

    def run(index: int) -> None:
        for step in range(1, 37):  # 36 steps of 5 s = 3 minutes
            barrier.wait()
            fired[index] += pollers[index].tick(T0 + timedelta(seconds=5 * step))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(pollers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    jobs = queued(r)
    minute = [j for j in jobs if j["args"] == []]
    ten = [j for j in jobs if j["args"] == [1]]
    assert len(minute) == 3  # 10:01, 10:02, 10:03
    assert len(ten) == 18  # every 10 s from 10:00:40 to 10:03:30
    assert sum(fired) == len(jobs)


TICKER = """
import sys
from datetime import UTC, datetime, timedelta
import kiq
from kiq.config import Config
from kiq.outage import Outage
from kiq.recurring import CronPoller

class Tick(kiq.Job, name="RecurringTick", queue="cron"):
    def perform(self, *args): ...

config = Config(redis_url=sys.argv[1])
t0 = datetime.fromisoformat(sys.argv[2])
poller = CronPoller(config, Outage(config.store.safe_url))
fired = sum(poller.tick(t0 + timedelta(seconds=5 * step)) for step in range(1, 37))
print(fired)
"""


@pytest.mark.slow
def test_five_os_processes_each_tick_exactly_once(
    config: Config, r: redis.Redis, redis_url: str
) -> None:
    """5 separate processes stepping the same 3-minute test clock fire each tick once."""
    save(config, CronJob(name="every-minute", klass="RecurringTick", cron="* * * * *"), now=T0)
    save(
        config,
        CronJob(name="every-10s", klass="RecurringTick", cron="*/10 * * * * *", args=[1]),
        now=T0,
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", TICKER, redis_url, T0.isoformat()],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(5)
    ]
    fired = [int(p.communicate(timeout=60)[0].strip()) for p in procs]
    jobs = queued(r)
    assert len([j for j in jobs if j["args"] == []]) == 3
    assert len([j for j in jobs if j["args"] == [1]]) == 18
    assert sum(fired) == len(jobs) == 21


def test_restart_does_not_fire_a_tick_again(config: Config, r: redis.Redis) -> None:
    """A new poller (a restarted process) sees the claim and does not re-enqueue the tick."""
    save(config, CronJob(name="m", klass="RecurringTick", cron="* * * * *"), now=T0)
    at = T0 + timedelta(seconds=40)
    assert poller(config).tick(at) == 1
    assert poller(config).tick(at + timedelta(seconds=5)) == 0
    assert len(queued(r)) == 1


def test_tick_missed_within_grace_fires_once_and_older_is_skipped(
    config: Config, r: redis.Redis
) -> None:
    """Back within cron_grace (60 s) of a missed tick: it fires once; later: skipped."""
    save(config, CronJob(name="hourly", klass="RecurringTick", cron="0 * * * *"), now=T0)
    assert poller(config).tick(datetime(2026, 1, 1, 11, 0, 45, tzinfo=UTC)) == 1
    assert poller(config).tick(datetime(2026, 1, 1, 12, 5, 0, tzinfo=UTC)) == 0
    assert len(queued(r)) == 1


def test_a_new_job_does_not_fire_for_the_current_tick(config: Config, r: redis.Redis) -> None:
    """Saving a job claims the tick current at creation, as sidekiq-cron seeds it."""
    save(config, CronJob(name="m", klass="RecurringTick", cron="* * * * *"), now=T0)
    assert poller(config).tick(T0 + timedelta(seconds=10)) == 0


def test_disabled_jobs_do_not_fire_and_status_survives_a_reload(
    config: Config, r: redis.Redis
) -> None:
    """disable() stops a job, and saving the file's definition again keeps it disabled."""
    job = CronJob(name="m", klass="RecurringTick", cron="* * * * *")
    save(config, job, now=T0)
    CronSet(config).get("m").disable()
    save(config, job, now=T0)
    assert poller(config).tick(T0 + timedelta(seconds=40)) == 0
    CronSet(config).get("m").enable()
    assert poller(config).tick(T0 + timedelta(seconds=40)) == 1


def test_enqueue_now_and_last_and_next_run(config: Config, r: redis.Redis) -> None:
    """The API lists last/next run and can enqueue a run outside the schedule."""
    save(config, CronJob(name="m", klass="RecurringTick", cron="*/5 * * * *", queue="cron"), now=T0)
    entry = CronSet(config).get("m")
    assert entry.last_enqueue_time is None
    jid = entry.enqueue_now()
    assert queued(r)[0]["jid"] == jid
    entry = CronSet(config).get("m")
    assert entry.last_enqueue_time is not None
    assert entry.next_time.minute % 5 == 0
    history = r.lrange("cron_job:m:jid_history", 0, -1)
    assert json.loads(history[0])["jid"] == jid


def test_definition_uses_sidekiq_cron_layout(config: Config, r: redis.Redis) -> None:
    """Stored like sidekiq-cron 1.x: cron_jobs set, cron_job:<name> hash, JSON message."""
    save(
        config,
        CronJob(
            name="c",
            klass="CleanupOldDataJob",
            cron="0 2 * * *",
            zone="Europe/Berlin",
            queue="maintenance",
            args=[30],
        ),
        now=T0,
    )
    assert r.smembers("cron_jobs") == {"cron_job:c"}
    data = r.hgetall("cron_job:c")
    assert data["klass"] == "CleanupOldDataJob"
    assert data["cron"] == "0 2 * * * Europe/Berlin"
    assert data["status"] == "enabled"
    assert json.loads(data["args"]) == [30]
    assert json.loads(data["message"]) == {
        "class": "CleanupOldDataJob",
        "args": [30],
        "queue": "maintenance",
    }


def test_ruby_class_names_are_pushed_by_name(config: Config, r: redis.Redis) -> None:
    """A recurring job naming a class kiq does not know is pushed for a Ruby worker."""
    save(
        config,
        CronJob(name="ruby", klass="Billing::Nightly", cron="* * * * *", queue="ruby"),
        now=T0,
    )
    poller(config).tick(T0 + timedelta(seconds=40))
    (raw,) = r.lrange("queue:ruby", 0, -1)
    payload = json.loads(raw)
    assert (payload["class"], payload["retry"]) == ("Billing::Nightly", True)


@pytest.mark.parametrize("broken", ["queue:cron", "cron_job:m:enqueued", "cron_job:m:jid_history"])
def test_a_redis_error_between_claim_and_push_neither_loses_nor_doubles_a_tick(
    config: Config, r: redis.Redis, broken: str
) -> None:
    """A key of the tick's step holding the wrong type (WRONGTYPE mid-step) leaves nothing
    written: once the key is fixed the tick fires exactly once, and other jobs go on."""
    save(config, CronJob(name="m", klass="RecurringTick", cron="* * * * *"), now=T0)
    save(config, CronJob(name="other", klass="Billing::Nightly", cron="* * * * *"), now=T0)
    claims_before = r.zrange("cron_job:m:enqueued", 0, -1)
    r.delete(broken)
    r.set(broken, "not the type kiq expects")
    at = T0 + timedelta(seconds=40)  # the 10:01:00 tick is due

    assert poller(config).tick(at) == 1  # "other" fired; "m" was not, and said so
    assert r.llen("queue:default") == 1  # Billing::Nightly
    if broken != "cron_job:m:enqueued":
        assert r.zrange("cron_job:m:enqueued", 0, -1) == claims_before  # not claimed
    assert r.hget("cron_job:m", "last_enqueue_time") is None

    r.delete(broken)
    assert poller(config).tick(at) == 1
    assert poller(config).tick(at + timedelta(seconds=5)) == 0
    assert len(queued(r)) == 1
    assert r.llen("queue:default") == 1
