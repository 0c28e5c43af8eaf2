"""ActiveJob on the wire: run Rails' ActiveJob jobs in kiq, and enqueue jobs for Rails.

Most Rails apps enqueue through ActiveJob, not ``Sidekiq::Job``. Through Sidekiq's
adapter such a job is a Sidekiq job of a *wrapper* class whose single argument is
ActiveJob's serialised hash (its "envelope")::

    {"class": "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper",   # Rails <= 7.1
     "wrapped": "ImportJob", "queue": "default",                         # (Sidekiq 7.3+ with
     "args": [{"job_class": "ImportJob", "job_id": "...",                # Rails 7.2+ writes
               "arguments": [7, {"mode": "full", "_aj_symbol_keys": []}], # Sidekiq::ActiveJob
               "executions": 0, "exception_executions": {}, ...}], ...}  # ::Wrapper)

Rails -> Python: a kiq Job claims an ActiveJob class with ``activejob=``::

    class ImportJob(kiq.Job, activejob="ImportJob", queue="default"):
        def perform(self, account_id: int, options: dict[str, Any], *, mode: str = "") -> None:
            self.activejob.executions   # 1 on the first run, as in Rails
            ...

Both wrapper names dispatch on the envelope's ``job_class``; the arguments arrive
deserialised as ActiveJob does it (see ``deserialize``), keyword arguments (a hash
flagged ``_aj_ruby2_keywords``) as Python keyword arguments. The envelope is never
rewritten: on a retry it travels unchanged, so ``executions`` and
``exception_executions`` stay what Rails wrote, exactly as under Sidekiq's own retry
(Rails' ``perform_now`` counts ``executions`` up in memory, from the stored value).
An ActiveJob class that no kiq Job claims fails with ``UnknownJobError`` naming that
class, and is retried like any unknown class (a Rails worker may take it next time),
unless a kiq Job is registered under the wrapper's own name: that one then gets every
unclaimed ActiveJob job, with the raw envelope as its argument (kiq's behaviour before
this module).

Python -> Rails: ``enqueue("ImportJob", 7, {"mode": "full"}, queue="default", wait=300)``
writes the payload Rails' adapter writes, arguments serialised as
``ActiveJob::Arguments.serialize`` does (see ``serialize``), so a Rails worker runs it as
if ``perform_later`` had been called there.

Config: ``activejob_wrapper`` ("legacy": the Rails <= 7.1 name every version reads;
"sidekiq": ``Sidekiq::ActiveJob::Wrapper``, Sidekiq 7.3+ only), ``activejob_rails``
(the oldest Rails version that reads what kiq enqueues: "6.1" writes no Range or
BigDecimal serializer, which 6.1 does not know; "7.1" does), ``globalid_locator``
(``gid -> object``, for ``{"_aj_globalid": "gid://app/User/42"}``; without one the job
gets a ``GlobalID``, the string).

Plain jobs pay nothing for this: the registry checks the two wrapper names with one
dict lookup (kiq.job.lookup).
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from kiq import payload as wire
from kiq.client import Client, resolve_at
from kiq.config import Config, get_default
from kiq.errors import ConfigError, Discard, JobArgumentError, UnknownJobError
from kiq.job import (
    Job,
    When,
    _run_to_completion,
    _seconds,
    lookup_activejob,
    lookup_registered,
    register_wrapper,
)

if TYPE_CHECKING:
    from kiq.payload import Payload

LEGACY_WRAPPER: Final = "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper"
SIDEKIQ_WRAPPER: Final = "Sidekiq::ActiveJob::Wrapper"
WRAPPERS: Final = {"legacy": LEGACY_WRAPPER, "sidekiq": SIDEKIQ_WRAPPER}

_SERIALIZER = "_aj_serialized"
_GLOBALID = "_aj_globalid"
_SYMBOL_KEYS = "_aj_symbol_keys"
_RUBY2_KEYWORDS = "_aj_ruby2_keywords"
_INDIFFERENT = "_aj_hash_with_indifferent_access"
RESERVED_KEYS: Final = frozenset(
    {_SERIALIZER, _GLOBALID, _SYMBOL_KEYS, _RUBY2_KEYWORDS, _INDIFFERENT}
)
_NS = "ActiveJob::Serializers::"


class DeserializationError(JobArgumentError):
    """An ActiveJob argument kiq cannot turn into a Python value (Rails: same name)."""


class Symbol(str):
    """A Ruby Symbol (``:sym``): a str that goes back to Ruby as a Symbol."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Symbol({str(self)!r})"


class RubyModule(str):
    """A Ruby class or module passed as an argument (``Integer``): its name."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"RubyModule({str(self)!r})"


class GlobalID(str):
    """A GlobalID URI (``gid://app/User/42``) when no ``globalid_locator`` is configured."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"GlobalID({str(self)!r})"


class IndifferentDict(dict[str, Any]):
    """A hash that was ``ActiveSupport::HashWithIndifferentAccess`` (and goes back as one)."""


@dataclass(frozen=True)
class RubyRange:
    """A Ruby Range that is not a plain Integer range (those arrive as Python ``range``)."""

    begin: Any
    end: Any
    exclude_end: bool = False


@dataclass
class ActiveJobData:
    """The envelope's bookkeeping, as an ActiveJob instance sees it (``job.activejob``)."""

    job_class: str
    job_id: str
    provider_job_id: str
    queue_name: str
    priority: int | None
    executions: int  # stored + 1: Rails' perform_now counts this run
    exception_executions: dict[str, int]
    locale: str | None
    timezone: str | None
    enqueued_at: str | None
    envelope: dict[str, Any] = field(repr=False)


# -- Ruby -> Python ---------------------------------------------------------------------

Locator = Callable[[str], Any]
Deserializer = Callable[[Mapping[str, Any], "Locator | None"], Any]


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)


# The envelope's ``timezone`` (the enqueuing app's Time.zone) while its arguments are read.
_zone: ContextVar[str | None] = ContextVar("kiq_activejob_zone", default=None)


def _time_with_zone(hash_: Mapping[str, Any], locator: Locator | None) -> datetime:
    moment = _time(hash_["value"])
    # Rails 7.1+ writes the zone's tzinfo name; before, Ruby's in_time_zone puts the
    # time in the app's Time.zone, which the envelope's timezone names. A Rails-only
    # name ("Eastern Time (US & Canada)") is no tz database key: the offset stays.
    name = hash_.get("time_zone") or _zone.get()
    if isinstance(name, str):
        try:
            return moment.astimezone(ZoneInfo(name))
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return moment


def _duration(hash_: Mapping[str, Any], locator: Locator | None) -> timedelta:
    return timedelta(seconds=hash_["value"])


def _big_decimal(hash_: Mapping[str, Any], locator: Locator | None) -> Decimal:
    try:
        return Decimal(hash_["value"])
    except InvalidOperation:
        raise DeserializationError(f"BigDecimal {hash_['value']!r} is not a number") from None


def _range(hash_: Mapping[str, Any], locator: Locator | None) -> range | RubyRange:
    begin, end, exclude = (_deserialize(hash_[k], locator) for k in ("begin", "end", "exclude_end"))
    if type(begin) is int and type(end) is int:
        return range(begin, end if exclude else end + 1)
    return RubyRange(begin, end, bool(exclude))


# Rails' serializers by name (activejob/lib/active_job/serializers/*.rb, 6.1 to 8.x).
DESERIALIZERS: dict[str, Deserializer] = {
    f"{_NS}SymbolSerializer": lambda h, loc: Symbol(h["value"]),
    f"{_NS}TimeSerializer": lambda h, loc: _time(h["value"]),
    f"{_NS}TimeWithZoneSerializer": _time_with_zone,
    f"{_NS}DateTimeSerializer": lambda h, loc: _time(h["value"]),
    f"{_NS}DateSerializer": lambda h, loc: date.fromisoformat(h["value"]),
    f"{_NS}DurationSerializer": _duration,
    f"{_NS}BigDecimalSerializer": _big_decimal,  # Rails 7.1+ (6.1: a JSON string)
    f"{_NS}RangeSerializer": _range,  # Rails 7.1+
    f"{_NS}ModuleSerializer": lambda h, loc: RubyModule(h["value"]),
}


def register_deserializer(name: str, deserializer: Deserializer) -> None:
    """Read a custom ActiveJob serializer's hashes: ``register_deserializer("MoneySerializer",
    lambda h, locator: Money(h["cents"], h["currency"]))``."""
    DESERIALIZERS[name] = deserializer


def deserialize(
    arguments: Sequence[Any], locator: Locator | None = None, *, zone: str | None = None
) -> list[Any]:
    """``ActiveJob::Arguments.deserialize``: JSON-decoded arguments to Python values.

    ``locator`` turns a GlobalID into an object; ``zone`` (the envelope's ``timezone``)
    is the zone of TimeWithZone values that do not name their own.
    """
    token = _zone.set(zone)
    try:
        return [_deserialize(argument, locator) for argument in arguments]
    finally:
        _zone.reset(token)


def _deserialize(value: Any, locator: Locator | None) -> Any:
    if isinstance(value, list):
        return [_deserialize(v, locator) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1 and _GLOBALID in value:
        gid = value[_GLOBALID]
        return GlobalID(gid) if locator is None else locator(gid)
    if _SERIALIZER in value:
        name = value[_SERIALIZER]
        reader = DESERIALIZERS.get(name)
        if reader is None:
            raise DeserializationError(
                f"ActiveJob argument of serializer {name!r} has no Python reader; add one "
                f"with kiq.activejob.register_deserializer({name!r}, fn)"
            )
        try:
            return reader(value, locator)
        except (KeyError, TypeError, ValueError) as exc:
            raise DeserializationError(f"{name} argument {value!r}: {exc}") from exc
    result = {k: _deserialize(v, locator) for k, v in value.items() if k not in RESERVED_KEYS}
    if value.get(_INDIFFERENT):
        return IndifferentDict(result)
    symbols = value.get(_SYMBOL_KEYS, value.get(_RUBY2_KEYWORDS))
    if symbols:
        wanted = set(symbols)
        return {Symbol(k) if k in wanted else k: v for k, v in result.items()}
    return result


def split_arguments(
    arguments: Sequence[Any], locator: Locator | None = None, *, zone: str | None = None
) -> tuple[list[Any], dict[str, Any]]:
    """Positional arguments and keyword arguments, as Ruby's ``perform(*args)`` sees them.

    A last argument flagged ``_aj_ruby2_keywords`` was passed as keywords in Ruby.
    """
    args = list(arguments)
    if args and isinstance(args[-1], dict) and _RUBY2_KEYWORDS in args[-1]:
        *positional, last = deserialize(args, locator, zone=zone)
        return positional, {str(k): v for k, v in last.items()}
    return deserialize(args, locator, zone=zone), {}


# -- Python -> Ruby ---------------------------------------------------------------------


def _version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        raise ConfigError(
            f"activejob_rails: {text!r} is not a version; use the oldest Rails version "
            f'that reads these jobs, e.g. "6.1" or "7.1"'
        ) from None


def _iso(moment: datetime) -> str:
    """Ruby's ``Time#iso8601(9)``: nanosecond digits, ``Z`` for UTC."""
    offset = moment.utcoffset()
    stamp = f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond:06d}000"
    if not offset:
        return stamp + "Z"
    zone = moment.strftime("%z")
    return f"{stamp}{zone[:3]}:{zone[3:5]}"


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


class Serializer:
    """``ActiveJob::Arguments.serialize`` for one Rails version (``rails``, e.g. (6, 1))."""

    def __init__(self, rails: tuple[int, ...]) -> None:
        self.modern = rails >= (7, 1)  # Range and BigDecimal serializers, TimeWithZone zone

    def arguments(self, args: Sequence[Any], kwargs: Mapping[str, Any] | None = None) -> list[Any]:
        out = [self.value(a) for a in args]
        if kwargs:
            hash_ = self._hash(kwargs)
            hash_[_RUBY2_KEYWORDS] = [str(k) for k in kwargs]
            out.append(hash_)
        return out

    def value(self, value: Any) -> Any:  # noqa: C901 - one case per type
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str):
            if isinstance(value, Symbol):
                return self._object("SymbolSerializer", value=str(value))
            if isinstance(value, RubyModule):
                return self._object("ModuleSerializer", value=str(value))
            if isinstance(value, GlobalID):
                return {_GLOBALID: str(value)}
            return value
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        if isinstance(value, IndifferentDict):
            hash_ = self._hash(value)
            hash_[_INDIFFERENT] = True
            return hash_
        if isinstance(value, dict):
            hash_ = self._hash(value)
            hash_[_SYMBOL_KEYS] = [str(k) for k in value if isinstance(k, Symbol)]
            return hash_
        if isinstance(value, datetime):
            return self._time(value)
        if isinstance(value, date):
            return self._object("DateSerializer", value=value.isoformat())
        if isinstance(value, timedelta):
            seconds = _number(value.total_seconds())
            parts = [[self._object("SymbolSerializer", value="seconds"), seconds]]
            return self._object("DurationSerializer", value=seconds, parts=parts)
        if isinstance(value, Decimal):
            if not value.is_finite():
                raise JobArgumentError(f"ActiveJob cannot carry the Decimal {value}")
            if self.modern:
                return self._object("BigDecimalSerializer", value=str(value))
            return str(value)  # what Rails 6.1 writes for a BigDecimal (a JSON string)
        if isinstance(value, range | RubyRange):
            return self._range(value)
        gid = getattr(value, "to_global_id", None)
        if callable(gid):
            return {_GLOBALID: str(gid())}
        raise JobArgumentError(
            f"ActiveJob cannot carry a {type(value).__name__} ({value!r}): pass str, int, "
            f"float, bool, None, list, dict, datetime, date, timedelta, Decimal, range, "
            f"kiq.activejob.Symbol/GlobalID/RubyModule, or an object with to_global_id()"
        )

    def _object(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {_SERIALIZER: _NS + kind, **fields}

    def _hash(self, value: Mapping[Any, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise JobArgumentError(
                    f"ActiveJob hash keys must be strings (or kiq.activejob.Symbol), got {key!r}"
                )
            if key in RESERVED_KEYS:
                raise JobArgumentError(
                    f"ActiveJob cannot serialize a hash with reserved key {key!r}"
                )
            out[str(key)] = self.value(item)
        return out

    def _time(self, moment: datetime) -> dict[str, Any]:
        if moment.tzinfo is None:
            moment = moment.astimezone()  # a naive datetime is local time, as in Python
        zone = moment.tzinfo
        if isinstance(zone, ZoneInfo):  # a named zone: an ActiveSupport::TimeWithZone
            fields: dict[str, Any] = {"value": _iso(moment)}
            if self.modern:
                fields["time_zone"] = zone.key
            return self._object("TimeWithZoneSerializer", **fields)
        return self._object("TimeSerializer", value=_iso(moment))  # UTC or an offset: a Time

    def _range(self, value: range | RubyRange) -> dict[str, Any]:
        if not self.modern:
            raise JobArgumentError(
                "Rails before 7.1 cannot deserialize a Range argument; pass its ends, or set "
                'activejob_rails: "7.1" if every Rails worker runs 7.1 or later'
            )
        if isinstance(value, range):
            if value.step != 1:
                raise JobArgumentError(f"a Ruby Range has no step: cannot carry {value!r}")
            begin, end, exclude = value.start, value.stop, True
        else:
            begin, end, exclude = value.begin, value.end, value.exclude_end
        return self._object(
            "RangeSerializer",
            begin=self.value(begin),
            end=self.value(end),
            exclude_end=exclude,
        )


def serialize(
    args: Sequence[Any], kwargs: Mapping[str, Any] | None = None, *, rails: str = "6.1"
) -> list[Any]:
    """``ActiveJob::Arguments.serialize`` as Rails ``rails`` writes it (kwargs: keywords)."""
    return Serializer(_version(rails)).arguments(args, kwargs)


def envelope(
    job_class: str,
    arguments: list[Any],
    *,
    queue: str,
    priority: int | None = None,
    scheduled_at: float | None = None,
    locale: str | None = None,
    timezone_name: str | None = None,
    rails: str = "6.1",
) -> dict[str, Any]:
    """ActiveJob's ``serialize`` (activejob/lib/active_job/core.rb) for a new job."""
    now = datetime.now(UTC)
    modern = _version(rails) >= (7, 1)
    data: dict[str, Any] = {
        "job_class": job_class,
        "job_id": str(uuid.uuid4()),
        "provider_job_id": None,
        "queue_name": queue,
        "priority": priority,
        "arguments": arguments,
        "executions": 0,
        "exception_executions": {},
        "locale": locale,  # None: the Rails worker's I18n.locale
        "timezone": timezone_name,  # None: the Rails worker's Time.zone
        "enqueued_at": _iso(now) if modern else now.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if modern:
        when = None if scheduled_at is None else datetime.fromtimestamp(scheduled_at, UTC)
        data["scheduled_at"] = None if when is None else _iso(when)
    return data


def enqueue(
    job_class: str,
    *args: Any,
    kwargs: Mapping[str, Any] | None = None,
    queue: str = "default",
    wait: When | None = None,
    wait_until: When | None = None,
    priority: int | None = None,
    locale: str | None = None,
    timezone_name: str | None = None,
    config: Config | None = None,
) -> str | None:
    """Enqueue an ActiveJob job for a Rails worker, as ``perform_later`` there would.

    ``enqueue("ImportJob", 7, {"mode": "full"}, queue="default", wait=300)`` is
    ``ImportJob.set(queue: "default", wait: 300).perform_later(7, {"mode" => "full"})``;
    ``kwargs={"mode": "full"}`` passes Ruby keyword arguments. Returns the Sidekiq jid
    (Rails' ``provider_job_id``), or None if a client middleware stopped the push.
    """
    config = config or get_default()
    if not isinstance(job_class, str) or not job_class:
        raise JobArgumentError(f"job_class must be the Rails class name, got {job_class!r}")
    wrapper = WRAPPERS.get(config.activejob_wrapper)
    if wrapper is None:
        raise ConfigError(
            f"activejob_wrapper: {config.activejob_wrapper!r} is not allowed; use legacy "
            f"(every Rails/Sidekiq reads it) or sidekiq (Sidekiq 7.3+ only)"
        )
    at: float | None = None
    if wait is not None:
        at = resolve_at(_seconds(wait, relative=True), wire.now())
    elif wait_until is not None:
        at = resolve_at(_seconds(wait_until, relative=False), wire.now())
    arguments = serialize(args, kwargs, rails=config.activejob_rails)
    data = envelope(
        job_class,
        arguments,
        queue=queue,
        priority=priority,
        scheduled_at=at,
        locale=locale,
        timezone_name=timezone_name,
        rails=config.activejob_rails,
    )
    item: dict[str, Any] = {
        "class": wrapper,
        "wrapped": job_class,
        "queue": queue,
        "args": [data],
        "retry": True,
    }
    if at is not None:
        item["at"] = at
    return Client(config).push(item)


# -- the wrapper Job ----------------------------------------------------------------------


def _envelope_of(payload: Payload) -> dict[str, Any]:
    args = payload.get("args")
    if (
        isinstance(args, list)
        and len(args) == 1
        and isinstance(args[0], dict)
        and isinstance(args[0].get("job_class"), str)
    ):
        return args[0]
    raise DeserializationError(
        f"{payload.get('class')} job {payload.get('jid')}: args is not one ActiveJob "
        f"envelope (a hash with job_class), got {str(args)[:200]}"
    )


def resolve(payload: Payload) -> tuple[type[Job], bool]:
    """The kiq Job that runs this ActiveJob payload, and whether it claimed the class.

    The claimant (``activejob=``) first, else a Job registered under the wrapper's own
    name (it gets the raw envelope); UnknownJobError naming the ActiveJob class if none.
    """
    wrapper = str(payload.get("class"))
    name = _envelope_of(payload)["job_class"]
    claimant = lookup_activejob(name)
    if claimant is not None:
        return claimant, True
    fallback = lookup_registered(wrapper)
    if fallback is not None:
        return fallback, False
    raise UnknownJobError(
        f"no kiq Job claims {name} (ActiveJob via {wrapper}): give one activejob={name!r} "
        f"(class {name.split('::')[-1]}(kiq.Job, activejob={name!r})) and import its module "
        f"with -r, or keep {name} on queues only Rails workers serve"
    )


class ActiveJobWrapper(Job, name="kiq.activejob.ActiveJobWrapper"):
    """What both wrapper class names run: unwraps the envelope and calls the claimant."""

    def perform(self, *args: Any) -> Any:
        target, claimed = resolve(self.payload)
        job = target()
        job.__dict__.update(self.__dict__)  # jid, payload and whatever the worker set
        if not claimed:  # a Job registered under the wrapper's name: the raw envelope
            return self._run(target, job, args, {})
        data = _envelope_of(self.payload)
        config = getattr(self, "config", None) or get_default()
        zone = data.get("timezone") if isinstance(data.get("timezone"), str) else None
        positional, keywords = split_arguments(
            data.get("arguments") or [], config.globalid_locator, zone=zone
        )
        job.activejob = ActiveJobData(
            job_class=data["job_class"],
            job_id=str(data.get("job_id", "")),
            provider_job_id=self.jid,
            queue_name=str(data.get("queue_name", self.payload.get("queue", ""))),
            priority=data.get("priority"),
            executions=int(data.get("executions") or 0) + 1,
            exception_executions=dict(data.get("exception_executions") or {}),
            locale=data.get("locale"),
            timezone=data.get("timezone"),
            enqueued_at=data.get("enqueued_at"),
            envelope=data,
        )
        return self._run(target, job, positional, keywords)

    @staticmethod
    def _run(target: type[Job], job: Job, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        try:
            result = job.perform(*args, **kwargs)
            if inspect.isawaitable(result):
                result = _run_to_completion(result)
        except target.discard_on as exc:  # the wrapper's own discard_on is empty
            raise Discard(f"{type(exc).__name__}: {exc}") from exc
        return result

    @classmethod
    def retry_in(cls, count: int, exc: BaseException, payload: Payload) -> float | str | None:
        try:
            target, _ = resolve(payload)
        except (UnknownJobError, DeserializationError):
            return None
        return target.retry_in(count, exc, payload)

    @classmethod
    def retries_exhausted(cls, payload: Payload, exc: BaseException) -> str | None:
        try:
            target, _ = resolve(payload)
        except (UnknownJobError, DeserializationError):
            return None
        return target.retries_exhausted(payload, exc)


register_wrapper(LEGACY_WRAPPER, ActiveJobWrapper)
register_wrapper(SIDEKIQ_WRAPPER, ActiveJobWrapper)

__all__ = [
    "LEGACY_WRAPPER",
    "SIDEKIQ_WRAPPER",
    "ActiveJobData",
    "ActiveJobWrapper",
    "DeserializationError",
    "GlobalID",
    "IndifferentDict",
    "RubyModule",
    "RubyRange",
    "Symbol",
    "deserialize",
    "enqueue",
    "envelope",
    "register_deserializer",
    "resolve",
    "serialize",
    "split_arguments",
]
