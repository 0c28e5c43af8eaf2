"""Sidekiq 7 and 8 write differently; kiq's worker and API read it all (issue 3, point 7).

No Ruby here: the payloads and heartbeats are built by hand in each version's shape, from
shared/sidekiq-wire.md (§1.2 heartbeat, §1.3 busy jobs, §2 payload, §2.2 retry fields,
§2.3 ActiveJob): integer-millisecond timestamps (8.0+), strict Base64 backtraces
(7.2.1+), ``capsules``/``weights`` in ``info`` (7.1+ / 8.0.9+), ``concurrency`` as a
hash field (8.1.2+), ``<identity>:work`` (6.5+) and ActiveJob ``wrapped`` jobs.
"""

from __future__ import annotations

import base64
import json
import time
import zlib
from datetime import UTC, datetime
from typing import Any

import pytest

from kiq import payload as wire
from kiq.api import ProcessSet, Queue, RetrySet, Stats, WorkSet
from tests.interop.conftest import PY_DONE, StrRedis, strict_json, wait_for, wait_records
from tests.support.wait import wait_until

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

BACKTRACE = [
    "/app/app/jobs/hard_job.rb:12:in `perform'",
    "/gems/sidekiq-8.1.7/lib/sidekiq/processor.rb:220:in `execute_job'",
    "/gems/sidekiq-8.1.7/lib/sidekiq/processor.rb:185:in `block (2 levels) in process'",
    "/gems/sidekiq-8.1.7/lib/sidekiq/job_retry.rb:113:in `local'",
]
AJ_HASH: dict[str, Any] = {
    "job_class": "SendWelcomeEmail",
    "job_id": "0b8c4b3e-6d9e-4a57-9b87-2f2d0f6a7c11",
    "provider_job_id": None,
    "queue_name": "interop",
    "priority": None,
    "arguments": [
        {"_aj_globalid": "gid://app/User/42"},
        "welcome",
        {"locale": "de", "_aj_symbol_keys": ["locale"]},
    ],
    "executions": 0,
    "exception_executions": {},
    "locale": "en",
    "timezone": "UTC",
    "enqueued_at": "2025-02-14T08:43:00.123456789Z",
    "scheduled_at": None,
}


def now_ms() -> int:
    return int(time.time() * 1000)


def strict_backtrace(lines: list[str]) -> str:
    """Sidekiq 7.2.1+ and 8: ``Base64.strict_encode64(Zlib::Deflate.deflate(json))``."""
    return base64.b64encode(zlib.compress(json.dumps(lines).encode())).decode()


def mime_backtrace(lines: list[str]) -> str:
    """Sidekiq 6.4 - 7.2.0: ``Base64.encode64``, a newline after every 60 characters."""
    flat = strict_backtrace(lines)
    return "".join(flat[i : i + 60] + "\n" for i in range(0, len(flat), 60))


def sidekiq8_job(
    klass: str, args: list[Any], queue: str = "interop", **extra: Any
) -> dict[str, Any]:
    stamp = now_ms()
    return {
        "retry": True,
        "queue": queue,
        "class": klass,
        "args": args,
        **extra,
        "jid": wire.new_jid(),
        "created_at": stamp,
        "enqueued_at": stamp,
    }


def enqueue_raw(r: StrRedis, job: dict[str, Any]) -> None:
    """What Sidekiq's client does: SADD queues + LPUSH queue:<q> (JSON.generate'd)."""
    r.sadd("queues", job["queue"])
    r.lpush(f"queue:{job['queue']}", json.dumps(job, separators=(",", ":")))


def sidekiq8_failure(klass: str, args: list[Any], trace: str, **extra: Any) -> dict[str, Any]:
    job = sidekiq8_job(klass, args, queue="default", **extra)
    job.pop("enqueued_at")
    failed = now_ms() - 60_000
    job.update(
        error_message="undefined method `name' for nil",
        error_class="NoMethodError",
        failed_at=failed,
        retry_count=0,
        error_backtrace=trace,
    )
    return job


# -- through kiq's worker ---------------------------------------------------------------


def test_sidekiq8_job_with_ms_timestamps_runs_in_kiq(config, r, start_worker):
    """A Sidekiq 8 job (integer-ms created_at/enqueued_at) runs in kiq with its arguments."""
    start_worker("-q", "interop", "-c", "2")
    job = sidekiq8_job("InteropEcho", ["string", 7, {"mike": "bob"}])

    enqueue_raw(r, job)

    (record,) = wait_records(r, PY_DONE, 1)
    assert record["jid"] == job["jid"]
    assert strict_json(record["args"]) == strict_json(job["args"])


def test_sidekiq8_retry_is_promoted_and_failed_again_by_kiq(config, r, start_worker):
    """A due Sidekiq 8 retry entry is rerun by kiq; failing again counts on, keeping failed_at."""
    start_worker("-q", "default", "-c", "2")
    job = sidekiq8_failure("Boom", [1], strict_backtrace(BACKTRACE), backtrace=True)

    r.zadd("retry", {json.dumps(job, separators=(",", ":")): time.time() - 1})

    def failed_again() -> dict[str, Any] | None:
        members = r.zrange("retry", 0, -1)
        return json.loads(members[0]) if members and "retried_at" in members[0] else None

    again = wait_for(failed_again, timeout=20.0)
    assert again["jid"] == job["jid"]
    assert again["retry_count"] == 1
    assert again["failed_at"] == job["failed_at"]  # Sidekiq 8's int ms, untouched
    assert again["error_class"] == "ValueError"
    assert isinstance(again["retried_at"], float)  # kiq writes 6.4-readable float seconds


@pytest.mark.parametrize(
    "wrapper",
    ["ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper", "Sidekiq::ActiveJob::Wrapper"],
)
def test_activejob_wrapped_job_runs_in_kiq(config, r, start_worker, wrapper):
    """An ActiveJob-wrapped job runs the kiq Job registered under the wrapper's name,
    with ActiveJob's serialised hash as its argument and the wrapped class in the log."""
    worker = start_worker("-q", "interop", "-c", "2")
    job = sidekiq8_job(wrapper, [AJ_HASH], wrapped="SendWelcomeEmail")

    enqueue_raw(r, job)

    (record,) = wait_records(r, PY_DONE, 1)
    assert record["class"] == wrapper
    assert record["wrapped"] == "SendWelcomeEmail"
    assert strict_json(record["args"]) == strict_json([AJ_HASH])
    wait_until(
        lambda: f"wrapped=SendWelcomeEmail jid={job['jid']}" in worker.output(), timeout=20.0
    )


# -- through kiq.api --------------------------------------------------------------------


def test_api_reads_ms_timestamps_and_latency(config, r):
    """kiq.api reads Sidekiq 8's integer-ms times as datetimes, and latency in seconds."""
    job = sidekiq8_job("HardJob", [1], queue="default")
    job["enqueued_at"] = job["created_at"] = stamp = now_ms() - 5_000
    enqueue_raw(r, job)
    now = time.time()

    (record,) = list(Queue("default", config))

    assert record.enqueued_at == datetime.fromtimestamp(stamp / 1000, UTC)
    assert record.created_at == datetime.fromtimestamp(stamp / 1000, UTC)
    assert Queue("default", config).latency(now=now) == pytest.approx(now - stamp / 1000)
    assert 4.5 < Stats(config).default_queue_latency < 30


@pytest.mark.parametrize("encode", [strict_backtrace, mime_backtrace], ids=["strict", "mime"])
def test_api_reads_retry_entry_backtrace_and_ms_failed_at(config, r, encode):
    """RetrySet decodes strict (7.2.1+) and MIME (6.4) Base64 backtraces and ms failed_at."""
    job = sidekiq8_failure("HardJob", [1, "x"], encode(BACKTRACE))
    r.zadd("retry", {json.dumps(job, separators=(",", ":")): time.time() + 60})

    (entry,) = RetrySet(config)

    assert entry.error_backtrace == BACKTRACE
    assert entry.failed_at == datetime.fromtimestamp(job["failed_at"] / 1000, UTC)
    assert entry.error_class == "NoMethodError"
    assert entry.retry_count == 0


def test_api_displays_activejob_class_and_arguments(config, r):
    """An ActiveJob-wrapped job shows its ActiveJob class and unwrapped arguments."""
    job = sidekiq8_job("Sidekiq::ActiveJob::Wrapper", [AJ_HASH], wrapped="SendWelcomeEmail")
    enqueue_raw(r, job)

    (record,) = list(Queue("interop", config))

    assert record.klass == "Sidekiq::ActiveJob::Wrapper"
    assert record.display_class == "SendWelcomeEmail"
    assert record.display_args == ["gid://app/User/42", "welcome", {"locale": "de"}]


def beat(r: StrRedis, identity: str, info: dict[str, Any], **fields: Any) -> None:
    """What a Sidekiq heartbeat writes: SADD processes, HSET <identity> ..., EXPIRE 60."""
    r.sadd("processes", identity)
    defaults = {"busy": 0, "beat": time.time(), "quiet": "false", "rss": 123456, "rtt_us": 250}
    r.hset(identity, mapping={"info": json.dumps(info), **defaults, **fields})
    r.expire(identity, 60)


def test_process_set_reads_sidekiq_8_heartbeat(config, r):
    """Sidekiq 8.1.2+: concurrency only as a hash field, queues and weights in ``capsules``."""
    identity = "web-1.example.com:4321:3f2a9c0d11be"
    info = {
        "hostname": "web-1.example.com",
        "started_at": time.time() - 100,
        "pid": 4321,
        "tag": "myapp",
        "queues": ["critical", "default", "single"],
        "weights": [{"critical": 3, "default": 1}, {"single": 0}],
        "capsules": {
            "default": {
                "concurrency": 10,
                "mode": "weighted",
                "weights": {"critical": 3, "default": 1},
            },
            "single": {"concurrency": 1, "mode": "strict", "weights": {"single": 0}},
        },
        "labels": ["reliable"],
        "identity": identity,
        "version": "8.1.7",
        "embedded": False,
    }
    beat(r, identity, info, concurrency=11, busy=2, quiet="true")

    (process,) = ProcessSet(config)

    assert process.identity == identity
    assert process.concurrency == 11
    assert process.queues == ["critical", "default", "single"]
    assert process.weights == [{"critical": 3, "default": 1}, {"single": 0}]
    assert process.version == "8.1.7"
    assert process.embedded is False
    assert process.busy == 2
    assert process.stopping is True
    assert process.labels == ["reliable"]


def test_process_set_reads_sidekiq_7_heartbeat(config, r):
    """Sidekiq 7.1-8.0.8: concurrency and queues in ``info``, ``weights`` without capsules."""
    identity = "worker-2:99:0011aabbccdd"
    info = {
        "hostname": "worker-2",
        "started_at": time.time() - 5,
        "pid": 99,
        "tag": "",
        "concurrency": 5,
        "queues": ["default", "low"],
        "weights": [{"default": 0, "low": 0}],
        "labels": [],
        "identity": identity,
        "version": "7.3.10",
        "embedded": True,
    }
    beat(r, identity, info)

    (process,) = ProcessSet(config)

    assert process.concurrency == 5
    assert process.queues == ["default", "low"]
    assert process.embedded is True
    assert process.version == "7.3.10"


def test_work_set_reads_sidekiq_7_work_hash(config, r):
    """WorkSet reads ``<identity>:work`` (Sidekiq 6.5+) whose payload is a JSON string."""
    identity = "worker-3:7:00ff00ff00ff"
    beat(
        r,
        identity,
        {"hostname": "worker-3", "pid": 7, "concurrency": 5, "queues": ["default"]},
        busy=1,
    )
    job = sidekiq8_job("Sidekiq::ActiveJob::Wrapper", [AJ_HASH], wrapped="SendWelcomeEmail")
    run_at = int(time.time()) - 3
    work = {"queue": "interop", "payload": json.dumps(job), "run_at": run_at}
    r.hset(f"{identity}:work", "owt8pxuqk", json.dumps(work))

    ((process_id, thread_id, entry),) = list(WorkSet(config))

    assert (process_id, thread_id) == (identity, "owt8pxuqk")
    assert entry.queue == "interop"
    assert entry.run_at == datetime.fromtimestamp(run_at, UTC)
    assert entry.job.jid == job["jid"]
    assert entry.job.display_class == "SendWelcomeEmail"
    assert WorkSet(config).size() == 1
