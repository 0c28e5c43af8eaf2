"""Recurring jobs as stored in Redis: the read model (``CronSet``) and the one-step fire.

Why apart from the poller (``kiq.recurring``): the admin API and the Web UI list,
enable, disable and "enqueue now" recurring jobs without any engine part, and the
poller fires ticks through the same ``enqueue``. The Redis layout is sidekiq-cron
1.x's (``kiq.keys``, shared/sidekiq-wire.md §11); every command is ``kiq.store``'s.

Example::

    for entry in kiq.crontab.CronSet():
        print(entry.name, entry.last_enqueue_time, entry.next_time)
"""

from __future__ import annotations

import logging
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

log = logging.getLogger(__name__)

HISTORY: Final = 10  # jid history entries kept (sidekiq-cron: cron_history_size)
KEEP_CLAIMS: Final = 86_400  # seconds of fired-tick claims kept (sidekiq-cron: 24 h)
TIME_FORMAT: Final = "%Y-%m-%d %H:%M:%S %z"  # sidekiq-cron's last_enqueue_time


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
        self.config.store.cron_set_status(self.name, "enabled")

    def disable(self) -> None:
        self.config.store.cron_set_status(self.name, "disabled")

    def enqueue_now(self) -> str | None:
        """Push one run now, outside the schedule (the Web UI's "Enqueue now")."""
        return enqueue(self.config, self.job, datetime.now(UTC))

    def delete(self) -> None:
        self.config.store.cron_delete(self.name)


class CronSet:
    """Every recurring job in Redis (kiq's and sidekiq-cron's)."""

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or get_default()

    def __iter__(self) -> Iterator[CronEntry]:
        yield from sorted(load_all(self.config), key=lambda e: e.name)

    def __len__(self) -> int:
        return self.config.store.cron_count()

    def get(self, name: str) -> CronEntry:
        for entry in load_all(self.config):
            if entry.name == name:
                return entry
        raise JobNotFound(f"no recurring job named {name!r}")


def save(config: Config, job: CronJob, now: datetime | None = None) -> None:
    """Store a definition; keep a status changed through the API; seed the claim set."""
    now = now or datetime.now(UTC)
    existing = config.store.cron_status(job.name)
    status = existing if existing is not None else ("enabled" if job.enabled else "disabled")
    registered = lookup(job.klass)
    queue = job.queue or (registered.options["queue"] if registered else "default")
    message: dict[str, Any] = {"class": job.klass, "args": job.args, "queue": queue}
    if job.retry is not None:
        message["retry"] = job.retry
    fields: dict[str, str | bytes] = {
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
    # A new job must not fire for the tick that was current when it was created.
    tick = job.previous_tick(now)
    config.store.cron_save(job.name, fields, (_claim(tick), tick.timestamp()))


def _claim(tick: datetime) -> str:
    return tick.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_all(config: Config) -> list[CronEntry]:
    entries = []
    for name, data in config.store.cron_all().items():
        entry = _entry(config, name, data)
        if entry is not None:
            entries.append(entry)
    return entries


def _entry(config: Config, stored_as: str, data: dict[str, str]) -> CronEntry | None:
    name = data.get("name") or stored_as
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


def enqueue(
    config: Config, job: CronJob, now: datetime, tick: datetime | None = None
) -> str | None:
    """Push one run of ``job`` and record it as sidekiq-cron does, in one step.

    With ``tick``, only if this call claims that tick (None when another process did,
    or when a client middleware stopped the push); without, unconditionally (the Web
    UI's "Enqueue now"). The job is prepared through the client (normalised, client
    middleware run) before anything is written.
    """
    item: dict[str, Any] = {"class": job.klass, "args": list(job.args)}
    registered = lookup(job.klass)
    if registered is not None:
        item["class"] = registered
    if job.queue:
        item["queue"] = job.queue
    if job.retry is not None:
        item["retry"] = job.retry
    prepared = Client(config).prepare(item)
    if prepared is None:
        return None
    jid = str(orjson.loads(prepared[1])["jid"])
    fired = config.store.cron_fire(
        job.name,
        prepared,
        claim=None if tick is None else (_claim(tick), tick.timestamp()),
        prune_before=(now - timedelta(seconds=KEEP_CLAIMS)).timestamp(),
        last_enqueue_time=now.astimezone(UTC).strftime(TIME_FORMAT),
        history=orjson.dumps({"jid": jid, "enqueued": now.isoformat()}),
        keep_history=HISTORY,
    )
    return jid if fired else None
