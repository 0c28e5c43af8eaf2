"""The job payload: Sidekiq's JSON job hash, built, checked, encoded and decoded here.

A payload is a plain ``dict`` with Sidekiq's field names (shared/sidekiq-wire.md §2):
``class``, ``args``, ``jid``, ``queue``, ``retry``, ``created_at``, ``enqueued_at`` and,
after a failure, ``error_class``, ``error_message``, ``retry_count``, ``failed_at``,
``retried_at``, ``error_backtrace``. Any other key (a job option, ``bid``, ``cattr``...)
is carried through untouched, because Sidekiq merges every option into the payload and
a Ruby peer may rely on it.

Fields are checked once, at the door (issue 12): ``loads`` (hence every fetch, the
poller, crash recovery) hands the engine a payload whose known fields have the types
below, so no engine thread meets a string where it counts. ``null`` reads as absent
(as in Ruby) and is dropped. Otherwise a field the engine acts on refuses the job:
``PayloadError`` naming the field, the value and what is allowed, and the worker sends
that one job to the dead set with the message (``error_class`` ``kiq.PayloadError``)
without running it. A field that only describes the job is ignored with a warning
(dropped from the payload), as Sidekiq's engine would not act on it either. A job
refused at the door never runs: its neighbours, and the process's threads, never see it.

==================  =========================================================  ========
field               allowed (what Sidekiq 6.4-8.x and kiq write)               if not
==================  =========================================================  ========
class               non-empty string                                           dead
args                array                                                      dead
jid                 string                                                     dead
queue, retry_queue  non-empty string                                           dead
retry               true, false or an integer count 0 .. 2**31-1               dead
retry_count         integer -2**31+1 .. 2**31-1 (a manual retry lowers 0 to -1)  dead
kiq_recoveries      integer 0 .. 2**31-1                                       dead
retry_for           seconds, 0 <= n < 1e9 (relative, as Sidekiq's client)      dead
timeout             seconds, 0 < n <= MAX_TIMEOUT (one day)                    dead
at                  a number (epoch seconds)                                   dead
created_at,         float epoch seconds or int epoch milliseconds (Sidekiq 8)  ignored
enqueued_at,
failed_at,
retried_at,
discarded_at
backtrace           true, false or an integer line count                       ignored
dead                true or false                                              ignored
wrapped             a class name: dotted or ``::`` identifiers ("Mailer",      ignored
                    "billing.ChargeJob"), so a log line cannot be spoofed
log_level           string or integer                                          ignored
tags                array of strings                                           ignored
bid, error_class,   string                                                     ignored
error_message
result_ttl          seconds, 1 <= n < 1e9 (kiq.results: how long a result is kept)  ignored
error_backtrace     string (Base64 of zlib JSON), or an array (old Sidekiq)    ignored
overrated           integer 0 .. 2**31-1 (times a limiter rescheduled the job)  ignored
==================  =========================================================  ========

The client pushes with the same rules (``field_problem``): a bad value is refused at
push with a ``JobArgumentError``, so kiq never writes what its worker would refuse.

Encoding matches Ruby's ``JSON.generate`` byte for byte on what kiq writes (compact
separators, UTF-8 kept, key order kept, no NaN), because Sidekiq's
``SortedEntry#reschedule`` re-serialises a member and would otherwise duplicate it.
"""

from __future__ import annotations

import base64
import decimal
import json
import logging
import math
import os
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, TypeAlias

import orjson

from kiq.errors import JobArgumentError, PayloadError

log = logging.getLogger(__name__)

JSON: TypeAlias = str | int | float | bool | list["JSON"] | dict[str, "JSON"] | None

# A job as stored in Redis. A TypedDict cannot describe "these keys, plus any option
# a Ruby app added", and the field named "class" is a keyword, so payloads stay dicts
# and the known fields are documented above and in keys.py.
Payload: TypeAlias = dict[str, Any]

# orjson turns integers outside the signed 64-bit range into floats on load, which
# would corrupt a Ruby bignum argument; a payload holding a float this large is decoded
# again with the stdlib, which keeps integers exact.
_HUGE: Final = 2.0**63
_MS_THRESHOLD: Final = 100_000_000_000  # an int timestamp above this is milliseconds
# Ruby writes floats below 1e-4 or from 1e15 up with an exponent ("1.5e-05", "1.0e+15"),
# where orjson writes "0.000015", "1000000000000000.0", "1e+16" (in between the two
# agree, checked against Ruby 3.1 on random doubles). Both read back as the same number,
# but Sidekiq's reschedule ZINCRBYs its own re-encoding of a member, so a different
# spelling would add a duplicate (issue 3).
_RUBY_FIXED_MIN: Final = 1e-4
_RUBY_FIXED_MAX: Final = 1e15


def new_jid() -> str:
    """24 lowercase hex characters from 12 random bytes, as Sidekiq's SecureRandom.hex(12)."""
    return os.urandom(12).hex()


def new_jids(count: int) -> list[str]:
    """``count`` jids from one read of the system's randomness (perform_bulk)."""
    text = os.urandom(12 * count).hex()
    return [text[i : i + 24] for i in range(0, 24 * count, 24)]


def now() -> float:
    """Wall-clock epoch seconds: the unit of every persisted time kiq writes."""
    return time.time()


def dumps(payload: Mapping[str, Any] | Sequence[Any]) -> bytes:
    """Encode like Ruby's JSON.generate: compact, UTF-8 kept, insertion order kept."""
    try:
        out = orjson.dumps(payload)
    except TypeError:
        # Integers beyond 64 bits (Ruby bignums) are valid JSON that orjson refuses.
        text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        out = text.encode()
    # orjson and Ruby spell a float differently only where Ruby uses an exponent.
    if _has_exponent_float(payload):
        return _ruby_json(payload).encode()
    return out


def _has_exponent_float(value: object) -> bool:
    """Does ``value`` hold a float Ruby would print with an exponent? (< 1 µs a payload).

    ``_any_float(value, _ruby_exponent)``, with the test written inline for the floats
    of the top level (a payload's timestamps): it runs on every job pushed, and
    perform_bulk's profile showed the calls.
    """
    if type(value) is not dict:
        return _any_float(value, _ruby_exponent)
    for item in value.values():
        sub = type(item)
        if sub is float:
            if item != 0.0 and not _RUBY_FIXED_MIN <= abs(item) < _RUBY_FIXED_MAX:
                return True
        elif (sub is list or sub is dict or sub is tuple) and _any_float(item, _ruby_exponent):
            return True
    return False


def _ruby_exponent(number: float) -> bool:
    size = abs(number)
    return size != 0.0 and not _RUBY_FIXED_MIN <= size < _RUBY_FIXED_MAX


def _any_float(value: object, test: Callable[[float], bool]) -> bool:
    """True if any float inside ``value`` passes ``test``.

    Written for speed (it runs on every push and every fetched job): exact type checks,
    recursion only into containers, the test called only for floats (few per payload).
    """
    kind = type(value)
    if kind is float:
        return test(value)  # type: ignore[arg-type]  # a float: checked just above
    items: Iterable[object]
    if kind is dict:
        items = value.values()  # type: ignore[attr-defined]
    elif kind is list or kind is tuple:
        items = value  # type: ignore[assignment]
    else:
        return False
    for item in items:
        sub = type(item)
        if sub is str or sub is int or sub is bool or item is None:
            continue
        if sub is float:  # inline: a payload's timestamps are floats (perform_bulk's profile)
            if test(item):  # type: ignore[arg-type]
                return True
            continue
        if _any_float(item, test):
            return True
    return False


def _ruby_json(value: Any) -> str:
    """JSON.generate's spelling of ``value``; only floats differ from orjson's."""
    if isinstance(value, float):
        return _ruby_float(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Mapping):
        items = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys must be str, got {key!r}")
            items.append(f"{json.dumps(key, ensure_ascii=False)}:{_ruby_json(item)}")
        return "{" + ",".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_ruby_json(item) for item in value) + "]"
    return json.dumps(value)  # int (any size), bool, None


def _ruby_float(value: float) -> str:
    """Ruby's ``Float#to_s``: shortest round-trip digits, exponent outside [1e-4, 1e16)."""
    if not math.isfinite(value):
        raise ValueError(f"{value!r} is not valid JSON")
    if value == 0:
        return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
    sign, digit_tuple, exponent = decimal.Decimal(repr(value)).as_tuple()
    assert isinstance(exponent, int)  # finite, so never "n"/"N"/"F"
    point = len(digit_tuple) + exponent  # value = 0.<digits> * 10**point
    digits = "".join(map(str, digit_tuple)).rstrip("0") or "0"
    # Ruby 3.1 flo_to_s, measured: fixed up to 15 integer digits, or 16 with a fraction.
    if -4 < point <= 15 or 0 < point < len(digits):
        if point > 0:
            text = f"{digits[:point].ljust(point, '0')}.{digits[point:] or '0'}"
        else:
            text = f"0.{'0' * -point}{digits}"
    else:
        power = point - 1
        text = f"{digits[0]}.{digits[1:] or '0'}e{'+' if power >= 0 else '-'}{abs(power):02d}"
    return f"-{text}" if sign else text


def loads(raw: bytes | str) -> Payload:
    """Decode a job from Redis and check its fields (``validate``); raise PayloadError."""
    data = raw if isinstance(raw, bytes) else b""
    try:
        if isinstance(raw, str):
            data = raw.encode()
        job = orjson.loads(data)
        if type(job) is dict:
            return _validate(job, data, exact=False)
        if _any_float(job, _huge):  # orjson made an integer beyond 64 bits a float: redo
            job = _loads_exact(data)
    except _Huge:  # as above, found by _validate's walk over the fields
        try:
            job = _loads_exact(data)
        except (ValueError, RecursionError) as exc:
            raise _not_json(raw, data, exc) from exc
        return _validate(job, data, exact=True)
    except (ValueError, RecursionError) as exc:  # UnicodeError is a ValueError
        if isinstance(exc, PayloadError):
            raise
        raise _not_json(raw, data, exc) from exc
    raise PayloadError(f"job must be a JSON object, got {type(job).__name__}: {_clip(data)}")


def _not_json(raw: bytes | str, data: bytes, exc: BaseException) -> PayloadError:
    shown = _clip(data) if isinstance(raw, bytes) else repr(raw[:200])
    return PayloadError(f"job is not valid JSON ({exc}): {shown}")


class _Huge(Exception):
    """A float of magnitude >= 2**63 in a decoded job: orjson's reading of a bignum."""


MAX_TIMEOUT: Final = 86_400  # seconds: a job timeout above a day is a mistake, not a limit
MAX_COUNT: Final = 2**31  # retry, retry_count, kiq_recoveries: below this (count**4 stays a float)
MAX_RETRY_FOR: Final = 1_000_000_000  # Sidekiq's client: retry_for is relative seconds


def validate(job: dict[str, Any]) -> Payload:
    """Check ``job``'s fields against the table in the module docstring; return it.

    Raises PayloadError for a job without ``class`` or ``args`` (buried as it was, as
    Sidekiq does) and for a bad field the engine acts on (with ``job`` attached, so the
    dead set keeps it with the message); drops, with one warning, a field that only
    describes the job; drops ``null`` fields (Ruby reads nil as absent).
    """
    return _validate(job, None, exact=True)


def _validate(job: dict[str, Any], data: bytes | None, *, exact: bool) -> Payload:
    # Runs on every fetched job, so one pass over the fields does two things: find the
    # fields kiq reads whose type is not their usual one (a dict lookup and an exact
    # type test each, no call), and, unless ``exact``, look for orjson's floats from
    # bignums, which loads used to do in a pass of its own (issue 12: a few hundred ns
    # a job). Only the odd fields, if any, are judged, by _judge.
    odd: list[str] | None = None
    usual_of = _USUAL.get
    for key, value in job.items():
        kind = type(value)
        if exact or kind is str or kind is bool:
            pass
        elif kind is float:
            if not -_HUGE < value < _HUGE:
                raise _Huge
        elif (kind is list or kind is dict) and _any_float(value, _huge):
            raise _Huge
        usual = usual_of(key)
        if usual is None or kind is usual or (kind is int and key in _INT_TOO):
            continue  # not a field kiq reads, or a type of it that needs no more checks
        odd = [key] if odd is None else [*odd, key]
    klass = job.get("class")
    if type(klass) is not str or not klass:
        raise PayloadError(f"job has no 'class' string: {_shown(job, data)}")
    if type(job.get("args")) is not list:
        raise PayloadError(f"job {klass} has no 'args' array: {_shown(job, data)}")
    if job.get("queue") == "":  # a str, queue's usual type, so not among the odd ones
        odd = ["queue"] if odd is None else [*odd, "queue"]
    if odd is not None:
        _judge(job, klass, odd)
    return job


def _judge(job: dict[str, Any], klass: str, keys: list[str]) -> None:
    """Refuse the job for the first bad field it acts on, or drop the others (one warning)."""
    ignored: list[str] = []
    for key in keys:
        value = job[key]
        if value is None:
            del job[key]  # Ruby reads nil as absent
            continue
        fatal, check = _FIELDS[key]
        if check(value):
            continue
        problem = f"{key}={_short(value)} {_ALLOWED[key]}"
        if fatal:
            raise PayloadError(
                f"job {klass} jid={_short(job.get('jid'))}: {problem}; the job was not run. "
                f"Fix the code that enqueued it, then enqueue it again",
                job,
            )
        ignored.append(problem)
        del job[key]
    if ignored:
        log.warning("job %s jid=%s: ignored %s", klass, _short(job.get("jid")), "; ".join(ignored))


def field_problem(key: str, value: object) -> str | None:
    """Why ``value`` cannot be the payload field ``key``; None if it can (or kiq does not
    read ``key``). The client's check at push, with the same rules as ``validate``."""
    rule = _FIELDS.get(key)
    if rule is None or value is None or rule[1](value):
        return None
    return f"{key}={_short(value)} {_ALLOWED[key]}"


def _count(value: object) -> bool:
    return type(value) is int and 0 <= value < MAX_COUNT


def _retry_count(value: object) -> bool:
    # Sidekiq's API lowers retry_count by one for a manual retry: -1 after a first failure
    return type(value) is int and -MAX_COUNT < value < MAX_COUNT


def _retry(value: object) -> bool:
    return type(value) is bool or (type(value) is int and 0 <= value < MAX_COUNT)


def _name(value: object) -> bool:
    return type(value) is str and value != ""


def _string(value: object) -> bool:
    return type(value) is str


def _number(value: object) -> bool:
    # Finite: loads refuses NaN and infinities; the client checks with math.isfinite.
    kind = type(value)
    return (kind is float and math.isfinite(value)) or kind is int  # type: ignore[arg-type]


def _timeout(value: object) -> bool:
    kind = type(value)
    return (kind is float or kind is int) and 0 < value <= MAX_TIMEOUT  # type: ignore[operator]


def _retry_for(value: object) -> bool:
    kind = type(value)
    return (kind is float or kind is int) and 0 <= value < MAX_RETRY_FOR  # type: ignore[operator]


def _unique_for(value: object) -> bool:
    kind = type(value)
    return (kind is float or kind is int) and 0 < value < MAX_RETRY_FOR  # type: ignore[operator]


def _result_ttl(value: object) -> bool:
    kind = type(value)
    return (kind is float or kind is int) and 1 <= value < MAX_RETRY_FOR  # type: ignore[operator]


def _unique_until(value: object) -> bool:
    return value == "success" or value == "start"


def _expires_in(value: object) -> bool:
    kind = type(value)
    return (kind is float or kind is int) and 0 < value < MAX_RETRY_FOR  # type: ignore[operator]


def _expires_at(value: object) -> bool:
    return _number(value) and value > 0  # type: ignore[operator]


def _backtrace(value: object) -> bool:
    kind = type(value)
    return kind is str or kind is list  # a list: very old Sidekiq (api.JobRecord reads both)


def _bool_or_int(value: object) -> bool:
    kind = type(value)
    return kind is bool or kind is int


def _bool(value: object) -> bool:
    return type(value) is bool


def _level(value: object) -> bool:
    kind = type(value)
    return kind is str or kind is int


def _tags(value: object) -> bool:
    if type(value) is not list:
        return False
    for tag in value:  # noqa: SIM110  # a loop, not all(...): tags ride on many jobs
        if type(tag) is not str:
            return False
    return True


def _class_name(value: object) -> bool:
    """``"Mailer"``, ``"Billing::ChargeJob"``, ``"app.jobs.Send"``: what the log may print
    as ``class=`` (issue 12: a ``wrapped`` holding spaces or ``=`` spoofed log fields)."""
    if type(value) is not str or not 0 < len(value) <= 200:
        return False
    for part in value.replace("::", ".").split("."):  # noqa: SIM110  # all() is slower
        if not part.isidentifier():
            return False
    return True


_WHEN = "must be epoch seconds (a float) or milliseconds (an integer, Sidekiq 8)"
# field -> (refuses the job, check), and what is allowed, for the message
_FIELDS: Final[dict[str, tuple[bool, Callable[[object], bool]]]] = {
    "jid": (True, _string),
    "queue": (True, _name),
    "retry_queue": (True, _name),
    "retry": (True, _retry),
    "retry_count": (True, _retry_count),
    "kiq_recoveries": (True, _count),
    "retry_for": (True, _retry_for),
    "timeout": (True, _timeout),
    "unique_for": (False, _unique_for),
    "unique_until": (False, _unique_until),
    "expires_in": (True, _expires_in),  # Sidekiq Pro's expiring jobs (docs/iterable.md)
    "expires_at": (True, _expires_at),
    "at": (True, _number),
    "created_at": (False, _number),
    "enqueued_at": (False, _number),
    "failed_at": (False, _number),
    "retried_at": (False, _number),
    "discarded_at": (False, _number),
    "backtrace": (False, _bool_or_int),
    "dead": (False, _bool),
    "wrapped": (False, _class_name),
    "log_level": (False, _level),
    "tags": (False, _tags),
    "bid": (False, _string),
    "error_class": (False, _string),
    "error_message": (False, _string),
    "error_backtrace": (False, _backtrace),
    "result_ttl": (False, _result_ttl),  # ignored: the job runs, its result is not kept
    "overrated": (False, _count),
}


class _Checked:
    """The "usual type" of a field whose every value needs its check (a range, a shape)."""


# The type a field usually has and that needs no further check: ``validate`` tests only
# ``type(value) is usual`` for it (one dict lookup per field, no call), and calls the
# field's check for any other type. Keys are exactly those of _FIELDS.
_USUAL: Final[dict[str, type]] = dict.fromkeys(_FIELDS, _Checked) | {
    "jid": str,
    "queue": str,  # and not empty: checked after the loop in _validate
    "retry": bool,
    "at": float,
    "created_at": float,
    "enqueued_at": float,
    "failed_at": float,
    "retried_at": float,
    "discarded_at": float,
    "backtrace": bool,
    "dead": bool,
    "bid": str,
    "error_class": str,
    "error_message": str,
    "error_backtrace": str,
}
# Fields for which an int is as good as their usual type (Sidekiq 8's ms timestamps).
_INT_TOO: Final = frozenset(
    {"at", "created_at", "enqueued_at", "failed_at", "retried_at", "discarded_at", "backtrace"}
)
_ALLOWED: Final[dict[str, str]] = {
    "jid": "must be a string (Sidekiq writes 24 hex digits)",
    "queue": "must be a non-empty string",
    "retry_queue": "must be a non-empty string",
    "retry": f"must be true, false or a retry count from 0 to {MAX_COUNT - 1}",
    "retry_count": f"must be an integer from {1 - MAX_COUNT} to {MAX_COUNT - 1}",
    "kiq_recoveries": f"must be an integer from 0 to {MAX_COUNT - 1}",
    "overrated": f"must be an integer from 0 to {MAX_COUNT - 1} (kiq.Limiter's reschedules)",
    "retry_for": f"must be seconds from 0 to {MAX_RETRY_FOR} (relative, e.g. 172800 for 48h)",
    "timeout": f"must be seconds > 0 and at most {MAX_TIMEOUT} (one day); omit it for none",
    "unique_for": f"must be seconds > 0 and below {MAX_RETRY_FOR} (the lock's lifetime)",
    "unique_until": 'must be "success" (the default) or "start"',
    "expires_in": f"must be seconds > 0 and below {MAX_RETRY_FOR} (relative, e.g. 3600)",
    "expires_at": _WHEN + ", after which the job is dropped unrun",
    "at": "must be epoch seconds",
    "created_at": _WHEN,
    "enqueued_at": _WHEN,
    "failed_at": _WHEN,
    "retried_at": _WHEN,
    "discarded_at": _WHEN,
    "backtrace": "must be true, false or a line count",
    "dead": "must be true or false",
    "wrapped": 'must name a class, e.g. "UserMailer" or "Billing::ChargeJob"',
    "log_level": "must be a level name (debug, info, warn, error) or number",
    "tags": "must be an array of strings",
    "bid": "must be a string",
    "error_class": "must be a string",
    "error_message": "must be a string",
    "error_backtrace": "must be a string (Base64 of zlib JSON) or an array of lines",
    "result_ttl": f"must be seconds from 1 to below {MAX_RETRY_FOR} (how long the result is kept)",
}


def _short(value: object, limit: int = 60) -> str:
    """``repr`` clipped: a message names the bad value without copying a huge one."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}…"


def _shown(job: dict[str, Any], data: bytes | None) -> str:
    return _clip(data) if data is not None else _short(job, 200)


def _huge(number: float) -> bool:
    """A float of magnitude >= 2**63: orjson's reading of a Ruby bignum (or a real huge
    float, which the exact decoder reads the same)."""
    return abs(number) >= _HUGE


def _loads_exact(data: bytes) -> Any:
    # The stdlib keeps big integers exact but is laxer than orjson; hold it to the same
    # rules (strict UTF-8, no NaN/Infinity, no overflowing floats, no lone surrogates) so
    # a payload's validity never depends on whether it happens to hold a long number.
    job = json.loads(data.decode(), parse_constant=_refuse_constant, parse_float=_finite_float)
    json.dumps(job, ensure_ascii=False).encode()
    return job


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def to_seconds(value: object) -> float | None:
    """Read a payload timestamp as Sidekiq 8 does: float = seconds, integer = milliseconds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int) and value > _MS_THRESHOLD:
        return value / 1000.0
    return float(value)


def expiry(job: Payload) -> float | None:
    """When a job that has not started by then must be dropped (epoch seconds), or None.

    ``expires_at`` (absolute, written by kiq's client, float seconds or Sidekiq 8's
    integer milliseconds) wins; a bare ``expires_in`` (relative seconds: a Ruby push
    without Sidekiq Pro's client middleware) counts from ``enqueued_at``, the time the
    job became due, else from ``created_at`` (docs/iterable.md).
    """
    at = job.get("expires_at")  # read per fetched job: the usual None costs no call
    if at is not None:
        at = to_seconds(at)
        if at is not None:
            return at
    seconds = job.get("expires_in")
    if seconds is None or isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return None
    base = to_seconds(job.get("enqueued_at")) or to_seconds(job.get("created_at"))
    return None if base is None else base + float(seconds)


def encode_backtrace(lines: list[str]) -> str:
    """Base64(zlib(JSON array)), strict Base64 as Sidekiq 7.2.1+ (every reader accepts it)."""
    return base64.b64encode(zlib.compress(orjson.dumps(lines))).decode()


def decode_backtrace(value: str) -> list[str]:
    """Read strict or MIME (6.4, newline-wrapped) Base64, or a plain JSON array."""
    if value.lstrip().startswith("["):
        loaded = orjson.loads(value)
    else:
        loaded = orjson.loads(zlib.decompress(base64.b64decode(value.replace("\n", ""))))
    return [str(line) for line in loaded]


def check_args(job: str, args: object) -> None:
    """Refuse anything that would not survive a JSON round trip unchanged (Sidekiq strict_args!)."""
    if not isinstance(args, list):
        raise JobArgumentError(
            f"Arguments to {job} must be a list, got {type(args).__name__}: {args!r}."
        )
    for index, arg in enumerate(args):
        problem = _first_non_json(arg)
        if problem is not None:
            bad, why = problem
            raise JobArgumentError(
                f"Arguments to {job} must be native JSON types, but argument {index} "
                f"contains {bad!r}, {why}. Pass ids and plain values (str, int, float, "
                f"bool, None, list, dict with str keys), not objects: e.g. a model's id "
                f"instead of the model, an ISO string instead of a datetime."
            )


def _first_non_json(value: object) -> tuple[object, str] | None:
    if value is None or isinstance(value, bool | int):
        return None
    if isinstance(value, str):
        return None if _is_utf8(value) else (value, "text that is not valid UTF-8")
    if isinstance(value, float):
        return None if math.isfinite(value) else (value, "which JSON cannot represent")
    if isinstance(value, list):
        for item in value:
            if (found := _first_non_json(item)) is not None:
                return found
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return key, f"a {type(key).__name__} dict key (JSON keys are strings)"
            if not _is_utf8(key):
                return key, "a dict key that is not valid UTF-8"
            if (found := _first_non_json(item)) is not None:
                return found
        return None
    return value, f"a {type(value).__name__}"


def _is_utf8(text: str) -> bool:
    # Lone surrogates (e.g. from os.fsdecode of a bad file name) cannot be UTF-8;
    # orjson refuses them and Ruby's JSON.generate would too.
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _clip(data: bytes, limit: int = 200) -> str:
    text = data[:limit].decode(errors="replace")
    return text + ("…" if len(data) > limit else "")
