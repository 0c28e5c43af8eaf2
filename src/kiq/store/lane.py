"""Lane: one pooled Redis connection held for one-call-at-a-time writes (``perform_async``).

A web app enqueues one job per request: each push is one round trip, and on loopback
redis-py's pool checkout + release (~30 us), its Python command packer (~14 us) and
its reply wrapping (~12 us) were half of it (issue 5, timed per phase). A Lane keeps
one connection of the store's pool checked out and packs with hiredis's C packer, so a
push is: pack, send, read the replies. Only one thread uses the lane at a time; a
caller that finds it busy (another thread mid-push) gets ``None`` and takes the pool
as before, so threads never queue behind each other.

Everything else stays redis-py's: the connection (TCP, TLS, unix socket, Sentinel,
AUTH/SELECT on connect), reconnecting after ``disconnect()``, reply parsing and its
exceptions, and the idle health check (timed here by the lane's own clock, as redis-py
times it per read). It is part of the store's seam: only ``kiq.store`` uses it.
Without hiredis (a platform with no wheel) every call returns None and the store uses
the pool.

Private redis-py API: the lane reads a connection's ``_parser`` (and, for asyncio, its
``_writer``), which redis-py does not promise to keep. So ``pyproject.toml`` pins
redis-py to the majors this module is tested on (``TESTED_REDIS_PY``; tests/test_lane.py
fails on any other), and a connection without them turns the lane off with one warning:
every call then returns None and the store uses the pool, slower but correct.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Final

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _pack
except ImportError:  # pragma: no cover - redis[hiredis] installs it on every platform kiq runs
    _pack = None

_NEVER: Final = float("inf")
# redis-py majors the lane is tested on, low inclusive, high exclusive; pyproject.toml
# pins ``redis`` to the same range (tests/test_lane.py checks both).
TESTED_REDIS_PY: Final = (5, 9)
# The private attributes the lane reads (names kept here so a test can take them away).
PARSER: Final = "_parser"
WRITER: Final = "_writer"

log = logging.getLogger(__name__)
_warned: set[str] = set()


def _private_api(conn: Any, *names: str) -> bool:
    """Has ``conn`` the private attributes the lane reads? If not, warn once per process."""
    if all(hasattr(conn, name) for name in names):
        return True
    import redis  # local: only for the message

    if type(conn).__name__ not in _warned:
        _warned.add(type(conn).__name__)
        log.warning(
            "redis-py %s: %s has no %s; single pushes take the connection pool instead "
            "(slower). kiq is tested with redis-py %d.x to %d.x: install one of those.",
            redis.__version__,
            type(conn).__name__,
            " / ".join(names),
            TESTED_REDIS_PY[0],
            TESTED_REDIS_PY[1] - 1,
        )
    return False


# Every Lane of this process, reset in a forked child before any of its threads runs:
# the parent's socket and lock are not the child's (a per-call pid check raced when two
# threads of a fresh child pushed at once).
_lanes: weakref.WeakSet[Lane] = weakref.WeakSet()


def _after_fork() -> None:
    for lane in list(_lanes):
        lane._forked()


os.register_at_fork(after_in_child=_after_fork)
_HIGH_WATER: Final = 64 * 1024  # bytes unsent before an AsyncLane call awaits the drain


def _exchange(conn: Any, packed: bytes, count: int) -> list[Any]:
    """Write ``packed`` on ``conn`` (connecting if needed) and read ``count`` replies."""
    try:
        conn.send_packed_command([packed], check_health=False)
        parser = getattr(conn, PARSER)  # its read_response: redis-py's, minus ~12 us of wrapping
        return [parser.read_response() for _ in range(count)]
    except OSError as exc:  # a bare socket error from the parser's recv
        conn.disconnect()
        raise RedisConnectionError(f"Error while reading from Redis: {exc}") from exc
    except BaseException:
        conn.disconnect()  # a half-read reply must not reach the next call
        raise


class Lane:
    """A connection held out of ``pool`` for single calls; see the module docstring.

    Example::

        lane = Lane(client.connection_pool)  # in kiq.store: the pooled client's
        replies = lane.call([("SADD", "queues", "default"), ("LPUSH", "queue:default", raw)])
        if replies is None:
            ...  # busy: use the pool
    """

    def __init__(self, pool: Any, *, resend: bool = True) -> None:
        self._pool = pool
        self._resend = resend
        self._lock = threading.Lock()
        self._conn: Any = None
        self._check_after = 0.0  # monotonic; check the held connection's health after this
        self._off = False  # redis-py without the private API the lane reads
        _lanes.add(self)

    def call(self, commands: Sequence[Sequence[Any]]) -> list[Any] | None:
        """Send ``commands`` in one write and return their replies; None if the lane is busy.

        Error replies are read like the others, so the connection stays in step, and
        the first is raised (redis-py's exception classes). A transport error drops
        the connection, so no unread reply can reach the next call, and is raised as
        redis-py's ConnectionError or TimeoutError; the next call reconnects.
        """
        lock = self._lock
        if _pack is None or self._off or not lock.acquire(blocking=False):
            return None
        try:
            conn = self._conn
            if conn is None:
                conn = self._pool.get_connection()
                if not _private_api(conn, PARSER):
                    self._off = True
                    self._pool.release(conn)
                    return None
                self._conn = conn
            now = time.monotonic()
            if now >= self._check_after:  # idle too long: redis-py PINGs, reconnects if dead
                conn.check_health()
            packed = b"".join([_pack(tuple(command)) for command in commands])
            try:
                replies = _exchange(conn, packed, len(commands))
            except RedisConnectionError:
                # The held connection went stale (a Redis restart, a server idle timeout):
                # reconnect and send once more, as redis-py's default Retry does for
                # pooled commands. A second failure is Redis being away: raised.
                if not self._resend:
                    raise
                replies = _exchange(conn, packed, len(commands))
            self._check_after = now + (conn.health_check_interval or _NEVER)
        finally:
            lock.release()
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    def close(self) -> None:
        """Give the connection back to the pool (the store closes the pool after this)."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.release(conn)

    def drop(self) -> None:
        """Disconnect the held connection and give it back: after a failover it still
        talks to the demoted primary, which answers READONLY on every write; the next
        call connects afresh (through Sentinel, to the new primary)."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.disconnect()
            self._pool.release(conn)

    def _forked(self) -> None:
        """In a forked child: forget the parent's connection, take a fresh lock."""
        self._lock, self._conn = threading.Lock(), None


class AsyncLane:
    """The asyncio form of Lane: one redis.asyncio connection held for single pushes.

    One per event loop (its connection is bound to the loop). Beyond what Lane saves,
    the write goes straight to the transport, which sends at once when its buffer is
    empty (asyncio's selector transports do), and only a full buffer is awaited; the
    replies are read under one ``asyncio.timeout`` instead of one per reply. An
    ``await Job.aperform_async`` loop went from ~1,600 to ~6,400 jobs/s (issue 5).
    A cancelled call (a web request gone) drops the connection, as a half-read reply
    must not reach the next call.
    """

    def __init__(self, pool: Any, timeout: float) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: Any = None
        self._busy = False  # one coroutine at a time; the others take the pool
        self._check_after = 0.0
        self._off = False  # redis-py without the private API the lane reads

    async def call(self, commands: Sequence[Sequence[Any]]) -> list[Any] | None:
        """As ``Lane.call``; None while another coroutine of this loop is using it."""
        if _pack is None or self._busy or self._off:
            return None
        self._busy = True
        try:
            conn = self._conn
            if conn is None:
                conn = await self._pool.get_connection()
                if not _private_api(conn, PARSER, WRITER):
                    self._off = True
                    await self._pool.release(conn)
                    return None
                self._conn = conn
            now = time.monotonic()
            if not conn.is_connected:
                await conn.connect()
            elif now >= self._check_after:
                await conn.check_health()
            packed = b"".join([_pack(tuple(command)) for command in commands])
            try:
                replies = await self._exchange(conn, packed, len(commands))
            except RedisConnectionError:  # stale: once more on a new connection, as Lane
                await conn.connect()
                replies = await self._exchange(conn, packed, len(commands))
            self._check_after = now + (conn.health_check_interval or _NEVER)
        finally:
            self._busy = False
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    async def _exchange(self, conn: Any, packed: bytes, count: int) -> list[Any]:
        import asyncio  # local: the sync engine never loads asyncio for this module

        try:
            writer = getattr(conn, WRITER)
            writer.write(packed)
            if writer.transport.get_write_buffer_size() > _HIGH_WATER:
                await writer.drain()
            parser = getattr(conn, PARSER)
            async with asyncio.timeout(self._timeout):
                return [await parser.read_response() for _ in range(count)]
        except TimeoutError as exc:
            await conn.disconnect()
            raise RedisTimeoutError(f"Timeout reading from Redis after {self._timeout}s") from exc
        except OSError as exc:
            await conn.disconnect()
            raise RedisConnectionError(f"Error while talking to Redis: {exc}") from exc
        except BaseException:  # redis-py's ConnectionError, a cancellation...
            await conn.disconnect()
            raise

    async def close(self) -> None:
        """Give the connection back to the pool (the store closes the client after this)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._pool.release(conn)
