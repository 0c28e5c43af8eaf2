"""Job results, opt in: ``kiq.Result`` waits for what a job returned, or why it failed.

Example::

    class Resize(kiq.Job, result_ttl=3600):          # or Resize.set(result_ttl=600)
        def perform(self, image_id: int) -> dict:
            return {"width": 640, "height": 480}

    handle = Resize.enqueue(7)                        # a Result; perform_async: the jid
    handle.get(timeout=10)                            # {"width": 640, "height": 480}
    await handle                                      # in async code (or handle.aget(10))
    kiq.Result(jid).status                            # "succeeded", from any process

A job pushed with ``result_ttl`` (a payload field; Ruby Sidekiq carries it untouched)
gets a record in ``kiq|result|<jid>``: JSON, ``status`` first, kept ``result_ttl``
seconds. Its life (``status``):

  * ``pending``: no record: not run yet, or an unknown or expired jid (Celery's PENDING);
  * ``running``: a worker started it (written just before ``perform``);
  * ``retrying``: it failed and a retry is scheduled; ``get()`` goes on waiting;
  * ``succeeded``: ``value`` is what ``perform`` returned;
  * ``failed``: it ended without success and without the dead set (``retry=False``,
    ``kiq.Discard``, ``dead=False``), or its value could not be stored (not JSON, or
    a record over ``Config.result_max_bytes``: error ``kiq.ResultTooLarge``; the job
    itself ran and is not retried: running it again would not make the value smaller);
  * ``dead``: retries exhausted (or killed): it is in the dead set.

``get()`` returns the value of a succeeded job and raises ``JobFailed`` (the remote
class, message and traceback) for a failed or dead one, ``ResultTimeout`` when
``timeout`` passes first. The three final records are written, published and counted
in one Lua step before the job is acknowledged (``kiq.store.results``); waiting costs
one shared pub/sub subscription, no polling (``kiq.store.result_wait``).

In kiq.testing's fake and inline modes records are kept in memory: inline runs store
them at the push, ``drain`` when it runs the job; ``get()`` of a job not run yet raises
``ResultTimeout`` at once, saying to drain. docs/results.md has the whole story.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import traceback
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Final

import orjson

from kiq import payload as wire
from kiq.config import Config, get_default
from kiq.errors import KiqError

if TYPE_CHECKING:
    from kiq.payload import Payload

log = logging.getLogger(__name__)

PENDING: Final = "pending"
RUNNING: Final = "running"
RETRYING: Final = "retrying"
SUCCEEDED: Final = "succeeded"
FAILED: Final = "failed"
DEAD: Final = "dead"
FINAL: Final = frozenset({SUCCEEDED, FAILED, DEAD})
TOO_LARGE: Final = "kiq.ResultTooLarge"  # error_class of a value over result_max_bytes
NOT_JSON: Final = "kiq.ResultNotJSON"  # error_class of a value JSON cannot hold
MAX_TRACEBACK: Final = 20_000  # characters of the remote traceback kept
# RetryHandler's outcome -> the record's status
_OUTCOMES: Final = {"retry": RETRYING, "dead": DEAD, "discard": FAILED, "dropped": FAILED}


class JobFailed(KiqError):
    """The job behind a ``Result`` failed for good (``failed`` or ``dead``).

    ``error_class``, ``error_message`` and ``traceback`` are the remote ones (the
    traceback is also attached as a note, so it prints under this one).
    """

    def __init__(self, jid: str, status: str, record: dict[str, Any]) -> None:
        self.jid = jid
        self.status = status
        self.job_class = str(record.get("class", ""))
        self.error_class = str(record.get("error_class", ""))
        self.error_message = str(record.get("error_message", ""))
        self.traceback = str(record.get("traceback", ""))
        self.retry_count = record.get("retry_count")
        super().__init__(
            f"{self.job_class} jid={jid} {status}: {self.error_class}: {self.error_message}"
        )
        if self.traceback:
            self.add_note(f"Remote traceback ({self.job_class} jid={jid}):\n{self.traceback}")


class ResultTimeout(KiqError, TimeoutError):
    """``get(timeout=...)`` gave up before the job's result was stored."""


def encode_record(record: dict[str, Any]) -> bytes:
    """A record's JSON (``status`` must be its first key: the listener reads the prefix)."""
    return orjson.dumps(record)


def decode_record(raw: bytes | None) -> dict[str, Any] | None:
    """A stored record, or None for none (or one that is not a JSON object)."""
    if raw is None:
        return None
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def _head(status: str, payload: Payload) -> dict[str, Any]:
    return {
        "status": status,
        "jid": str(payload.get("jid", "")),
        "class": str(payload.get("wrapped") or payload.get("class", "")),
        "at": wire.now(),
    }


def success_record(payload: Payload, value: Any, max_bytes: int) -> tuple[str, bytes]:
    """(status, record) for a job that returned ``value``: succeeded, or failed when the
    value is not JSON or its record passes ``max_bytes`` (the message says which)."""
    record = _head(SUCCEEDED, payload)
    record["value"] = value
    try:
        raw = encode_record(record)
    except (TypeError, orjson.JSONEncodeError) as exc:
        return _unstorable(
            payload, NOT_JSON, f"the value {type(value).__name__} is not JSON: {exc}"
        )
    if len(raw) > max_bytes:
        return _unstorable(
            payload,
            TOO_LARGE,
            f"the result is {len(raw)} bytes of JSON, over result_max_bytes={max_bytes}: "
            f"return less (an id, a path to the data) or raise Config.result_max_bytes",
        )
    return SUCCEEDED, raw


def _unstorable(payload: Payload, error_class: str, why: str) -> tuple[str, bytes]:
    name = payload.get("class", "?")
    message = f"{name} jid={payload.get('jid', '?')} ran, but its result was not stored: {why}"
    log.warning("%s", message)
    record = _head(FAILED, payload)
    record.update(error_class=error_class, error_message=message)
    return FAILED, encode_record(record)


def failure_record(payload: Payload, exc: BaseException, status: str) -> bytes:
    """The record of a failure: remote class, message, traceback, retry count."""
    record = _head(status, payload)
    text = "".join(traceback.format_exception(exc))
    record.update(
        error_class=type(exc).__qualname__,
        error_message=_message(exc),
        traceback=text[-MAX_TRACEBACK:],
        retry_count=int(payload.get("retry_count", -1)) + 1,
    )
    return encode_record(record)


def _message(exc: BaseException) -> str:
    try:
        return str(exc)[:10_000]
    except Exception:
        return "!!! ERROR MESSAGE THREW AN ERROR !!!"


def ttl_of(payload: Payload | None) -> int | None:
    """Whole seconds to keep this job's record, or None if it asked for none."""
    ttl = payload.get("result_ttl") if payload is not None else None
    if ttl is None or isinstance(ttl, bool) or not isinstance(ttl, int | float):
        return None
    return max(1, math.ceil(ttl))


# -- the worker's side (kiq.processor), and kiq.testing's ---------------------------------


def mark_running(config: Config, payload: Payload) -> None:
    """Record ``running`` just before ``perform``; best effort (a lost write loses only
    the status shown, never the job or its result)."""
    ttl = ttl_of(payload)
    if ttl is None:
        return
    try:
        config.store.mark_result(payload["jid"], encode_record(_head(RUNNING, payload)), ttl)
    except Exception as exc:
        log.warning("cannot record jid=%s as running (%s)", payload.get("jid"), exc)


def store_success(config: Config, payload: Payload, value: Any) -> None:
    """Store what the job returned (or why it could not be), wake waiters; raises on a
    Redis error so the caller retries it before the ack."""
    ttl = ttl_of(payload)
    if ttl is None:
        return
    status, raw = success_record(payload, value, config.result_max_bytes)
    config.store.store_result(payload["jid"], raw, ttl, status)


def store_failure(config: Config, payload: Payload, exc: BaseException, outcome: str) -> None:
    """Record a failure as the retry handler decided it (``outcome``)."""
    ttl = ttl_of(payload)
    if ttl is None or "jid" not in payload:
        return
    status = _OUTCOMES.get(outcome, FAILED)
    raw = failure_record(payload, exc, status)
    if status in FINAL:
        config.store.store_result(payload["jid"], raw, ttl, status)
    else:
        config.store.mark_result(payload["jid"], raw, ttl)


# Records of jobs run by kiq.testing (fake and inline modes), by jid; None: Redis.
_local: dict[str, bytes] | None = None


def use_local(records: dict[str, bytes] | None) -> None:
    """kiq.testing: keep records in ``records`` (None: back to Redis)."""
    global _local
    _local = records


def run_recorded(config: Config, payload: Payload, run: Callable[[], Any]) -> Any:
    """kiq.testing: ``run()`` the job and keep its record in memory, as a worker would."""
    local = _local
    if local is None or ttl_of(payload) is None:
        return run()
    jid = str(payload.get("jid", ""))
    try:
        value = run()
    except BaseException as exc:
        local[jid] = failure_record(payload, exc, FAILED)
        raise
    local[jid] = success_record(payload, value, config.result_max_bytes)[1]
    return value


# -- the handle ---------------------------------------------------------------------------


class Result:
    """A handle on one job's result, by jid; from ``Job.enqueue`` or ``kiq.Result(jid)``."""

    def __init__(self, jid: str, *, config: Config | None = None) -> None:
        self.jid = jid
        self._config = config

    @property
    def config(self) -> Config:
        return self._config if self._config is not None else get_default()

    def __repr__(self) -> str:
        return f"<kiq.Result jid={self.jid}>"

    def record(self) -> dict[str, Any] | None:
        """The stored record as a dict (status, class, at, value or error), or None."""
        if _local is not None:
            return decode_record(_local.get(self.jid))
        return decode_record(self.config.store.read_results([self.jid])[0])

    @property
    def status(self) -> str:
        """pending, running, retrying, succeeded, failed or dead (one read)."""
        record = self.record()
        return str(record.get("status", PENDING)) if record else PENDING

    def ready(self) -> bool:
        """Has the job ended (succeeded, failed or dead)?"""
        return self.status in FINAL

    def get(self, timeout: float | None = None) -> Any:
        """Wait for the job; its value, or JobFailed; ResultTimeout after ``timeout`` s."""
        if _local is not None:
            return self._local_value()
        listener = self.config.store.result_listener
        future = listener.wait(self.jid)
        try:
            raw = future.result(timeout)
        except concurrent.futures.TimeoutError:
            listener.forget(self.jid, future)
            raise self._timeout(timeout) from None
        except BaseException:
            listener.forget(self.jid, future)
            raise
        return self._value(raw)

    async def aget(self, timeout: float | None = None) -> Any:
        """``get`` for async code: the event loop runs on while the job runs."""
        if _local is not None:
            return self._local_value()
        listener = self.config.store.result_listener
        future = listener.wait(self.jid)
        try:
            raw = await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except TimeoutError:
            raise self._timeout(timeout) from None
        finally:
            listener.forget(self.jid, future)
        return self._value(raw)

    def __await__(self) -> Generator[Any, None, Any]:
        return self.aget().__await__()

    def _timeout(self, timeout: float | None) -> ResultTimeout:
        return ResultTimeout(
            f"no result for jid={self.jid} within {timeout}s (status {self.status}): is a "
            f"worker running its queue, and was it pushed with result_ttl?"
        )

    def _value(self, raw: bytes) -> Any:
        record = decode_record(raw) or {}
        status = str(record.get("status", FAILED))
        if status == SUCCEEDED:
            return record.get("value")
        raise JobFailed(self.jid, status, record)

    def _local_value(self) -> Any:
        assert _local is not None
        raw = _local.get(self.jid)
        if raw is None:
            raise ResultTimeout(
                f"jid={self.jid} has not run: in kiq.testing's fake mode a job runs when "
                f"drained; call MyJob.drain() or kiq.testing.drain_all() before get()"
            )
        return self._value(raw)
