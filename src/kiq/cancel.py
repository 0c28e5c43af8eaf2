"""Cancel a job by jid, wherever it is; record the fate of jobs that never finished.

Example::

    result = kiq.api.cancel("b4a577edbccf1d805744efa9")   # or MyJob.cancel(jid), kiq cancel JID
    print(result)   # "removed from queue:default", "cancelling: running", "not found: ..."

Steps of ``cancel`` (docs/iterable.md):
  1. set Sidekiq's flag, exactly as Ruby's ``cancel!`` does: ``HSETNX it-<jid> cancelled
     <epoch>`` and ``EXPIRE NX`` (kiq.store's ``iteration`` file), so a Ruby or a kiq
     job that starts or flushes later sees it;
  2. a job still waiting (a queue, ``schedule``, ``retry``) is removed, its unique lock
     released, and its fate recorded as ``cancelled`` (``kiq|fate|<jid>``);
  3. a job running or fetched by some process is left to stop itself: each kiq worker's
     heartbeat reads its running jids' flags in its one round trip, so within one
     beat (5 s) an iterable job stops at its next item (``on_cancel``), a thread job's
     ``self.cancelled()`` turns true and an ``async def`` job's task is cancelled; it
     is then recorded as cancelled, neither failed nor retried (kiq.processor);
  4. a jid found nowhere (finished, dead or unknown) is said so. Its flag stays (30 days,
     as Ruby's): a job racing from a queue to a process between the steps still sees it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from kiq import payload as wire
from kiq import unique
from kiq.config import Config
from kiq.errors import IterationInterrupted, JobExpired
from kiq.payload import Payload

if TYPE_CHECKING:
    from kiq.job import Job

log = logging.getLogger(__name__)

QUEUE_PAGE: Final = 1000  # jobs per LRANGE while looking through a queue
SCAN_COUNT: Final = 500  # ZSCAN COUNT hint for schedule and retry


@dataclass(frozen=True, slots=True)
class CancelResult:
    """What ``cancel`` did: ``outcome`` is "removed", "cancelling" or "not_found"."""

    jid: str
    outcome: str
    where: str

    @property
    def found(self) -> bool:
        return self.outcome != "not_found"

    def __str__(self) -> str:
        if self.outcome == "removed":
            return f"job {self.jid} removed from {self.where} and recorded as cancelled"
        if self.outcome == "cancelling":
            return f"job {self.jid} is {self.where}: it stops within one heartbeat (5 s)"
        return f"job {self.jid} not found in any queue, schedule, retry or process: {self.where}"


def cancel(config: Config, jid: str) -> CancelResult:
    """Cancel the job ``jid`` (the steps in the module docstring)."""
    if not isinstance(jid, str) or not jid or '"' in jid or "\\" in jid:
        raise ValueError(f"a jid is a non-empty string without quotes, got {jid!r}")
    store = config.store
    store.mark_cancelled(jid, int(wire.now()))
    needle = f'"jid":"{jid}"'.encode()
    for name in store.queue_names():
        raw = _find_in_queue(config, name, needle)
        if raw is not None and store.queue_remove(name, raw):
            return _removed(config, jid, raw, f"queue {name}")
    for key, label in ((config.keys.schedule, "schedule"), (config.keys.retry, "retry")):
        for raw, _ in store.set_scan(key, f'*"jid":"{jid}"*', SCAN_COUNT):
            if store.set_remove(key, raw):
                return _removed(config, jid, raw, label)
    if _running(config, jid, needle):
        return CancelResult(jid, "cancelling", "running")
    if store.find_fetched(needle):
        return CancelResult(jid, "cancelling", "fetched by a worker, about to start")
    return CancelResult(jid, "not_found", "it finished, died or never existed")


def _find_in_queue(config: Config, name: str, needle: bytes) -> bytes | None:
    store = config.store
    start = 0
    while True:
        page = store.queue_range(name, start, start + QUEUE_PAGE - 1)
        for raw in page:
            if needle in raw:
                return raw
        if len(page) < QUEUE_PAGE:
            return None
        start += QUEUE_PAGE


def _running(config: Config, jid: str, needle: bytes) -> bool:
    """Whether a live process's busy-jobs hash (Ruby's or kiq's) holds the job."""
    store = config.store
    for work in store.busy_jobs(store.process_identities()):
        for entry in work.values():
            if needle in entry or needle.replace(b'"', b'\\"') in entry:
                return True
    return False


def _removed(config: Config, jid: str, raw: bytes, where: str) -> CancelResult:
    try:
        payload: Payload = wire.loads(raw)
    except Exception:  # a job kiq cannot read is still gone; record what we have
        payload = {"jid": jid}
    unique.release(config, payload)
    settle_batch(config, payload)
    record(config, payload, "cancelled", where, raw)
    log.info("cancelled job %s jid=%s: removed from %s", payload.get("class", "?"), jid, where)
    return CancelResult(jid, "removed", where)


def settle_batch(config: Config, payload: Payload) -> None:
    """Count a cancelled or expired member of a batch as done, so the batch still fires.

    A success, as Sidekiq Pro counts an expired job, and as Sidekiq 7.3's cancelled
    iterable job (its ``perform`` returns): the app chose not to run the job, nothing
    failed, so ``complete`` and (when the rest succeed) ``success`` fire. Before this the
    member stayed pending and its batch never fired until it expired. Best effort on
    this path (a job removed from a queue by ``cancel``): the worker's path goes through
    the processor, which retries the write while Redis is away. The update is idempotent
    per jid, so a job settled twice counts once.
    """
    if "bid" not in payload:
        return
    from kiq import batch  # batches load only when a payload names one

    try:
        batch.record(config, payload, "success", batch.result_json(None))
    except Exception:
        log.exception(
            "cannot count the cancelled job %s in batch %s", payload.get("jid"), payload["bid"]
        )


def record(
    config: Config, payload: Mapping[str, Any], fate: str, where: str, raw: bytes | None = None
) -> None:
    """Record how a job ended without finishing: ``kiq|fate|<jid>`` and ``kiq|stat|<fate>``.

    Best effort: Redis away is logged, not raised (the job itself is already settled).
    """
    fields: dict[str, str | bytes] = {
        "fate": fate,
        "at": repr(wire.now()),
        "class": str(payload.get("wrapped") or payload.get("class") or "?"),
        "queue": str(payload.get("queue") or ""),
        "where": where,
        "job": raw if raw is not None else wire.dumps(dict(payload)),
    }
    try:
        config.store.record_fate(str(payload.get("jid", "")), fields)
    except Exception as exc:
        log.warning("cannot record job %s as %s (%s)", payload.get("jid"), fate, exc)


def fate(config: Config, jid: str) -> dict[str, str]:
    """How the job ``jid`` ended if it was cancelled or expired ({} otherwise)."""
    return config.store.read_fate(jid)


def not_a_failure(job: Job | None, exc: BaseException) -> bool:
    """Whether a run that raised ``exc`` ended without failing (kiq.processor): an
    iterable job interrupted, a job expired before it started, a cancelled job."""
    if isinstance(exc, IterationInterrupted | JobExpired):
        return True
    return job is not None and job.cancelled()


def settle(
    config: Config, payload: Payload, raw: bytes, exc: BaseException | None, log_jobs: bool
) -> None:
    """The end of an expired or a cancelled job in the worker: its log line, its fate, its
    unique lock freed. The processor counts it in its batch next (``settle_batch``'s
    rule, with its retries), then acknowledges it: never retried."""
    from kiq import log as kiq_log  # the worker's; ``import kiq`` does not load it

    job_log = kiq_log.job_logger("kiq.job")
    fate = "expired" if isinstance(exc, JobExpired) else "cancelled"
    if fate == "expired":
        job_log.warning("expired: %s; dropped, not run", exc)
    elif log_jobs:
        kiq_log.job_line(job_log, logging.INFO, "cancelled")
    where = "expired before it started" if fate == "expired" else "cancelled while running"
    record(config, payload, fate, where, raw)
    unique.release(config, payload)
