"""Client: push jobs into Redis exactly as Sidekiq's client does.

Tasks:
  1. normalize: merge the job's options under the caller's item, fill ``jid`` and
     ``created_at``, check the arguments are native JSON (shared/sidekiq-wire.md §3).
  2. run the client middleware chain, which may change or stop each push.
  3. write: ``SADD queues`` + ``LPUSH queue:<q>`` (one pipeline), or ``ZADD schedule``
     when the item has a future ``at``; a bulk push is one pipeline per 1,000 jobs.
     A job with ``unique_for`` instead takes its lock in the same Lua step as its push
     and is refused (``None`` instead of its jid) while the lock is held (kiq.unique).

Example::

    client = kiq.Client()
    jid = client.push({"class": "Billing::ChargeJob", "queue": "ruby", "args": [7]})
    jids = client.push_bulk({"class": HardJob, "args": [[1], [2], [3]]})

Test modes (``kiq.testing``) replace step 3 through ``set_test_hook`` so that this
module never imports the testing code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from kiq import batch_context, peers, unique
from kiq import payload as wire
from kiq.config import Config, get_default
from kiq.errors import JobArgumentError
from kiq.payload import Payload

if TYPE_CHECKING:
    from kiq.job import Job
    from kiq.store.batches import BatchJob
    from kiq.store.queues import UniquePush

BULK_BATCH: Final = 1000  # jobs per pipeline in push_bulk (Sidekiq 7: batch_size)
_ABSOLUTE: Final = 1_000_000_000  # perform_in/at: numbers below are relative seconds

# Set by kiq.testing while a fake/inline mode is on: receives the payloads that would
# be written and returns True if it handled them.
TestHook = Callable[[list[Payload], Config], bool]
_test_hook: TestHook | None = None


def set_test_hook(hook: TestHook | None) -> None:
    global _test_hook
    _test_hook = hook


def in_test_mode() -> bool:
    """Whether a kiq.testing mode (fake, inline) replaces the push: no Redis is used."""
    return _test_hook is not None


def timestamp(config: Config, now: float | None = None) -> float | int:
    """A payload timestamp: float seconds (Sidekiq 6.4-7.x) or int ms (Sidekiq 8 mode).

    Which one: ``config.timestamp_format``, and for ``auto`` (the default) the cached
    choice of ``kiq.peers`` from the live processes' versions (no round trip but the
    first push's). Seconds are always a float, so a whole-second ``now`` is still
    written as ``1700000000.0``: Sidekiq 8 reads a JSON integer as milliseconds.
    """
    value = wire.now() if now is None else now
    mode = config.timestamp_format
    if mode == "float":
        return float(value)
    if _test_hook is not None:  # the test mode (kiq.testing) never reads Redis
        return int(value * 1000) if mode == "ms" else float(value)
    # An explicit ms reads the processes too: a live one that cannot read ms is warned of.
    return int(value * 1000) if peers.formats(config).ms else float(value)


def _as_created(enqueued_at: float | int, payload: Payload, now: float) -> float | int:
    """``enqueued_at`` in the format of the payload's ``created_at``: kiq.peers may change
    its choice (a background refresh) between the two stamps, and one payload must not
    mix milliseconds and seconds."""
    created = type(payload.get("created_at"))
    if created is int and type(enqueued_at) is not int:
        return int(now * 1000)
    if created is float and type(enqueued_at) is not float:
        return float(now)
    return enqueued_at


def _take_at(payload: Payload, enqueued_at: float | int, now: float) -> float | None:
    """Take ``at`` out of the payload: None (and ``enqueued_at`` stamped) for a job to
    run now, else the epoch s it is scheduled for (and no ``enqueued_at``: Sidekiq
    7.1.2+ leaves it out of schedule members). Every push path encodes this way."""
    at = payload.pop("at", None)
    if at is None:
        payload["enqueued_at"] = _as_created(enqueued_at, payload, now)
        return None
    payload.pop("enqueued_at", None)
    return float(at)


def resolve_at(value: float, now: float) -> float | None:
    """Sidekiq's perform_in/perform_at rule: < 1e9 is relative; a time not after now runs now."""
    at = now + value if value < _ABSOLUTE else value
    return at if at > now else None


class Client:
    """Push jobs with a Config's Redis and client middleware (the default Config if none)."""

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or get_default()

    def push(self, item: Mapping[str, Any]) -> str | None:
        """Push one job; return its jid, or None if a client middleware stopped it."""
        return self._push_normalized(self.normalize(item))

    def push_job(self, job: type[Job], args: tuple[Any, ...]) -> str | None:
        """``Job.perform_async(*args)``: ``push`` of the class and its arguments.

        One path with ``push`` (issue 13): ``normalize`` skips what the class already
        checked when it was defined (its options), so only the arguments are checked.
        """
        return self._push_normalized(self.normalize({"class": job, "args": list(args)}))

    def _push_normalized(self, payload: Payload) -> str | None:
        final = self._through_middleware(payload)
        if final is None:
            return None
        if self._write([final]):
            return None  # its unique lock is held
        jid: str = final["jid"]
        return jid

    def prepare(self, item: Mapping[str, Any]) -> tuple[str, bytes] | None:
        """Normalize, run client middleware and encode one job for its queue, unwritten.

        Returns (queue, raw), or None if a middleware stopped it. The poller uses it to
        write the push in the same step that removes the job from ``schedule``/``retry``.
        """
        final = self._through_middleware(self.normalize(item))
        if final is None:
            return None
        final.pop("at", None)
        (job,), _ = self._encode([final])
        return job

    def push_bulk(self, item: Mapping[str, Any]) -> list[str | None]:
        """Push ``item["args"]`` (a list of argument lists) as one job each.

        Returns jids aligned with the input, ``None`` where middleware stopped a job
        (Sidekiq 7.1+). ``at`` may be one time or a list with one time per job.
        """
        jids, payloads = self._prepare_bulk(item)
        refused: set[str] = set()
        for start in range(0, len(payloads), BULK_BATCH):
            refused |= self._write(payloads[start : start + BULK_BATCH])
        return _without(jids, refused)

    def _prepare_bulk(self, item: Mapping[str, Any]) -> tuple[list[str | None], list[Payload]]:
        # Every job is checked before any is written: a bad argument list in the middle
        # of a bulk push must not leave half of it enqueued. The options are normalized
        # once, as Sidekiq's push_bulk does (one normalize_item, then per job a copy with
        # its own args and jid, sharing created_at); per job only its arguments and
        # ``at`` are checked (issue 5: perform_bulk >= 100,000 jobs/s).
        args_list, at = _bulk_parts(item)
        base = {k: v for k, v in item.items() if k not in ("args", "at")}
        template = self.normalize(dict(base, args=[]))
        name = template["class"]
        fresh_jids = "jid" not in item  # an explicit jid: one job only (_bulk_parts)
        jids: list[str | None] = []
        payloads: list[Payload] = []
        new_jids = wire.new_jids(len(args_list)) if fresh_jids else []
        for index, args in enumerate(args_list):
            wire.check_args(name, args)
            payload = dict(template)
            payload["args"] = args
            if fresh_jids:
                payload["jid"] = new_jids[index]
            when = at[index] if isinstance(at, list) else at
            if when is not None:
                _check_at(name, when)
                payload["at"] = when
            final = self._through_middleware(payload)
            jids.append(None if final is None else final["jid"])
            if final is not None:
                payloads.append(final)
        return jids, payloads

    def normalize(self, item: Mapping[str, Any]) -> Payload:
        """Options under item, then jid and created_at, in Sidekiq's key order.

        Every field is held to the rules the worker applies when it reads the job
        (``payload.field_problem``), so what kiq writes is never refused at the door: a
        Job class's options when the class is defined, the item's keys here. A class
        and its arguments alone (``perform_async``) cost only the arguments' check.
        """
        if type(item) is not dict and not isinstance(item, Mapping):
            raise JobArgumentError(f"a job must be a dict with 'class' and 'args', got {item!r}")
        klass = item.get("class")
        options: Mapping[str, Any]
        if type(klass) is str and klass:
            name, options = klass, _DEFAULT_OPTIONS
        elif isinstance(klass, type) and hasattr(klass, "wire_name"):
            job: type[Job] = klass
            name, options = job.wire_name, job.payload_options()
        else:
            raise JobArgumentError(
                f"a job needs 'class': a kiq Job subclass or a class name string, got {klass!r}"
            )
        payload: Payload = dict(options)
        payload.update(item)
        payload["class"] = name
        wire.check_args(name, payload.get("args"))
        queue = payload.get("queue")
        if type(queue) is not str or not queue:
            raise JobArgumentError(f"job {name}: 'queue' must be a non-empty string, got {queue!r}")
        if len(item) > 2:  # more than class and args: fields the caller set
            _check_fields(name, item)
        if "jid" not in payload:
            payload["jid"] = wire.new_jid()
        if "created_at" not in payload:
            payload["created_at"] = timestamp(self.config)
        if "expires_in" in payload and "expires_at" not in payload:
            # Sidekiq Pro's rule: the expiry counts from when the job is due (its ``at``)
            _stamp_expiry(payload)
        if "bid" not in payload and (bid := batch_context.current_bid()) is not None:
            payload["bid"] = bid  # pushed inside a Batch.jobs() block: joins it (kiq.batch)
        return payload

    def _through_middleware(self, payload: Payload) -> Payload | None:
        chain = self.config.client_middleware
        if not len(chain):
            return payload
        result: Payload | None = chain.invoke(
            payload["class"], payload, payload["queue"], lambda: payload
        )
        if result:
            # Sidekiq 6.4.2+ checks arguments after the client middleware: one may have
            # added a value (a datetime...) that orjson would silently turn into a string.
            wire.check_args(result["class"], result.get("args"))
        return result or None

    def _write(self, payloads: Sequence[Payload]) -> set[str]:
        """Write these jobs; return the jids refused because their unique lock is held."""
        if not payloads:
            return _NONE_REFUSED
        if _test_hook is not None and _test_hook(list(payloads), self.config):
            return _NONE_REFUSED
        payloads = self._write_batched(payloads)
        plain, locked = _split_unique(payloads)
        refused = _NONE_REFUSED
        if locked:
            refused = _refused(locked, self.config.store.push_unique(self._encode_unique(locked)))
        if plain:
            immediate, scheduled = self._encode(plain)
            store = self.config.store
            if immediate:
                store.push(immediate)
            if scheduled:
                store.schedule(scheduled)
        return refused

    def _write_batched(self, payloads: Sequence[Payload]) -> Sequence[Payload]:
        """Write the jobs that belong to a batch (field ``bid``); return the others.

        Each batch's jobs go in one script that pushes them and counts them as members
        (``Store.batch_push``): a job is never counted without being pushed, nor pushed
        without being counted. The common case (no bid) costs one pass of dict lookups.
        """
        for payload in payloads:
            if "bid" in payload:
                break
        else:
            return payloads
        grouped: dict[str, list[Payload]] = {}
        rest: list[Payload] = []
        for payload in payloads:
            bid = payload.get("bid")
            if bid is None:
                rest.append(payload)
                continue
            if unique.is_unique(payload):
                raise JobArgumentError(
                    f"job {payload['class']}: unique_for is not supported inside a batch; "
                    f"push it outside the batch's jobs() block"
                )
            grouped.setdefault(str(bid), []).append(payload)
        ttl = int(self.config.batch_ttl)
        for bid, members in grouped.items():
            self.config.store.batch_push(bid, ttl, self.encode_members(members))
        return rest

    def encode_members(self, payloads: Sequence[Payload]) -> list[BatchJob]:
        """(jid, queue, at, raw) per job, for ``Store.batch_push``; encoded as ``_encode``."""
        jobs: list[BatchJob] = []
        now = wire.now()
        enqueued_at = timestamp(self.config, now)
        for payload in payloads:
            at = _take_at(payload, enqueued_at, now)
            jobs.append((payload["jid"], payload["queue"], at, wire.dumps(payload)))
        return jobs

    def _encode_unique(self, payloads: Sequence[Payload]) -> list[UniquePush]:
        """(lock, jid, TTL ms, queue, at, raw) per job, for ``Store.push_unique``; the
        payloads are encoded as ``_encode`` does (``at`` out, ``enqueued_at`` if now)."""
        jobs: list[UniquePush] = []
        now = wire.now()
        enqueued_at = timestamp(self.config, now)
        keys = self.config.store.keys
        for payload in payloads:
            lock = keys.unique(unique.digest(payload))
            ttl = unique.ttl_ms(payload, now)  # before "at" leaves the payload
            at = _take_at(payload, enqueued_at, now)
            jobs.append((lock, payload["jid"], ttl, payload["queue"], at, wire.dumps(payload)))
        return jobs

    def _encode(
        self, payloads: Sequence[Payload]
    ) -> tuple[list[tuple[str, bytes]], list[tuple[float, bytes]]]:
        immediate: list[tuple[str, bytes]] = []
        scheduled: list[tuple[float, bytes]] = []
        now = wire.now()
        enqueued_at = timestamp(self.config, now)
        for payload in payloads:
            at = _take_at(payload, enqueued_at, now)
            if at is None:
                immediate.append((payload["queue"], wire.dumps(payload)))
            else:
                scheduled.append((at, wire.dumps(payload)))
        return immediate, scheduled


class AsyncClient(Client):
    """The same pushes for async web apps: ``await AsyncClient().push({...})``.

    Normalizing and client middleware are the sync ones (they do no I/O); only the
    Redis write awaits, on a redis.asyncio connection bound to the running loop.

    Example::

        @app.post("/signup")
        async def signup(...):
            await kiq.AsyncClient().push({"class": WelcomeEmail, "args": [user.id]})
            await WelcomeEmail.aperform_async(user.id)   # the same, from the Job
    """

    async def push(self, item: Mapping[str, Any]) -> str | None:  # type: ignore[override]
        payload = self.normalize(item)
        final = self._through_middleware(payload)
        if final is None:
            return None
        if await self._awrite([final]):
            return None  # its unique lock is held
        jid: str = final["jid"]
        return jid

    async def push_bulk(self, item: Mapping[str, Any]) -> list[str | None]:  # type: ignore[override]
        jids, payloads = self._prepare_bulk(item)
        refused: set[str] = set()
        for start in range(0, len(payloads), BULK_BATCH):
            refused |= await self._awrite(payloads[start : start + BULK_BATCH])
        return _without(jids, refused)

    async def _awrite(self, payloads: Sequence[Payload]) -> set[str]:
        if not payloads:
            return _NONE_REFUSED
        if _test_hook is not None and _test_hook(list(payloads), self.config):
            return _NONE_REFUSED
        # Batch members: the sync script (a short blocking call; a jobs() block is sync)
        payloads = self._write_batched(payloads)
        plain, locked = _split_unique(payloads)
        refused = _NONE_REFUSED
        if locked:
            pushed = await self.config.store.apush_unique(self._encode_unique(locked))
            refused = _refused(locked, pushed)
        if plain:
            immediate, scheduled = self._encode(plain)
            await self.config.store.apush(immediate, scheduled)
        return refused


_NONE_REFUSED: Final[set[str]] = set()  # never mutated: callers only read it or |= into theirs


def _split_unique(payloads: Sequence[Payload]) -> tuple[Sequence[Payload], list[Payload]]:
    """(plain jobs, jobs that take a unique lock); the common case costs one pass of
    dict lookups and hands the input back as it was."""
    for payload in payloads:
        if payload.get("unique_for"):
            break
    else:
        return payloads, []
    plain = [p for p in payloads if not unique.is_unique(p)]
    return plain, [p for p in payloads if unique.is_unique(p)]


def _refused(locked: Sequence[Payload], pushed: Sequence[bool]) -> set[str]:
    return {payload["jid"] for payload, ok in zip(locked, pushed, strict=True) if not ok}


def _without(jids: list[str | None], refused: set[str]) -> list[str | None]:
    """``jids`` with None in place of every refused one (a bulk push's return value)."""
    if not refused:
        return jids
    return [None if jid in refused else jid for jid in jids]


def _bulk_parts(item: Mapping[str, Any]) -> tuple[list[list[Any]], Any]:
    """A bulk push's argument lists and its ``at`` (one time, or a list of one per job)."""
    args_list = item.get("args")
    if not isinstance(args_list, list) or not all(isinstance(a, list) for a in args_list):
        raise JobArgumentError(
            f"push_bulk needs 'args' as a list of argument lists, e.g. [[1], [2]]; "
            f"got {args_list!r}"
        )
    at = item.get("at")
    if isinstance(at, list) and len(at) != len(args_list):
        raise JobArgumentError(
            f"push_bulk: 'at' has {len(at)} times for {len(args_list)} jobs; give one "
            f"time or one per job"
        )
    if "jid" in item and len(args_list) > 1:
        raise JobArgumentError("push_bulk: an explicit 'jid' cannot be shared by many jobs")
    return args_list, at


def _check_fields(name: str, item: Mapping[str, Any]) -> None:
    for key, value in item.items():
        if key == "at":
            if value is not None:
                _check_at(name, value)
        elif (problem := wire.field_problem(key, value)) is not None:
            raise JobArgumentError(
                f"job {name}: {problem}; the worker would refuse this job, so it was not pushed"
            )


def _check_at(name: str, at: object) -> None:
    if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
        # NaN made Redis refuse the ZADD; inf scheduled a job that never runs
        raise JobArgumentError(f"job {name}: 'at' must be epoch seconds, got {at!r}")


_DEFAULT_OPTIONS: Final[Mapping[str, Any]] = {"retry": True, "queue": "default"}


def _stamp_expiry(payload: Payload) -> None:
    """Turn ``expires_in`` (relative seconds) into ``expires_at`` (float epoch seconds),
    counted from the job's ``at`` or now: a retry or a late move never extends it."""
    seconds = payload.get("expires_in")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return  # _check_fields refuses it with the rule
    at = payload.get("at")
    start = float(at) if isinstance(at, int | float) and not isinstance(at, bool) else wire.now()
    payload["expires_at"] = start + float(seconds)
