"""Every POST action changes Redis as Sidekiq's Web UI does, then redirects to its page."""

from __future__ import annotations

import json
import time

import pytest
import redis

from kiq.api import DeadSet, RetrySet, ScheduledSet
from kiq.client import Client
from kiq.config import Config
from kiq.cron import CronJob
from kiq.recurring import save
from tests.web.conftest import WebClient, add_process, failed, payload


def queued(r: redis.Redis, queue: str = "default") -> list[dict[str, object]]:
    return [json.loads(raw) for raw in r.lrange(f"queue:{queue}", 0, -1)]


def key(score: float, job: dict[str, object]) -> str:
    return f"{score!r}-{job['jid']}"


# -- busy ----------------------------------------------------------------------------


def test_quiet_one_process(web: WebClient, config: Config, r: redis.Redis) -> None:
    """Quiet sends TSTP to that process's signal list."""
    identity = add_process(config)
    response = web.post("/busy", {"identity": identity, "action": "quiet"})
    assert response.status_code == 200
    assert response.url.path == "/busy"
    assert r.lrange(f"{identity}-signals", 0, -1) == ["TSTP"]


def test_stop_all_processes_skips_embedded(web: WebClient, config: Config, r: redis.Redis) -> None:
    """Stop all sends TERM to every process except embedded ones."""
    a = add_process(config, "a:1:000000000001")
    b = add_process(config, "b:2:000000000002", embedded=True)
    web.post("/busy", {"action": "stop"})
    assert r.lrange(f"{a}-signals", 0, -1) == ["TERM"]
    assert r.exists(f"{b}-signals") == 0


def test_quiet_an_embedded_process_is_refused(
    web: WebClient, config: Config, r: redis.Redis
) -> None:
    """An embedded process ignores remote signals: 400 with the reason, nothing sent."""
    identity = add_process(config, embedded=True)
    response = web.post("/busy", {"identity": identity, "action": "quiet"})
    assert response.status_code == 400
    assert "embedded" in response.text
    assert r.exists(f"{identity}-signals") == 0


def test_unknown_busy_action_is_400(web: WebClient, config: Config) -> None:
    """Only quiet and stop are accepted."""
    identity = add_process(config)
    assert web.post("/busy", {"identity": identity, "action": "kill"}).status_code == 400


# -- queues --------------------------------------------------------------------------


def test_delete_queue_clears_it(web: WebClient, config: Config, r: redis.Redis) -> None:
    """Delete removes the list and the name from ``queues``."""
    Client(config).push({"class": "HardJob", "args": [], "queue": "low"})
    web.post("/queues/low", {"action": "delete"})
    assert r.exists("queue:low") == 0
    assert r.sismember("queues", "low") == 0


def test_pause_and_resume_queue(web: WebClient, config: Config, r: redis.Redis) -> None:
    """Pause adds the queue to kiq|paused; resume removes it."""
    Client(config).push({"class": "HardJob", "args": [], "queue": "low"})
    web.post("/queues/low", {"action": "pause"})
    assert r.sismember("kiq|paused", "low") == 1
    web.post("/queues/low", {"action": "unpause"})
    assert r.sismember("kiq|paused", "low") == 0


def test_delete_one_queued_job(web: WebClient, config: Config, r: redis.Redis) -> None:
    """Delete on a queue page removes exactly that job (LREM of its raw JSON)."""
    Client(config).push_bulk({"class": "HardJob", "args": [[1], [2]]})
    raw = next(raw for raw in r.lrange("queue:default", 0, -1) if json.loads(raw)["args"] == [1])
    response = web.post("/queues/default/delete", {"key_val": raw})
    assert response.url.path == "/queues/default"
    assert [job["args"] for job in queued(r)] == [[2]]


# -- retries -------------------------------------------------------------------------


def test_retry_one_now(web: WebClient, config: Config, r: redis.Redis) -> None:
    """Retry now pushes the job to its queue with retry_count lowered by one."""
    job = failed(retry_count=3)
    RetrySet(config).schedule(1_900_000_000.25, job)
    web.post(f"/retries/{key(1_900_000_000.25, job)}", {"action": "retry"})
    assert r.zcard("retry") == 0
    (pushed,) = queued(r)
    assert pushed["jid"] == job["jid"]
    assert pushed["retry_count"] == 2


def test_kill_one_retry(web: WebClient, config: Config, r: redis.Redis) -> None:
    """Kill moves the entry to the dead set."""
    job = failed()
    RetrySet(config).schedule(1_900_000_000.25, job)
    web.post(f"/retries/{key(1_900_000_000.25, job)}", {"action": "kill"})
    assert r.zcard("retry") == 0
    (dead,) = r.zrange("dead", 0, -1)
    assert json.loads(str(dead))["jid"] == job["jid"]


def test_delete_one_retry(web: WebClient, config: Config, r: redis.Redis) -> None:
    """Delete removes the entry and nothing else."""
    keep, drop = failed(), failed()
    RetrySet(config).schedule(1_900_000_000.25, keep)
    RetrySet(config).schedule(1_900_000_000.5, drop)
    web.post(f"/retries/{key(1_900_000_000.5, drop)}", {"action": "delete"})
    assert [json.loads(str(m))["jid"] for m in r.zrange("retry", 0, -1)] == [keep["jid"]]


def test_action_on_a_gone_entry_redirects_to_the_list(web: WebClient, r: redis.Redis) -> None:
    """An entry moved meanwhile (the poller ran it) is not an error: back to the list."""
    response = web.post(f"/retries/1900000000.25-{'e' * 24}", {"action": "retry"})
    assert response.status_code == 200
    assert response.url.path == "/retries"
    assert r.llen("queue:default") == 0


def test_retry_a_selection(web: WebClient, config: Config, r: redis.Redis) -> None:
    """The checked entries are retried; the others stay."""
    jobs = [failed(args=[i]) for i in range(3)]
    for i, job in enumerate(jobs):
        RetrySet(config).schedule(1_900_000_000 + i, job)
    web.post(
        "/retries",
        {"action": "retry", "key": [key(1_900_000_000.0, jobs[0]), key(1_900_000_002.0, jobs[2])]},
    )
    assert sorted(job["args"][0] for job in queued(r)) == [0, 2]  # type: ignore[index]
    assert r.zcard("retry") == 1


def test_kill_a_selection(web: WebClient, config: Config, r: redis.Redis) -> None:
    """Kill on a selection moves the checked entries to the dead set."""
    jobs = [failed(args=[i]) for i in range(2)]
    for i, job in enumerate(jobs):
        RetrySet(config).schedule(1_900_000_000 + i, job)
    web.post("/retries", {"action": "kill", "key": [key(1_900_000_000.0, jobs[0])]})
    assert r.zcard("dead") == 1
    assert r.zcard("retry") == 1


@pytest.mark.parametrize(
    ("verb", "retry", "dead", "queue"),
    [("retry", 0, 0, 3), ("delete", 0, 0, 0), ("kill", 0, 3, 0)],
)
def test_whole_retry_set_actions(
    web: WebClient, config: Config, r: redis.Redis, verb: str, retry: int, dead: int, queue: int
) -> None:
    """Retry all, delete all and kill all act on every entry."""
    for i in range(3):
        RetrySet(config).schedule(1_900_000_000 + i, failed(args=[i]))
    web.post(f"/retries/all/{verb}")
    assert (r.zcard("retry"), r.zcard("dead"), r.llen("queue:default")) == (retry, dead, queue)


def test_unknown_set_action_is_400(web: WebClient, config: Config, r: redis.Redis) -> None:
    """Retries do not 'add_to_queue' (Sidekiq's buttons): 400 and nothing moves."""
    RetrySet(config).schedule(1_900_000_000, failed())
    assert web.post("/retries/all/add_to_queue").status_code == 400
    assert r.zcard("retry") == 1


# -- scheduled and dead --------------------------------------------------------------


def test_add_scheduled_job_to_queue(web: WebClient, config: Config, r: redis.Redis) -> None:
    """Add to queue pushes the scheduled job now, unchanged."""
    job = payload(retry_count=1)
    ScheduledSet(config).schedule(1_900_000_000.5, job)
    web.post(f"/scheduled/{key(1_900_000_000.5, job)}", {"action": "add_to_queue"})
    (pushed,) = queued(r)
    assert (pushed["jid"], pushed["retry_count"]) == (job["jid"], 1)
    assert r.zcard("schedule") == 0


def test_add_all_scheduled_to_queue(web: WebClient, config: Config, r: redis.Redis) -> None:
    """Add all to queue empties the schedule into the queues."""
    for i in range(3):
        ScheduledSet(config).schedule(time.time() + 600 + i, payload(args=[i]))
    web.post("/scheduled/all/add_to_queue")
    assert (r.zcard("schedule"), r.llen("queue:default")) == (0, 3)


def test_kill_scheduled_job(web: WebClient, config: Config, r: redis.Redis) -> None:
    """Kill on a scheduled job moves it to the dead set."""
    job = payload()
    ScheduledSet(config).schedule(1_900_000_000.5, job)
    web.post(f"/scheduled/{key(1_900_000_000.5, job)}", {"action": "kill"})
    assert (r.zcard("schedule"), r.zcard("dead")) == (0, 1)


def test_retry_dead_job(web: WebClient, config: Config, r: redis.Redis) -> None:
    """Retry now on a dead job pushes it back to its queue."""
    job = failed()
    DeadSet(config).kill(job, notify=False, now=1_800_000_000.5)
    web.post(f"/morgue/{key(1_800_000_000.5, job)}", {"action": "retry"})
    assert (r.zcard("dead"), r.llen("queue:default")) == (0, 1)


@pytest.mark.parametrize(("verb", "dead", "queue"), [("retry", 0, 2), ("delete", 0, 0)])
def test_whole_dead_set_actions(
    web: WebClient, config: Config, r: redis.Redis, verb: str, dead: int, queue: int
) -> None:
    """Retry all and delete all empty the morgue."""
    for i in range(2):
        DeadSet(config).kill(failed(args=[i]), notify=False)
    web.post(f"/morgue/all/{verb}")
    assert (r.zcard("dead"), r.llen("queue:default")) == (dead, queue)


# -- recurring -----------------------------------------------------------------------


def test_enqueue_recurring_job_now(web: WebClient, config: Config, r: redis.Redis) -> None:
    """Enqueue now pushes one run of the recurring job."""
    save(config, CronJob(name="nightly", klass="CleanupJob", cron="0 2 * * *", args=[5]))
    web.post("/recurring/nightly", {"action": "enqueue"})
    (job,) = queued(r)
    assert (job["class"], job["args"]) == ("CleanupJob", [5])


def test_disable_and_enable_recurring_job(web: WebClient, config: Config, r: redis.Redis) -> None:
    """Disable and enable flip the sidekiq-cron status field."""
    save(config, CronJob(name="nightly", klass="CleanupJob", cron="0 2 * * *"))
    web.post("/recurring/nightly", {"action": "disable"})
    assert r.hget("cron_job:nightly", "status") == "disabled"
    web.post("/recurring/nightly", {"action": "enable"})
    assert r.hget("cron_job:nightly", "status") == "enabled"


def test_unknown_recurring_job_is_404(web: WebClient) -> None:
    """Acting on a recurring job that does not exist answers 404."""
    assert web.post("/recurring/nope", {"action": "enqueue"}).status_code == 404
