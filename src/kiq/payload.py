"""The job payload: Sidekiq's JSON job hash, built, checked, encoded and decoded here.

A payload is a plain ``dict`` with Sidekiq's field names (shared/sidekiq-wire.md §2):
``class``, ``args``, ``jid``, ``queue``, ``retry``, ``created_at``, ``enqueued_at`` and,
after a failure, ``error_class``, ``error_message``, ``retry_count``, ``failed_at``,
``retried_at``, ``error_backtrace``. Any other key (a job option, ``wrapped``, ``bid``,
``tags``...) is carried through untouched, because Sidekiq merges every option into
the payload and a Ruby peer may rely on it.

Encoding matches Ruby's ``JSON.generate`` byte for byte on what kiq writes (compact
separators, UTF-8 kept, key order kept, no NaN), because Sidekiq's
``SortedEntry#reschedule`` re-serialises a member and would otherwise duplicate it.
"""

from __future__ import annotations

import base64
import decimal
import json
import math
import os
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, TypeAlias

import orjson

from kiq.errors import JobArgumentError, PayloadError

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
    """Decode a job from Redis; raise PayloadError unless it is an object with class and args."""
    try:
        data = raw.encode() if isinstance(raw, str) else raw
        job = orjson.loads(data)
        if _any_float(job, _huge):  # orjson made an integer beyond 64 bits a float: redo
            job = _loads_exact(data)
    except (ValueError, RecursionError) as exc:  # UnicodeError is a ValueError
        shown = _clip(data) if isinstance(raw, bytes) else repr(raw[:200])
        raise PayloadError(f"job is not valid JSON ({exc}): {shown}") from exc
    if not isinstance(job, dict):
        raise PayloadError(f"job must be a JSON object, got {type(job).__name__}: {_clip(data)}")
    if not isinstance(job.get("class"), str) or not job["class"]:
        raise PayloadError(f"job has no 'class' string: {_clip(data)}")
    if not isinstance(job.get("args"), list):
        raise PayloadError(f"job {job['class']} has no 'args' array: {_clip(data)}")
    return job


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
