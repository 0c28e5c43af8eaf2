"""Recurring jobs in Redis: stored, listed and enqueued exactly once per tick.

The Redis layout is sidekiq-cron 1.x's (the version Debian ships next to Sidekiq 6.4),
so the Ruby gem's Web tab lists kiq's recurring jobs and a Ruby and a Python poller can
share the work (shared/sidekiq-wire.md §11):

  * ``cron_jobs``                   SET of ``cron_job:<name>`` keys
  * ``cron_job:<name>``             HASH: name, klass, cron, description, args (JSON),
                                    message (JSON), status, last_enqueue_time, ...
  * ``cron_job:<name>:enqueued``    ZSET: one member per fired tick (the claim)
  * ``cron_job:<name>:jid_history`` LIST of ``{"jid", "enqueued"}``

Exactly once: every process computes the same latest tick for a job and ZADDs it to
the ``enqueued`` set; only the process whose ZADD added the member enqueues. The set
outlives restarts, so a restarted process never fires a tick twice.

Missed ticks (policy): only the latest tick is considered, and only while it is less
than ``cron_grace`` seconds (60, as sidekiq-cron) old. A tick missed while every
process was down is enqueued once when one comes back within the grace period, and
skipped otherwise — a recurring job never fires a burst of catch-up runs.

Example::

    kiq.get_default().cron_jobs.append(
        kiq.cron.CronJob(name="cleanup", klass="app.jobs.CleanupOldDataJob", cron="0 2 * * *")
    )
    for entry in kiq.recurring.CronSet():
        print(entry.name, entry.last_enqueue_time, entry.next_time)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from kiq import cron
from kiq.client import Client
from kiq.config import Config, get_default
from kiq.cron import CronJob
from kiq.errors import JobNotFound
from kiq.job import lookup
from kiq.outage import Outage
from kiq.store import is_transient
from kiq.supervise import Health, spawn

log = logging.getLogger(__name__)

JOBS_SET: Final = "cron_jobs"
HISTORY: Final = 10  # jid history entries kept (sidekiq-cron: cron_history_size)
KEEP_CLAIMS: Final = 86_400  # seconds of fired-tick claims kept (sidekiq-cron: 24 h)
TIME_FORMAT: Final = "%Y-%m-%d %H:%M:%S %z"  # sidekiq-cron's last_enqueue_time


def _key(config: Config, name: str, suffix: str = "") -> str:
    return f"{config.key_prefix}cron_job:{name}{suffix}"


def _s(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


@dataclass(frozen=True, slots=True)
class CronEntry:
    """A recurring job as stored in Redis, with its last and next run."""

    job: CronJob
    last_enqueue_time: datetime | None
    config: Config
    problem: str | None = None  # e.g. a message that is not JSON: listed, never fired

    @property
    def name(self) -> str:
        return self.job.name

    @property
    def enabled(self) -> bool:
        return self.job.enabled and self.problem is None

    @property
    def next_time(self) -> datetime:
        return self.job.next_tick(datetime.now(UTC))

    def enable(self) -> None:
        self.config.store.redis.hset(_key(self.config, self.name), "status", "enabled")

    def disable(self) -> None:
        self.config.store.redis.hset(_key(self.config, self.name), "status", "disabled")

    def enqueue_now(self) -> str | None:
        """Push one run now, outside the schedule (the Web UI's "Enqueue now")."""
        return enqueue(self.config, self.job, datetime.now(UTC))

    def delete(self) -> None:
        r = self.config.store.redis
        key = _key(self.config, self.name)
        pipe = r.pipeline(transaction=True)
        pipe.srem(f"{self.config.key_prefix}{JOBS_SET}", key)
        pipe.delete(key, f"{key}:enqueued", f"{key}:jid_history")
        pipe.execute()


class CronSet:
    """Every recurring job in Redis (kiq's and sidekiq-cron's)."""

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or get_default()

    def __iter__(self) -> Iterator[CronEntry]:
        yield from sorted(load_all(self.config), key=lambda e: e.name)

    def __len__(self) -> int:
        return int(self.config.store.redis.scard(f"{self.config.key_prefix}{JOBS_SET}"))

    def get(self, name: str) -> CronEntry:
        for entry in load_all(self.config):
            if entry.name == name:
                return entry
        raise JobNotFound(f"no recurring job named {name!r}")


def save(config: Config, job: CronJob, now: datetime | None = None) -> None:
    """Store a definition; keep a status changed through the API; seed the claim set."""
    r = config.store.redis
    key = _key(config, job.name)
    now = now or datetime.now(UTC)
    existing = r.hget(key, "status")
    status = _s(existing) if existing is not None else ("enabled" if job.enabled else "disabled")
    registered = lookup(job.klass)
    queue = job.queue or (registered.options["queue"] if registered else "default")
    message: dict[str, Any] = {"class": job.klass, "args": job.args, "queue": queue}
    if job.retry is not None:
        message["retry"] = job.retry
    fields = {
        "name": job.name,
        "klass": job.klass,
        "cron": job.line,
        "description": job.description,
        "args": orjson.dumps(job.args),
        "message": orjson.dumps(message),
        "status": status,
        "active_job": "false",
        "queue_name_prefix": "",
        "queue_name_delimiter": "",
        "date_as_argument": "false",
        "symbolize_args": "false",
    }
    if job.queue:
        fields["queue"] = job.queue
    pipe = r.pipeline(transaction=True)
    pipe.sadd(f"{config.key_prefix}{JOBS_SET}", key)
    pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
    pipe.exists(f"{key}:enqueued")
    exists = pipe.execute()[-1]
    if not exists:
        # A new job must not fire for the tick that was current when it was created.
        tick = job.previous_tick(now)
        r.zadd(f"{key}:enqueued", {_claim(tick): tick.timestamp()})


def _claim(tick: datetime) -> str:
    return tick.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_all(config: Config) -> list[CronEntry]:
    r = config.store.redis
    keys = [_s(k) for k in r.smembers(f"{config.key_prefix}{JOBS_SET}")]
    if not keys:
        return []
    pipe = r.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    entries = []
    for key, raw in zip(keys, pipe.execute(), strict=True):
        data = {_s(k): _s(v) for k, v in raw.items()}
        if not data:
            continue
        entry = _entry(config, key, data)
        if entry is not None:
            entries.append(entry)
    return entries


def _entry(config: Config, key: str, data: dict[str, str]) -> CronEntry | None:
    name = data.get("name") or key.split(":", 1)[-1]
    props: dict[str, Any] = {
        "class": data.get("klass", ""),
        "cron": data.get("cron", ""),
        "description": data.get("description", ""),
        "status": data.get("status", "enabled"),
    }
    try:  # written by someone else (sidekiq-cron, by hand): one bad hash is no 500
        message = orjson.loads(data["message"]) if data.get("message") else {}
    except orjson.JSONDecodeError:
        message = None
    problem = None if isinstance(message, dict) else "invalid message (not a JSON object)"
    message = message if isinstance(message, dict) else {}
    props["queue"] = data.get("queue") or message.get("queue")
    props["args"] = orjson.loads(data["args"]) if data.get("args") else message.get("args", [])
    if "retry" in message:
        props["retry"] = message["retry"]
    try:
        job = cron.from_dict(name, props)
    except Exception as exc:  # a bad definition written by someone else: skip, say so
        log.warning("skipping recurring job %s: %s", name, exc)
        return None
    last = data.get("last_enqueue_time")
    when = datetime.strptime(last, TIME_FORMAT) if last else None
    return CronEntry(job=job, last_enqueue_time=when, config=config, problem=problem)


def enqueue(config: Config, job: CronJob, now: datetime) -> str | None:
    """Push one run of ``job`` through the client and record it as sidekiq-cron does."""
    item: dict[str, Any] = {"class": job.klass, "args": list(job.args)}
    registered = lookup(job.klass)
    if registered is not None:
        item["class"] = registered
    if job.queue:
        item["queue"] = job.queue
    if job.retry is not None:
        item["retry"] = job.retry
    jid = Client(config).push(item)
    key = _key(config, job.name)
    pipe = config.store.redis.pipeline(transaction=False)
    pipe.hset(key, "last_enqueue_time", now.astimezone(UTC).strftime(TIME_FORMAT))
    pipe.lpush(f"{key}:jid_history", orjson.dumps({"jid": jid, "enqueued": now.isoformat()}))
    pipe.ltrim(f"{key}:jid_history", 0, HISTORY - 1)
    pipe.execute()
    return jid


class CronPoller:
    """Fire due recurring jobs; one per process, all processes share the claims."""

    def __init__(self, config: Config, outage: Outage) -> None:
        self.config = config
        self.outage = outage
        self._stop = threading.Event()

    def load(self) -> int:
        """Save the schedule file's and the code's jobs to Redis; return how many."""
        jobs = list(self.config.cron_jobs)
        path = self.config.schedule_file or cron.find_default()
        if path is not None:
            jobs += cron.load(path)
        for job in jobs:
            save(self.config, job)
        if jobs:
            log.info("recurring jobs: %s", ", ".join(j.name for j in jobs))
        return len(jobs)

    def start(self, health: Health | None = None) -> None:
        spawn("cron", self._run, stop=self._stop, health=health)

    def stop(self) -> None:
        self._stop.set()

    def tick(self, now: datetime | None = None) -> int:
        """Enqueue every job whose latest tick is due and unclaimed; return how many."""
        now = now or datetime.now(UTC)
        r = self.config.store.redis
        fired = 0
        for entry in load_all(self.config):
            if not entry.enabled:
                continue
            last = entry.job.previous_tick(now)
            if (now - last).total_seconds() > self.config.cron_grace:
                continue
            if entry.last_enqueue_time is not None and entry.last_enqueue_time >= last:
                continue
            key = _key(self.config, entry.name, ":enqueued")
            if not r.zadd(key, {_claim(last): last.timestamp()}):
                continue  # another process (kiq or sidekiq-cron) fired this tick
            enqueue(self.config, entry.job, now)
            r.zremrangebyscore(key, 0, (now - timedelta(seconds=KEEP_CLAIMS)).timestamp())
            fired += 1
        return fired

    def _run(self) -> None:
        while not self._stop.wait(self.config.cron_poll_interval):
            try:
                self.tick()  # no outage.ok(): a tick that wrote nothing proves no recovery
            except Exception as exc:
                if not is_transient(exc):
                    raise  # a bug: kiq.supervise logs it once and restarts the cron loop
                self.outage.error(exc)
