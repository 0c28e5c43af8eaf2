"""Batches: a group of jobs tracked as one, with callbacks (Sidekiq Pro's API and keys).

Example::

    batch = kiq.Batch(description="Import 2026-12",
                      on_success=(NotifyImportDone, {"import_id": 7}))
    with batch.jobs():                       # every push inside joins (payload "bid")
        for row_id in ids:
            ProcessRowJob.perform_async(row_id)
    kiq.BatchStatus(batch.bid).pending      # kiq.batch_status: a snapshot

Events, as Sidekiq Pro's: ``complete`` when every job ran once (failures included),
``success`` when every job succeeded (retries included), ``death`` when a job died.
A callback is a job pushed once per event with the arguments ``[bid, options]``.
Child batches opened inside a ``jobs()`` block (or inside a running batch job's
``self.batch.jobs()``) are waited for by their parent.

The state lives in Redis (kiq.store.batches: Lua for every write that must not be
split); in kiq.testing's fake and inline modes it lives in memory instead (the
``Backend`` below, which the testing module replaces), so callbacks run in ``drain``.
"""

from __future__ import annotations

import base64
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from kiq import batch_context
from kiq import payload as wire
from kiq.client import Client
from kiq.config import Config, get_default
from kiq.errors import BatchError, JobArgumentError

if TYPE_CHECKING:
    from kiq.payload import Payload

log = logging.getLogger(__name__)

EVENTS: Final = ("complete", "success", "death")
MAX_RESULT: Final = 512 * 1024  # bytes of a step's JSON result kept for the next step


def new_bid() -> str:
    """14 URL-safe Base64 characters, as Sidekiq Pro 2+'s bids (SecureRandom 10 bytes)."""
    return base64.urlsafe_b64encode(os.urandom(10)).decode().rstrip("=")


class Backend(Protocol):
    """Where batch state lives: Redis (``RedisBackend``) or memory (kiq.testing)."""

    def open(
        self, config: Config, bid: str, token: str, parent: str, fields: Mapping[str, str]
    ) -> bool: ...
    def update(self, config: Config, bid: str, op: str, member: str, info: str) -> list[str]: ...
    def read(self, config: Config, bid: str) -> tuple[dict[str, str], dict[str, int]] | None: ...
    def members(self, config: Config, bid: str, part: str) -> list[str]: ...
    def hash(self, config: Config, bid: str, part: str) -> dict[str, str]: ...
    def invalidate(self, config: Config, bid: str) -> bool: ...
    def gate(self, config: Config, bid: str, jid: str) -> tuple[bool, bool, bool]: ...
    def launch(
        self, config: Config, bid: str, fields: Mapping[str, str], jobs: list[Payload]
    ) -> bool: ...
    def save_workflow(self, config: Config, wid: str, fields: Mapping[str, str]) -> None: ...
    def load_workflow(self, config: Config, wid: str) -> dict[str, str] | None: ...


class RedisBackend:
    """The real one: every call is one ``Store`` method (kiq.store.batches)."""

    def open(
        self, config: Config, bid: str, token: str, parent: str, fields: Mapping[str, str]
    ) -> bool:
        ttl = int(config.batch_ttl)
        return config.store.batch_open(bid, token, ttl, wire.now(), parent, fields)

    def update(self, config: Config, bid: str, op: str, member: str, info: str) -> list[str]:
        return config.store.batch_update(bid, op, member, info)

    def read(self, config: Config, bid: str) -> tuple[dict[str, str], dict[str, int]] | None:
        return config.store.batch_read(bid)

    def members(self, config: Config, bid: str, part: str) -> list[str]:
        return config.store.batch_members(bid, part)

    def hash(self, config: Config, bid: str, part: str) -> dict[str, str]:
        return config.store.batch_hash(bid, part)

    def invalidate(self, config: Config, bid: str) -> bool:
        return config.store.batch_invalidate(bid)

    def gate(self, config: Config, bid: str, jid: str) -> tuple[bool, bool, bool]:
        return config.store.batch_gate(bid, jid)

    def launch(
        self, config: Config, bid: str, fields: Mapping[str, str], jobs: list[Payload]
    ) -> bool:
        members = Client(config).encode_members(jobs)
        return config.store.batch_launch(bid, int(config.batch_ttl), wire.now(), fields, members)

    def save_workflow(self, config: Config, wid: str, fields: Mapping[str, str]) -> None:
        config.store.workflow_save(wid, fields, int(config.batch_ttl), wire.now())

    def load_workflow(self, config: Config, wid: str) -> dict[str, str] | None:
        return config.store.workflow_load(wid)


_redis: Final = RedisBackend()
_backend: Backend = _redis


def set_backend(backend: Backend | None) -> None:
    """kiq.testing puts its memory backend here in fake/inline mode (None: Redis)."""
    global _backend
    _backend = _redis if backend is None else backend


def backend() -> Backend:
    return _backend


@dataclass(frozen=True)
class Signature:
    """A job and its arguments as data (``MyJob.s(1, 2)``): a step of a workflow."""

    job: str  # the wire name
    args: tuple[Any, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)

    def item(self, extra_args: Sequence[Any] = ()) -> dict[str, Any]:
        """The push item (``Client.push``) for this step."""
        return {**self.options, "class": self.job, "args": [*self.args, *extra_args]}

    def to_json(self) -> dict[str, Any]:
        return {"class": self.job, "args": list(self.args), "options": dict(self.options)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Signature:
        return cls(
            str(data["class"]), tuple(data.get("args") or ()), dict(data.get("options") or {})
        )


class Batch:
    """A batch of jobs; ``Batch()`` is new, ``Batch(bid)`` re-opens an existing one.

    ``Batch(bid, create=True, token=...)`` (kiq's own) creates the batch under a bid of
    the caller's choosing, or re-opens it if it exists: a job that builds a batch and
    may be re-run after a crash (``ProcessImportJob``) names it after its own work and
    uses a fixed token, so the re-run finishes the same batch instead of a second one.
    """

    def __init__(
        self,
        bid: str | None = None,
        *,
        description: str = "",
        on_success: Any = None,
        on_complete: Any = None,
        on_death: Any = None,
        callback_queue: str | None = None,
        config: Config | None = None,
        token: str | None = None,
        create: bool = False,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config or get_default()
        self._bid = bid
        self._parent = ""
        self._token = token
        self._created = bid is not None and not create  # Batch(bid): it must exist
        self.description = description
        self.callback_queue = callback_queue
        self.callbacks = {"success": on_success, "complete": on_complete, "death": on_death}
        self.extra = dict(extra or {})  # workflow steps: keep_results, wf, step

    @property
    def bid(self) -> str:
        """The batch id; a new batch made inside an open ``jobs()`` block is its child."""
        if self._bid is None:
            outer = batch_context.current()
            if outer is not None:
                self._bid, self._token = outer.child_ids()
                self._parent = outer.bid
            else:
                self._bid = new_bid()
        return self._bid

    @property
    def parent_bid(self) -> str | None:
        return self._parent or None

    def on(self, event: str, callback: Any, options: Mapping[str, Any] | None = None) -> None:
        """Sidekiq Pro's ``batch.on(:success, Klass, opts)``, before the first ``jobs()``."""
        if event not in EVENTS:
            raise BatchError(f"unknown batch event {event!r}; use one of {', '.join(EVENTS)}")
        self.callbacks[event] = (callback, dict(options or {}))

    @contextmanager
    def jobs(self) -> Iterator[Batch]:
        """Every push inside joins this batch; no callback fires before the block ends.

        A block that raises leaves the batch open, so a half-built batch never fires its
        callbacks (it expires with its TTL); a job re-run after a crash re-opens its
        block with the same token (its jid) and closes it this time.
        """
        bid = self.bid
        token = self._token or os.urandom(12).hex()
        fields = {} if self._created else self._fields(bid)
        _backend.open(self.config, bid, token, self._parent if fields else "", fields)
        self._created = True
        entered = batch_context.enter(batch_context.OpenBlock(bid, token))
        try:
            yield self
        except BaseException:
            batch_context.leave(entered)
            raise
        batch_context.leave(entered)
        _backend.update(self.config, bid, "close", token, "")

    def invalidate_all(self) -> bool:
        """Invalidate the batch: its jobs not yet run are skipped, no callback fires."""
        return _backend.invalidate(self.config, self.bid)

    def _fields(self, bid: str) -> dict[str, str]:
        return batch_fields(
            self.config, bid, self.description, self.callbacks, self.callback_queue, self.extra
        )


def batch_fields(
    config: Config,
    bid: str,
    description: str,
    callbacks: Mapping[str, Any],
    queue: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """A new batch's hash fields: its description and each callback's payload (stored
    whole, pushed by batch_update.lua when its event fires)."""
    fields = {"description": description, "cbfmt": "float"}
    client = Client(config)
    for event, spec in callbacks.items():
        if spec is None:
            continue
        payload = _callback_payload(client, spec, bid, queue)
        if type(payload.get("created_at")) is int:
            fields["cbfmt"] = "ms"
        fields[f"cb_{event}"] = wire.dumps(payload).decode()
        fields[f"cbq_{event}"] = payload["queue"]
    fields.update(extra or {})
    return fields


def _callback_payload(client: Client, spec: Any, bid: str, queue: str | None) -> Payload:
    """The callback job's payload, without ``enqueued_at`` (the Lua adds it when fired)."""
    if isinstance(spec, tuple):
        if len(spec) != 2 or not isinstance(spec[1], Mapping):
            raise JobArgumentError(
                f"a batch callback is a Job class or (JobClass, {{options}}), got {spec!r}"
            )
        target, options = spec[0], dict(spec[1])
    else:
        target, options = spec, {}
    item: dict[str, Any] = {"class": target, "args": [bid, options]}
    if queue:
        item["queue"] = queue
    payload = client.normalize(item)
    payload.pop("enqueued_at", None)
    payload.pop("bid", None)  # a callback is not a member of any batch
    return payload


# -- the worker's side: called by kiq.processor's Executor around a batch job ----------


STATE_CACHE_SECONDS: Final = 1.0  # how long a worker trusts a batch's "invalidated" flag
_states: dict[tuple[int, str], tuple[float, bool, bool]] = {}  # (config, bid) -> state


def admit(config: Config, payload: Payload) -> bool:
    """Run this batch job? False for an invalidated batch's job, and for one whose
    success is already recorded. A job whose batch expired runs as a plain job.

    Only a job recovered from a dead process (``kiq_recoveries``) can have its success
    recorded already (its process died between the outcome and the ack): it costs one
    round trip (is its jid still pending?). Any other job reads only whether its batch
    exists and is invalidated, cached per batch for ``STATE_CACHE_SECONDS``: in Redis
    mode a batch job costs the worker one round trip (the outcome) instead of two, and
    a job may still start up to that long after its batch was invalidated.
    """
    bid, jid = str(payload["bid"]), str(payload.get("jid", ""))
    if payload.get("kiq_recoveries") or _backend is not _redis:
        exists, invalidated, pending = _backend.gate(config, bid, jid)
    else:
        exists, invalidated = _state(config, bid)
        pending = True
    if not exists:
        return True
    if invalidated:
        log.info("skipped: batch %s was invalidated", bid)
        return False
    if not pending:
        log.info("skipped: its success in batch %s is already recorded", bid)
        return False
    return True


def _state(config: Config, bid: str) -> tuple[bool, bool]:
    """(exists, invalidated) of ``bid``, read at most once a STATE_CACHE_SECONDS."""
    key = (id(config), bid)
    now = time.monotonic()
    cached = _states.get(key)
    if cached is not None and now - cached[0] < STATE_CACHE_SECONDS:
        return cached[1], cached[2]
    exists, invalidated, _ = _backend.gate(config, bid, "")
    if len(_states) > 10_000:  # many batches at once: start over rather than grow
        _states.clear()
    _states[key] = (now, exists, invalidated)
    return exists, invalidated


def result_json(value: Any) -> str:
    """A step's result as JSON for ``pass_result``; "" for None (nothing kept: the next
    step reads null either way), and for a value that is not JSON or over MAX_RESULT."""
    if value is None:
        return ""
    try:
        raw = wire.dumps(value)
    except (TypeError, ValueError):
        log.warning("the job's result is not JSON; the next workflow step gets null")
        return ""
    if len(raw) > MAX_RESULT:
        log.warning("the job's result is over %d bytes; the next step gets null", MAX_RESULT)
        return ""
    return raw.decode()


def error_json(exc: BaseException) -> str:
    """The failure info kept per failing jid (Sidekiq Pro's failure_info)."""
    message = str(exc)[:1000]
    return wire.dumps({"error_class": type(exc).__qualname__, "error_message": message}).decode()


def record(config: Config, payload: Payload, op: str, info: str) -> list[str]:
    """Record one outcome (success, failure, death) of a batch job; the events fired."""
    fired = _backend.update(config, str(payload["bid"]), op, str(payload.get("jid", "")), info)
    for event in fired:
        log.info("batch %s fired", event)
    return fired
