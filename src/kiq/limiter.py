"""Limiters shared by every process on one Redis (Sidekiq Enterprise's rate limiting).

Why its own module: a job calling a provider that allows 5 requests at once, or 100
a minute, needs one limit for every thread of every process, which no in-memory
limiter gives. Five kinds, as Enterprise (docs/limits.md)::

    STRIPE = kiq.Limiter.concurrent("stripe", 5, wait_timeout=5, lock_timeout=30)
    SMS = kiq.Limiter.bucket("sms", 100, "minute")       # fixed windows
    MAIL = kiq.Limiter.window("mail", 10, 1.0)           # sliding window of 1 s
    PUSH = kiq.Limiter.leaky("push", 60, "minute")       # drains one a second
    SHOP = kiq.Limiter.points("shopify", 1000, "minute") # calls spend points

    with STRIPE.within_limit():       # async jobs: ``async with``
        charge(...)

Each try is one Lua step (``limit.lua``, one round trip) on the server's clock; a
concurrent slot's release is one more (``limit_release.lua``). A caller that finds the
limit full waits up to ``wait_timeout``. A concurrent limiter's refused caller joins
its line (a ZSET in arrival order) and blocks on a wake-up list of its own: the
release hands the slot to the oldest live waiter in its own step (that waiter is made
the holder, then woken), so the waiter holds the slot when it wakes, with no round
trip of its own, and no fresh caller can take the slot first. A waiter renews its
place each ``SLICE``; a dead one's place lapses and it is handed nothing after that.
The other kinds sleep until the window or the bucket allows (the limiter says when),
jittered so waiters do not come back at once. Past ``wait_timeout`` the call raises
``kiq.OverLimit`` with ``retry_in``; inside a job the worker catches it and reschedules
the job (kiq.processor) instead of counting a failure, up to ``reschedule`` times.

A concurrent holder's slot is a ZSET member scored by its lock's expiry: a process
killed while holding it gives it back after ``lock_timeout``. Every key of a limiter
expires ``ttl`` after its last use (90 days, Enterprise's default), so limiters named
per partition (``f"stripe-{account_id}"``) stay bounded in number.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Final, Literal, TypedDict, Unpack

from kiq.errors import ConfigError, OverLimit
from kiq.keys import LIMITER_TTL
from kiq.store.limits import WAIT_SLICE, LimitCall

if TYPE_CHECKING:
    from kiq.config import Config

Kind = Literal["concurrent", "bucket", "window", "leaky", "points"]
Interval = float | int | timedelta | Literal["second", "minute", "hour", "day"]
Backoff = Callable[[int, float], float]  # (times rescheduled so far, retry_in s) -> delay s


class Options(TypedDict, total=False):
    """The options every kind takes (keywords of the constructors)."""

    wait_timeout: float  # seconds a call waits for the limit (5); 0: fail at once
    ttl: float  # seconds a limiter's keys outlive its last use (90 days)
    reschedule: int  # times a job is rescheduled for this limiter before it fails (20)
    backoff: Backoff  # (times rescheduled, retry_in) -> seconds until the job runs again
    config: Config  # the Redis to use (default: the process's default Config)


INTERVALS: Final = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
NAME: Final = re.compile(r"[A-Za-z0-9_.:-]{1,200}")  # Enterprise: letters, digits, - and _
RESCHEDULE: Final = 20  # times a limited job is rescheduled before it fails (Enterprise's)
SLICE: Final = WAIT_SLICE  # seconds a waiter blocks at most before trying again (and
# noticing a job timeout or shutdown raised into its thread); under the sockets' read timeouts


def default_backoff(overrated: int, retry_in: float) -> float:
    """When a limited job runs again: the limiter's own estimate, plus a linear jittered
    backoff (Enterprise's is 300 s per reschedule; kiq's first is seconds, not minutes)."""
    return retry_in + random.uniform(1.0, 5.0) * (overrated + 1)


def seconds_of(interval: Interval, what: str = "interval") -> float:
    """``"minute"`` -> 60.0, ``timedelta(seconds=2)`` -> 2.0, ``0.5`` -> 0.5."""
    if isinstance(interval, str):
        if interval not in INTERVALS:
            raise ConfigError(
                f"limiter {what} {interval!r} is not allowed; use second, minute, hour, day "
                f"or a number of seconds"
            )
        return float(INTERVALS[interval])
    if isinstance(interval, timedelta):
        interval = interval.total_seconds()
    if isinstance(interval, bool) or not isinstance(interval, int | float) or not interval > 0:
        raise ConfigError(f"limiter {what} {interval!r} is not allowed; give seconds > 0")
    return float(interval)


class Limiter:
    """One limit shared by every process; build one per name at import time and reuse it.

    Use the class methods (``concurrent``, ``bucket``, ``window``, ``leaky``,
    ``points``); ``within_limit()`` guards a block in sync and async code.
    """

    def __init__(
        self,
        kind: Kind,
        name: str,
        limit: int,
        interval: float,
        *,
        wait_timeout: float = 5.0,
        ttl: float = LIMITER_TTL,
        reschedule: int = RESCHEDULE,
        backoff: Backoff | None = None,
        config: Config | None = None,
    ) -> None:
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ConfigError(
                f"limiter name {name!r} is not allowed; use 1-200 letters, digits, '-', '_', "
                f"'.' or ':' (a partition goes in the name: f\"stripe-{{account_id}}\")"
            )
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"limiter {name!r}: limit {limit!r} must be a whole number >= 1")
        if not wait_timeout >= 0:
            raise ConfigError(f"limiter {name!r}: wait_timeout {wait_timeout!r} must be >= 0 s")
        self.kind: Kind = kind
        self.name = name
        self.limit = limit
        self.interval = interval  # seconds; the lock timeout for a concurrent limiter
        self.wait_timeout = float(wait_timeout)
        self.lifetime = seconds_of(ttl, "ttl")  # of its keys after the last use
        self.reschedule = reschedule
        self.backoff = backoff or default_backoff
        self._config = config

    # -- the five kinds (Sidekiq::Limiter's constructors) ---------------------------------
    @classmethod
    def concurrent(
        cls, name: str, count: int, *, lock_timeout: float = 30.0, **options: Unpack[Options]
    ) -> Limiter:
        """At most ``count`` holders at once; a holder's lock ends after ``lock_timeout`` s
        (a killed process gives its slot back then: keep blocks shorter than that)."""
        return cls("concurrent", name, count, seconds_of(lock_timeout, "lock_timeout"), **options)

    @classmethod
    def bucket(
        cls, name: str, count: int, interval: Interval, **options: Unpack[Options]
    ) -> Limiter:
        """``count`` calls per fixed window (``"second"``/``"minute"``/``"hour"``/``"day"``
        or seconds), windows aligned to the epoch: 12:00:59.9 and 12:01:00.0 are two."""
        return cls("bucket", name, count, seconds_of(interval), **options)

    @classmethod
    def window(
        cls, name: str, count: int, seconds: Interval, **options: Unpack[Options]
    ) -> Limiter:
        """``count`` calls in any ``seconds`` long sliding window."""
        return cls("window", name, count, seconds_of(seconds), **options)

    @classmethod
    def leaky(
        cls, name: str, count: int, interval: Interval, **options: Unpack[Options]
    ) -> Limiter:
        """A bucket of ``count`` calls that drains ``count`` per ``interval``: bursts up to
        ``count``, then a steady ``count / interval``."""
        return cls("leaky", name, count, seconds_of(interval), **options)

    @classmethod
    def points(
        cls, name: str, points: int, interval: Interval, **options: Unpack[Options]
    ) -> Limiter:
        """A budget of ``points`` refilled at ``points`` per ``interval``; each call spends
        ``within_limit(points=n)`` (correct it after the call: ``handle.points_used(m)``)."""
        return cls("points", name, points, seconds_of(interval), **options)

    @property
    def config(self) -> Config:
        if self._config is not None:
            return self._config
        from kiq.config import get_default  # the default at call time, as perform_async

        return get_default()

    def within_limit(self, points: int = 1) -> Within:
        """A context manager (``with`` or ``async with``) that holds the limit for a block.

        ``points``: what the call spends (points limiters; 1 for the others).

        Example::

            with STRIPE.within_limit():
                stripe.Charge.create(...)
        """
        if isinstance(points, bool) or not isinstance(points, int) or not 1 <= points <= self.limit:
            raise ConfigError(
                f"limiter {self.name!r}: points={points!r} must be a whole number from 1 to "
                f"its limit {self.limit}"
            )
        if self.kind != "points" and points != 1:
            raise ConfigError(
                f"limiter {self.name!r} is {self.kind}: only points limiters take points="
            )
        return Within(self, points)

    def __repr__(self) -> str:
        return f"Limiter.{self.kind}({self.name!r}, {self.limit}, {self.interval:g})"

    # -- one try; what to do after a refusal --------------------------------------------
    def _args(self, cost: int, token: str, waited: float, left: float) -> LimitCall:
        return LimitCall(
            self.kind,
            self.name,
            self.limit,
            max(1, round(self.interval * 1000)),
            cost,
            token,
            max(1, round(self.lifetime * 1000)),
            round(waited * 1000),
            round(left * 1000),
            datetime.now(UTC),
        )

    def _refused(self, retry_in: float, left: float, refusals: int) -> float | None:
        """Seconds to wait before the next try, or None to give up (raise OverLimit)."""
        if left <= 0 or (self.kind != "concurrent" and retry_in > left):
            return None
        if self.kind == "concurrent":
            return min(left, max(0.001, retry_in), SLICE)  # a release's handoff wakes it sooner
        # The limiter says when the next call fits. Every waiter hears the same moment, and
        # a window or leaky bucket frees one call at a time there: a waiter refused again
        # and again spreads its return over more of the next calls' slots (a randomised
        # backoff), so W waiters cost about one try per freed call, not W.
        slot = self.interval / self.limit
        spread = slot * 2 ** min(refusals, 12)
        return min(left, retry_in + random.uniform(0.0, min(spread, SLICE)), SLICE)

    def _over(self, retry_in: float) -> OverLimit:
        return OverLimit(self.name, retry_in, reschedule=self.reschedule, backoff=self.backoff)

    def acquire(self, points: int = 1) -> str:
        """Take the limit (waiting up to ``wait_timeout``); returns the token to release.

        Prefer ``within_limit``; this is for code that cannot use a ``with`` block.
        """
        return self._take(points)[0]

    def _take(self, points: int) -> tuple[str, float]:
        store = self.config.store
        attempt = _Attempt(self, points)
        reply = store.limit_try(attempt.call())
        try:
            while (pause := attempt.refused(reply)) is not None:
                if self.kind != "concurrent":
                    time.sleep(pause)  # a job's own thread; bounded by SLICE (see SLICE)
                elif (handed := store.limit_wait(self.name, attempt.token, pause)) is not None:
                    return attempt.token, handed / 1000  # a release made it the holder
                reply = store.limit_try(attempt.call())
        except OverLimit:
            raise  # the last try left the line in its own step
        except BaseException:  # a job timeout or shutdown raised into the wait
            self._abandon(attempt)
            raise
        return attempt.token, attempt.granted_at

    def _abandon(self, attempt: _Attempt) -> None:
        """A concurrent waiter stopped by an exception: give back its place in line, or
        the slot a release may have handed it meanwhile (best effort: the exception is
        what the caller sees; a place not given back lapses within 2 * SLICE)."""
        if self.kind == "concurrent" and attempt.refusals:
            with contextlib.suppress(Exception):
                self.release(attempt.token)

    def _release_args(
        self, token: str, points: int, used: int | None
    ) -> tuple[str, str, str | int, int, int, int] | None:
        """What ``limit_release`` is given, or None when there is nothing to give back."""
        lock_ms, ttl_ms = max(1, round(self.interval * 1000)), max(1, round(self.lifetime * 1000))
        if self.kind == "concurrent":
            return self.kind, self.name, token, self.limit, lock_ms, ttl_ms
        if self.kind == "points" and used is not None and used != points:
            return self.kind, self.name, points - used, self.limit, lock_ms, ttl_ms
        return None

    def release(self, token: str, points: int = 1, used: int | None = None) -> None:
        """Give back a concurrent slot (to the oldest waiter, if any, in the same step),
        or the points of an estimate not used."""
        if (args := self._release_args(token, points, used)) is not None:
            self.config.store.limit_release(*args)

    async def aacquire(self, points: int = 1) -> str:
        """The asyncio form of ``acquire``."""
        return (await self._atake(points))[0]

    async def _atake(self, points: int) -> tuple[str, float]:
        store = self.config.store
        attempt = _Attempt(self, points)
        reply = await store.alimit_try(attempt.call())
        try:
            while (pause := attempt.refused(reply)) is not None:
                if self.kind != "concurrent":
                    await asyncio.sleep(pause)
                elif (
                    handed := await store.alimit_wait(self.name, attempt.token, pause)
                ) is not None:
                    return attempt.token, handed / 1000
                reply = await store.alimit_try(attempt.call())
        except OverLimit:
            raise
        except BaseException:  # cancelled, or a timeout: as _abandon, on the loop
            if self.kind == "concurrent" and attempt.refusals:
                with contextlib.suppress(Exception):
                    await self.arelease(attempt.token)
            raise
        return attempt.token, attempt.granted_at

    async def arelease(self, token: str, points: int = 1, used: int | None = None) -> None:
        """The asyncio form of ``release``."""
        if (args := self._release_args(token, points, used)) is not None:
            await self.config.store.alimit_release(*args)


class _Attempt:
    """One ``acquire``'s tries: what each try sends and what a refusal means, shared by
    the thread (``_take``) and asyncio (``_atake``) loops, which only differ in how
    they call Redis and wait."""

    def __init__(self, limiter: Limiter, points: int) -> None:
        self.limiter = limiter
        self.points = points
        self.token = secrets.token_hex(8)
        self.started = time.monotonic()
        self.refusals = 0
        self.left = 0.0
        self.granted_at = 0.0  # epoch s on Redis's clock, once granted

    def call(self) -> LimitCall:
        """The next try's arguments (the time waited and left, as of now)."""
        waited = time.monotonic() - self.started
        self.left = self.limiter.wait_timeout - waited
        return self.limiter._args(self.points, self.token, waited, self.left)

    def refused(self, reply: tuple[bool, int, int]) -> float | None:
        """None when the try was granted, else the seconds to wait before the next one;
        raises OverLimit when the wait is over."""
        ok, ms, at = reply
        if ok:
            self.granted_at = at / 1000
            return None
        pause = self.limiter._refused(ms / 1000, self.left, self.refusals)
        self.refusals += 1
        if pause is None:
            raise self.limiter._over(ms / 1000)
        return pause


class Within:
    """What ``Limiter.within_limit`` returns: the limit held for one ``with`` block."""

    def __init__(self, limiter: Limiter, points: int) -> None:
        self.limiter = limiter
        self.points = points
        self.used: int | None = None
        self.granted_at = 0.0  # epoch s on Redis's clock when the call was let in
        self._token: str | None = None

    def points_used(self, points: int) -> None:
        """Say what the call really cost (points limiters): the difference is given back
        (or spent) when the block ends. Enterprise: ``handle.points_used(n)``."""
        if isinstance(points, bool) or not isinstance(points, int) or points < 0:
            raise ConfigError(f"points_used({points!r}): give a whole number >= 0")
        self.used = points

    def __enter__(self) -> Within:
        self._token, self.granted_at = self.limiter._take(self.points)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            token, self._token = self._token, None
            self.limiter.release(token, self.points, self.used)

    async def __aenter__(self) -> Within:
        self._token, self.granted_at = await self.limiter._atake(self.points)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            token, self._token = self._token, None
            await self.limiter.arelease(token, self.points, self.used)
