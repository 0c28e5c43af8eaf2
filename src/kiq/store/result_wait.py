"""Listener: every ``Result.get()`` of a process waits on one pub/sub connection.

Why: 10,000 callers waiting for results must not poll Redis (10,000 GETs every tick)
nor hold 10,000 connections (one BLPOP each). One dispatcher thread per Store holds
one subscribed connection and multiplexes every waiter of the process onto it:

  1. ``wait(jid)`` files a ``concurrent.futures.Future`` under the jid and pokes the
     dispatcher through a local pipe (no Redis command). Threads block on the future,
     coroutines await ``asyncio.wrap_future`` of it.
  2. The dispatcher sends one ``SUBSCRIBE`` for every jid filed since its last pass
     (channel ``kiq|result-ready|<jid>``; several waiters of one jid share it).
  3. When Redis confirms a subscription the result may already have been stored
     before it, so the dispatcher reads the records of the confirmed jids with one
     ``MGET`` for the batch (through the store's pool) and resolves every final one.
  4. Otherwise the worker's ``result_store.lua`` stores the record and PUBLISHes it on
     the channel in the same step: the message carries the record, so waking a waiter
     costs no command at all.
  5. Once a jid has no waiter left (resolved, timed out, cancelled) its subscription
     ends with the next ``UNSUBSCRIBE``, sent for ``UNSUBSCRIBE_BATCH`` such jids at
     once or ``UNSUBSCRIBE_AFTER`` seconds after the first (a lingering subscription
     costs nothing: a finished job publishes no more).

So a wait costs at most one SUBSCRIBE, one MGET and one UNSUBSCRIBE, each shared by
all the waiters filed (or finished) in the same pass, and nothing while it waits: the connection
is idle apart from a PING every ``PING_EVERY`` seconds to notice a dead link. After a
lost connection (Redis restarted, failover) the dispatcher reconnects with a backoff,
subscribes to every jid still awaited and reads them again (steps 2-3), so no
publish missed meanwhile is lost.

Private redis-py API: the socket of a redis-py connection (``_sock``) is read with
``select`` beside the pipe and parsed with hiredis's ``Reader``; the connection itself
(TLS, AUTH, SELECT, Sentinel) is redis-py's. redis-py is pinned to the majors kiq is
tested on (``lane.TESTED_REDIS_PY``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import select
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Final

from hiredis import Reader, ReplyError
from hiredis import pack_command as pack

from kiq.errors import KiqError
from kiq.keys import Keys
from kiq.supervise import spawn

log = logging.getLogger(__name__)

PING_EVERY: Final = 30.0  # seconds of silence on the connection before a PING
BATCH: Final = 1000  # channels per SUBSCRIBE / UNSUBSCRIBE, keys per MGET
UNSUBSCRIBE_BATCH: Final = 200  # finished jids that make an UNSUBSCRIBE worth sending now
UNSUBSCRIBE_AFTER: Final = 1.0  # seconds a finished jid's subscription may linger
BACKOFF: Final = (0.1, 0.5, 1.0, 2.0, 5.0)  # seconds between reconnect attempts
CLOSE_WAIT: Final = 2.0  # seconds close() waits for the dispatcher to let go of Redis
SOCK: Final = "_sock"  # the private redis-py attribute read (see the module docstring)
# Records whose first bytes name a final status (kiq.results writes "status" first).
FINAL_PREFIXES: Final = (b'{"status":"succeeded"', b'{"status":"failed"', b'{"status":"dead"')

Fetch = Callable[[Sequence[str]], list[bytes | None]]  # jids -> their records (MGET)


def is_final(record: bytes | None) -> bool:
    """Is ``record`` a final one (succeeded, failed, dead), i.e. one that ends a wait?"""
    return record is not None and record.startswith(FINAL_PREFIXES)


class ListenerClosed(KiqError):
    """The Store whose listener a waiter used was closed."""


_listeners: weakref.WeakSet[Listener] = weakref.WeakSet()


def _after_fork() -> None:
    for listener in list(_listeners):
        listener._forked()


os.register_at_fork(after_in_child=_after_fork)


class Listener:
    """One process's pub/sub dispatcher for result waiters (see the module docstring).

    ``pool`` is the redis-py pool the subscribed connection comes from (held for the
    listener's life); ``fetch`` reads records by jid through the store's own pool.
    """

    def __init__(self, pool: Any, keys: Keys, fetch: Fetch) -> None:
        self._pool = pool
        self._keys = keys
        self._fetch = fetch
        self._prefix = len(keys.result_channel("").encode())  # channel = prefix + jid
        self._lock = threading.Lock()
        self._waiters: dict[str, list[concurrent.futures.Future[bytes]]] = {}
        self._sent: set[str] = set()  # jids SUBSCRIBEd and not UNSUBSCRIBEd since
        self._confirmed: set[str] = set()  # ... and whose subscription Redis confirmed
        self._check: set[str] = set()  # jids to read with the next MGET
        self._closed = False
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._poked = False
        self._gone_since: float | None = None  # when the oldest unsent UNSUBSCRIBE was due
        self.sent: Counter[str] = Counter()  # commands sent by verb: what the docs state
        _listeners.add(self)

    # -- called by waiters (any thread, any event loop) ---------------------------------
    def wait(self, jid: str) -> concurrent.futures.Future[bytes]:
        """A future resolved with ``jid``'s final record; ``forget`` it when giving up."""
        future: concurrent.futures.Future[bytes] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise ListenerClosed("this Store was closed; results cannot be awaited on it")
            waiting = self._waiters.setdefault(jid, [])
            waiting.append(future)
            if jid in self._confirmed:
                self._check.add(jid)  # subscribed already: the record may be there
            if self._thread is None:
                self._thread = spawn("results", self._run)
        self._poke()
        return future

    def forget(self, jid: str, future: concurrent.futures.Future[bytes]) -> None:
        """Stop waiting with ``future`` (a timeout, a cancelled task)."""
        with self._lock:
            waiting = self._waiters.get(jid)
            if waiting is None or future not in waiting:
                return
            waiting.remove(future)
            if waiting:
                return
            del self._waiters[jid]
        self._poke()  # its UNSUBSCRIBE goes with the dispatcher's next pass

    def waiting(self) -> int:
        """How many futures are waiting (for tests and the docs' figures)."""
        with self._lock:
            return sum(len(futures) for futures in self._waiters.values())

    def close(self) -> None:
        """Fail every waiter with ListenerClosed and end the dispatcher."""
        with self._lock:
            self._closed = True
            waiters, self._waiters = self._waiters, {}
        for futures in waiters.values():
            for future in futures:
                _settle(future, error=ListenerClosed("the Store was closed while waiting"))
        self._poke()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(CLOSE_WAIT)  # its connection goes back before the pools close
        if thread is None or not thread.is_alive():
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _poke(self) -> None:
        if self._poked:
            return  # one byte in the pipe wakes the dispatcher for everything filed since
        self._poked = True
        with contextlib.suppress(BlockingIOError):  # full: the dispatcher is awake anyway
            os.write(self._wake_w, b"x")

    def _forked(self) -> None:
        # A child has none of the parent's threads: its own waiters start afresh.
        self._lock = threading.Lock()
        self._waiters, self._sent, self._confirmed, self._check = {}, set(), set(), set()
        self._thread = None
        self._poked = False
        for fd in (self._wake_r, self._wake_w):  # the parent's pipe would wake the parent
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)

    # -- the dispatcher thread ----------------------------------------------------------
    def _run(self) -> None:
        attempt = 0
        while not self._closed:
            conn = None
            try:
                conn = self._pool.get_connection()
                conn.connect()
                attempt = 0
                self._serve(conn, getattr(conn, SOCK))
            except Exception as exc:
                if self._closed:
                    break
                pause = BACKOFF[min(attempt, len(BACKOFF) - 1)]
                attempt += 1
                log.warning("result listener lost Redis (%s); reconnecting in %ss", exc, pause)
                with self._lock:
                    self._sent.clear()  # a new connection has no subscriptions
                    self._confirmed.clear()
                time.sleep(pause)
            finally:
                if conn is not None:
                    conn.disconnect()
                    self._pool.release(conn)
        with self._lock:
            self._thread = None

    def _serve(self, conn: Any, sock: Any) -> None:
        reader = Reader()
        heard = time.monotonic()
        pinged = False
        while not self._closed:
            self._flush(sock)
            self._read_checks()
            wait = max(0.0, heard + PING_EVERY - time.monotonic())
            if self._gone_since is not None:
                wait = min(wait, max(0.0, self._gone_since + UNSUBSCRIBE_AFTER - time.monotonic()))
            ready, _, _ = select.select([sock, self._wake_r], [], [], wait)
            if self._wake_r in ready:
                self._poked = False  # before draining: a poke after this is not lost
                os.read(self._wake_r, 4096)
            if sock in ready:
                data = sock.recv(65536)
                while getattr(sock, "pending", lambda: 0)():  # TLS: bytes already decrypted
                    data += sock.recv(65536)
                if not data:
                    raise ConnectionError("Redis closed the result listener's connection")
                reader.feed(data)
                heard, pinged = time.monotonic(), False
                while (reply := reader.gets()) is not False:
                    self._handle(reply)
            elif not ready and time.monotonic() >= heard + PING_EVERY:  # is the link alive?
                if pinged:
                    raise ConnectionError(f"no answer to a PING within {PING_EVERY:g}s")
                self._send(sock, [("PING",)])
                pinged, heard = True, time.monotonic()

    def _send(self, sock: Any, commands: list[tuple[str, ...]]) -> None:
        sock.sendall(b"".join(pack(command) for command in commands))  # type: ignore[arg-type]
        self.sent.update(command[0] for command in commands)

    def _flush(self, sock: Any) -> None:
        """SUBSCRIBE the jids newly awaited, UNSUBSCRIBE those no longer awaited."""
        now = time.monotonic()
        with self._lock:
            wanted = self._waiters.keys()
            new = [jid for jid in wanted if jid not in self._sent]
            gone = [jid for jid in self._sent if jid not in wanted]
            since = (self._gone_since or now) if gone else None
            if (
                since is not None
                and len(gone) < UNSUBSCRIBE_BATCH
                and now < since + UNSUBSCRIBE_AFTER
            ):
                gone = []  # not yet: more will join this UNSUBSCRIBE
            else:
                since = None
            self._gone_since = since
            self._sent.update(new)
            self._sent.difference_update(gone)
            self._confirmed.difference_update(gone)
        commands: list[tuple[str, ...]] = []
        channel = self._keys.result_channel
        for verb, jids in (("SUBSCRIBE", new), ("UNSUBSCRIBE", gone)):
            for start in range(0, len(jids), BATCH):
                commands.append((verb, *(channel(jid) for jid in jids[start : start + BATCH])))
        if commands:
            self._send(sock, commands)

    def _handle(self, reply: Any) -> None:
        if isinstance(reply, ReplyError):
            raise ConnectionError(f"Redis refused a result subscription: {reply}")
        if not isinstance(reply, list) or len(reply) < 3:
            return  # PONG
        kind, channel, data = reply[0], reply[1], reply[2]
        jid = channel[self._prefix :].decode(errors="replace")
        if kind == b"message":
            if is_final(data):
                self._resolve(jid, data)
        elif kind == b"subscribe":
            with self._lock:
                if jid in self._sent:
                    self._confirmed.add(jid)
                if jid in self._waiters:
                    self._check.add(jid)  # stored before the subscription? read it

    def _read_checks(self) -> None:
        with self._lock:
            jids, self._check = sorted(self._check), set()
        for start in range(0, len(jids), BATCH):
            batch = jids[start : start + BATCH]
            self.sent["MGET"] += 1
            for jid, record in zip(batch, self._fetch(batch), strict=True):
                if is_final(record):
                    assert record is not None
                    self._resolve(jid, record)

    def _resolve(self, jid: str, record: bytes) -> None:
        with self._lock:
            futures = self._waiters.pop(jid, [])
        for future in futures:
            _settle(future, record=record)


def _settle(
    future: concurrent.futures.Future[bytes],
    *,
    record: bytes | None = None,
    error: BaseException | None = None,
) -> None:
    try:
        if error is not None:
            future.set_exception(error)
        elif record is not None:
            future.set_result(record)
    except concurrent.futures.InvalidStateError:
        pass  # cancelled by its waiter meanwhile
