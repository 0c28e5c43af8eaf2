"""Live processes and the jobs they run: ``ProcessSet``/``Process``, ``WorkSet``/``Work``.

Why from heartbeats: each process (kiq or Sidekiq) rewrites its hash, its busy jobs and
its ``processes`` membership at every beat, so these views are only as fresh as the
last beat and prune processes whose hash expired. Remote quiet/stop go the other way,
through the ``<identity>-signals`` list a process reads at its next beat.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from kiq import payload as wire
from kiq.api.base import (
    busy_total,
    config_or_default,
    float_or_none,
    int_or_zero,
    parse_job,
    to_datetime,
)
from kiq.api.queue import JobRecord
from kiq.config import Config
from kiq.errors import KiqError
from kiq.keys import SIGNAL_TTL
from kiq.payload import Payload

log = logging.getLogger(__name__)

PROCESS_FIELDS: Final = ("info", "concurrency", "busy", "beat", "quiet", "rss", "rtt_us")


@dataclass(slots=True)
class Process:
    """One live process (kiq or Sidekiq), as its last heartbeat described it.

    ``concurrency`` is the hash field (Sidekiq 8.1.2+) else ``info.concurrency``;
    ``queues``/``weights`` come from ``capsules`` (8.0.9+) else ``info``; ``stopping``
    is the ``quiet`` field read as a bool; ``rss`` is in KB; times are UTC datetimes.

    Example::

        for process in ProcessSet():
            process.identity, process.busy, process.concurrency, process.queues
            if process.tag == "old-release":
                process.quiet()     # TSTP within one heartbeat
    """

    identity: str
    hostname: str | None
    pid: int | None
    tag: str | None
    labels: list[str]
    started_at: datetime | None
    concurrency: int
    queues: list[str]
    weights: list[dict[str, int]]
    capsules: dict[str, Any] | None
    busy: int
    beat: datetime | None
    stopping: bool
    rss: int
    rtt_us: int
    version: str | None
    embedded: bool
    info: dict[str, Any] = field(repr=False)
    fields: dict[str, str | None] = field(repr=False)
    config: Config = field(repr=False, compare=False)

    @classmethod
    def from_hash(cls, identity: str, values: list[bytes | None], config: Config) -> Process | None:
        """Build from HMGET PROCESS_FIELDS; None when the hash expired or is unreadable."""
        f = {
            name: None if value is None else value.decode(errors="replace")
            for name, value in zip(PROCESS_FIELDS, values, strict=True)
        }
        try:
            info = json.loads(f.pop("info") or "null")
        except ValueError:
            log.warning("process %s: its info field is not JSON; skipped", identity)
            return None
        if not isinstance(info, dict):
            return None
        capsules = info.get("capsules") if isinstance(info.get("capsules"), dict) else None
        if capsules:
            weights = [dict(cap.get("weights") or {}) for cap in capsules.values()]
            queues = list(dict.fromkeys(q for w in weights for q in w))
        else:
            weights, queues = list(info.get("weights") or []), list(info.get("queues") or [])
        concurrency = f["concurrency"] if f["concurrency"] is not None else info.get("concurrency")
        return cls(
            identity=identity,
            hostname=info.get("hostname"),
            pid=info.get("pid"),
            tag=info.get("tag"),
            labels=list(info.get("labels") or []),
            started_at=to_datetime(info.get("started_at")),
            concurrency=int_or_zero(concurrency),
            queues=queues,
            weights=weights,
            capsules=capsules,
            busy=int_or_zero(f["busy"]),
            beat=to_datetime(float_or_none(f["beat"])),
            stopping=f["quiet"] == "true",
            rss=int_or_zero(f["rss"]),
            rtt_us=int_or_zero(f["rtt_us"]),
            version=info.get("version"),
            embedded=info.get("embedded") is True,
            info=info,
            fields=f,
            config=config,
        )

    def __getitem__(self, name: str) -> Any:
        """A heartbeat field or ``info`` key (fields win); None when absent."""
        value = self.fields.get(name)
        return value if value is not None else self.info.get(name)

    def quiet(self) -> None:
        """Ask the process to stop taking jobs (TSTP at its next heartbeat)."""
        self._signal("TSTP")

    def stop(self) -> None:
        """Ask the process to shut down gracefully (TERM at its next heartbeat)."""
        self._signal("TERM")

    def dump_threads(self) -> None:
        """Ask the process to log every thread's stack (TTIN at its next heartbeat)."""
        self._signal("TTIN")

    def _signal(self, name: str) -> None:
        if self.embedded:
            raise KiqError(
                f"process {self.identity} is embedded in an application and ignores remote "
                f"signals; quiet or stop it through that application instead"
            )
        self.config.store.signal(self.identity, name, SIGNAL_TTL)


class ProcessSet:
    """Every live process, by identity; built after pruning processes whose hash expired.

    Example::

        processes = ProcessSet()
        processes.size(), processes.total_concurrency(), processes.total_rss()
        for process in processes:
            process.stop()
    """

    def __init__(self, config: Config | None = None, *, clean: bool = True) -> None:
        self.config = config_or_default(config)
        if clean:
            self.cleanup()

    def cleanup(self) -> int:
        """SREM members of ``processes`` whose heartbeat hash has expired; return how many.

        A process that died without clearing itself stays in the set until someone
        prunes it (Sidekiq: ProcessSet.new, at most once a minute in 6.5+).
        """
        return self.config.store.prune_processes()

    @classmethod
    def get(cls, identity: str, config: Config | None = None) -> Process | None:
        """One process by identity, or None if it is not registered and alive."""
        config = config_or_default(config)
        values = config.store.process_get(identity, PROCESS_FIELDS)
        return Process.from_hash(identity, values, config) if values is not None else None

    def __iter__(self) -> Iterator[Process]:
        store = self.config.store
        identities = store.process_identities()
        for identity, values in zip(
            identities, store.process_fields(identities, PROCESS_FIELDS), strict=True
        ):
            if (process := Process.from_hash(identity, values, self.config)) is not None:
                yield process

    def size(self) -> int:
        """SCARD ``processes`` (after the constructor's prune)."""
        return self.config.store.process_count()

    def total_concurrency(self) -> int:
        """Σ threads of every live process."""
        return sum(process.concurrency for process in self)

    def total_rss(self) -> int:
        """Σ resident memory in KB."""
        return sum(process.rss for process in self)

    def leader(self) -> str | None:
        """The Sidekiq Enterprise leader's identity, if one is elected."""
        return self.config.store.leader()


@dataclass(frozen=True, slots=True)
class Work:
    """A job running now: where, since when, and its payload."""

    process_id: str
    thread_id: str
    queue: str
    run_at: datetime
    payload: Payload
    raw: bytes = field(repr=False)
    config: Config = field(repr=False, compare=False)

    @property
    def job(self) -> JobRecord:
        """The running job's payload as a JobRecord (display_class, display_args...)."""
        return JobRecord(self.raw, self.queue, self.config)


class WorkSet:
    """Jobs running now across the cluster, oldest start first.

    Read from ``<identity>:work`` (Sidekiq 6.5+, kiq), else ``<identity>:workers``
    (Sidekiq 6.4); only as fresh as each process's last heartbeat.

    Example::

        for process_id, thread_id, work in WorkSet():
            print(process_id, thread_id, work.queue, work.run_at, work.job.display_class)
        WorkSet().find_work("b4a577edbccf1d805744efa9")
    """

    def __init__(self, config: Config | None = None) -> None:
        self.config = config_or_default(config)

    def __iter__(self) -> Iterator[tuple[str, str, Work]]:
        store = self.config.store
        identities = store.process_identities()
        works: list[Work] = []
        for identity, threads in zip(identities, store.busy_jobs(identities), strict=True):
            for tid, value in threads.items():
                if (work := self._work(identity, tid.decode(), value)) is not None:
                    works.append(work)
        works.sort(key=lambda work: work.run_at)
        for work in works:
            yield work.process_id, work.thread_id, work

    def _work(self, identity: str, tid: str, value: bytes) -> Work | None:
        try:
            data = json.loads(value)
            job = data["payload"]
            # The payload has been a JSON string since Sidekiq #4316; older ones an object.
            raw = job.encode() if isinstance(job, str) else wire.dumps(job)
            payload = parse_job(raw)[0]
            run_at = to_datetime(data.get("run_at")) or datetime.fromtimestamp(0, UTC)
            queue = str(data.get("queue") or payload.get("queue") or "")
        except (ValueError, LookupError, TypeError, AttributeError):
            log.warning("process %s thread %s: busy entry is unreadable; skipped", identity, tid)
            return None
        return Work(identity, tid, queue, run_at, payload, raw, self.config)

    def size(self) -> int:
        """Σ ``busy`` of every process (Sidekiq: WorkSet#size)."""
        return busy_total(self.config)

    def find_work(self, jid: str) -> Work | None:
        """The running job with this jid, or None."""
        for _, _, work in self:
            if work.payload.get("jid") == jid:
                return work
        return None


def progress(jids: list[str], config: Config | None = None) -> dict[str, dict[str, Any]]:
    """The last progress each job reported (``Job.progress``), by jid; none: left out.

    One pipelined HGETALL of ``kiq|progress|<jid>`` per job (``Store.read_progress``,
    which ``kiq.job.read_progress`` reads too); each value has ``percent`` (0-100),
    ``message``, ``class`` and ``at`` (epoch seconds).
    """
    return config_or_default(config).store.read_progress(jids)


@dataclass(frozen=True, slots=True)
class IterationState:
    """A Ruby iterable job's state, as Sidekiq 7.3+ keeps it in ``it-<jid>``
    (shared/sidekiq-wire.md §12), Ruby's or kiq's own (kiq.IterableJob, docs/iterable.md).

    ``executions`` (``ex``) counts the runs so far, ``cursor`` (``c``, JSON) is where the
    next run resumes, ``runtime`` (``rt``) is seconds spent iterating over all runs and
    ``cancelled_at`` is when ``cancel!`` flagged it (``cancelled``, epoch seconds).
    """

    jid: str
    executions: int
    cursor: Any
    runtime: float
    cancelled_at: datetime | None

    @property
    def cancelled(self) -> bool:
        return self.cancelled_at is not None


def iterations(jids: list[str], config: Config | None = None) -> dict[str, IterationState]:
    """The ``it-<jid>`` state of each job that has one, by jid (one pipelined HGETALL).

    Example::

        state = kiq.api.iterations([jid]).get(jid)
        if state: state.executions, state.cursor, state.cancelled
    """
    raws = config_or_default(config).store.read_iterations(jids)
    found: dict[str, IterationState] = {}
    for jid, raw in zip(jids, raws, strict=True):
        if not raw:
            continue
        data = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in raw.items()}
        try:
            cursor = json.loads(data["c"]) if "c" in data else None
        except ValueError:
            cursor = data["c"]  # not JSON: shown as written
        cancelled = float_or_none(data.get("cancelled"))
        found[jid] = IterationState(
            jid=jid,
            executions=int_or_zero(data.get("ex")),
            cursor=cursor,
            runtime=float_or_none(data.get("rt")) or 0.0,
            cancelled_at=to_datetime(cancelled),
        )
    return found
