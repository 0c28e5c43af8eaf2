"""Peers: the Sidekiq versions sharing this Redis, and the formats kiq writes for them.

Why: Sidekiq 8 writes payload times (``created_at``, ``enqueued_at``, ``failed_at``,
``retried_at``, ``discarded_at``) as integer epoch milliseconds and its per-class
metrics under new keys; Sidekiq 6.4 and 7.x read times only as float seconds (an ms
value shows as a date 50,000 years away) and read only 7's metric keys. kiq reads
every format, so the question is only what to *write*: here it is chosen from the
processes actually sharing the Redis, so nobody has to pick a format by hand and no
live process is ever given one it cannot read (issue 15).

The rule (``choose``), from each live process's heartbeat ``info`` JSON:

  * ``version`` ``"kiq X"``: kiq reads both formats; it does not count.
  * ``version`` ``"8.0.0"`` or later: Sidekiq 8, reads both (JSON int = ms, float = s).
  * ``version`` below 8, or no ``version`` at all (6.4 and 7.0 write none), or an
    ``info`` that is not JSON: reads float seconds only.

Integer milliseconds are written only when every live Sidekiq process reads them and
at least one is Sidekiq 8 (otherwise float seconds, which every version reads).
``timestamp_format: ms`` or ``float`` in the config overrides the rule; ms with a live
process that cannot read it is logged as a warning at every change. Metrics: Sidekiq
8's layout is written when a Sidekiq 8 process is live or ms is written, Sidekiq 7's
layout unless every live Sidekiq process reads 8's (both when 7 and 8 share the Redis).

When it is decided, without a round trip on the push path:

  * A worker re-reads the processes at every heartbeat (``refresh``, from
    ``Launcher.beat``: an SSCAN of ``processes`` and one pipelined HMGET of their
    ``info``), so a Sidekiq 6.4 process that starts is seen within one beat.
  * A client-only process (a web app that only pushes) reads them once, at its first
    push (``formats(config)``: the only push that pays for it; it must not guess, the
    push writes the first timestamp). After that, a choice older than
    ``REFRESH_AFTER`` seconds is re-read by a short-lived background thread while the
    pushes go on with the cached choice: a new Sidekiq process is noticed within
    ``REFRESH_AFTER`` + one round trip, a push never waits for it, and a thread per
    refresh (not a resident one) survives a fork (gunicorn, Celery-style prefork).
    ``REFRESH_AFTER`` is 30 s: half the heartbeat TTL (60 s) that bounds how stale
    Sidekiq's own view of the processes is, and a read every 30 s costs nothing.

The choice is kept per ``Store`` (one Redis), so ``Config.close`` starts afresh.
One INFO line is logged when the choice is first made and whenever it changes, e.g.
``writing Sidekiq 8 millisecond timestamps: all 3 live Sidekiq processes are Sidekiq
>= 8.0`` or ``writing float-second timestamps: Sidekiq 6.4-7.0 (no version in its
heartbeat) at web-1:4321 reads only seconds``.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import orjson

from kiq.config import Config
from kiq.store import TRANSIENT_ERRORS, Store

log = logging.getLogger("kiq")

REFRESH_AFTER: Final = 30.0  # seconds a client-only process trusts its last read
RETRY_AFTER_ERROR: Final = 5.0  # a read that failed (Redis away) is tried again this soon
_VERSION: Final = re.compile(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?")


@dataclass(frozen=True, slots=True)
class Peer:
    """One live process as its heartbeat describes it."""

    identity: str
    where: str  # "host:pid" (from info), for log lines
    kind: str  # "kiq", "sidekiq", or "unknown" (an info that is not a JSON object)
    version: tuple[int, int, int] | None  # None: Sidekiq that writes no version (6.4, 7.0)
    shown: str  # the version as written, for log lines

    @property
    def reads_ms(self) -> bool:
        """Reads integer-millisecond times (kiq, Sidekiq 8+)."""
        return self.kind == "kiq" or (self.version is not None and self.version >= (8, 0, 0))

    @property
    def label(self) -> str:
        if self.kind == "kiq":
            return f"{self.shown} at {self.where}"
        if self.kind == "unknown":
            return f"a process with an unreadable heartbeat at {self.where}"
        if self.version is None:
            return f"Sidekiq 6.4-7.0 (no version in its heartbeat) at {self.where}"
        return f"Sidekiq {self.shown} at {self.where}"


def parse_peer(identity: str, info: bytes | str | None) -> Peer | None:
    """The process of ``identity`` from its heartbeat ``info`` JSON; None if the hash expired."""
    if info is None:
        return None
    where = identity.rsplit(":", 1)[0] if identity.count(":") >= 2 else identity
    try:
        data = orjson.loads(info)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        return Peer(identity, where, "unknown", None, "?")
    host, pid = data.get("hostname"), data.get("pid")
    if isinstance(host, str) and isinstance(pid, int) and not isinstance(pid, bool):
        where = f"{host}:{pid}"
    version = data.get("version")
    if not isinstance(version, str):
        return Peer(identity, where, "sidekiq", None, "")
    if version.startswith("kiq"):
        return Peer(identity, where, "kiq", None, version)
    match = _VERSION.match(version.strip())
    if match is None:
        return Peer(identity, where, "sidekiq", None, version)
    parts = tuple(int(p or 0) for p in match.groups())
    return Peer(identity, where, "sidekiq", (parts[0], parts[1], parts[2]), version)


@dataclass(frozen=True, slots=True)
class Formats:
    """What kiq writes to this Redis, and why (one line for the log)."""

    ms: bool  # payload times as integer epoch milliseconds (else float seconds)
    metrics7: bool  # Sidekiq 7's metric keys (j|%Y%m%d|H:M, <Class>-dd-HH:M)
    metrics8: bool  # Sidekiq 8's (j|%y%m%d|H:MM and the 10-minute j|%y%m%d|H:M, h|...)
    reason: str
    warning: str | None = None

    @property
    def key(self) -> tuple[bool, bool, bool, str | None]:
        """What a change is logged on (not the counts in ``reason``)."""
        return self.ms, self.metrics7, self.metrics8, self.warning


SECONDS: Final = Formats(False, True, False, "writing float-second timestamps: not yet known")


def _listed(peers: Sequence[Peer]) -> str:
    first = peers[0].label
    return first if len(peers) == 1 else f"{first} (and {len(peers) - 1} more)"


def choose(peers: Iterable[Peer], configured: str = "auto") -> Formats:
    """The formats to write for these live processes (see the module docstring)."""
    sidekiq = [p for p in peers if p.kind != "kiq"]
    old = [p for p in sidekiq if not p.reads_ms]
    eights = [p for p in sidekiq if p.reads_ms]
    if configured == "ms":
        warning = None
        if old:
            warning = (
                f"timestamp_format: ms is set, but {_listed(old)} reads only seconds and "
                f"will misread created_at/enqueued_at/failed_at; use timestamp_format: auto"
            )
        reason = "writing Sidekiq 8 millisecond timestamps: timestamp_format: ms is set"
        return Formats(True, bool(old), True, reason, warning)
    if configured == "float":
        reason = "writing float-second timestamps: timestamp_format: float is set"
        return Formats(False, True, bool(eights), reason)
    if old:
        reason = f"writing float-second timestamps: {_listed(old)} reads only seconds"
        return Formats(False, True, bool(eights), reason)
    if not eights:
        reason = "writing float-second timestamps: no live Sidekiq 8 process shares this Redis"
        return Formats(False, True, False, reason)
    n = len(eights)
    reason = (
        f"writing Sidekiq 8 millisecond timestamps: "
        f"{'the' if n == 1 else f'all {n}'} live Sidekiq process{'' if n == 1 else 'es'} "
        f"{'is' if n == 1 else 'are'} Sidekiq >= 8.0"
    )
    return Formats(True, False, True, reason)


def read_peers(store: Store) -> list[Peer]:
    """Every live process sharing the Redis (two round trips: SSCAN, pipelined HMGET)."""
    identities = store.process_identities()
    if not identities:
        return []
    found = []
    for identity, (info,) in zip(
        identities, store.process_fields(identities, ["info"]), strict=True
    ):
        peer = parse_peer(identity, info)
        if peer is not None:
            found.append(peer)
    return found


class _State:
    """The cached choice of one Store (see the module docstring)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.formats: Formats | None = None
        self.configured: str | None = None
        self.read_at = 0.0  # monotonic time of the last read (or failed read)
        self.stale_after = REFRESH_AFTER
        self.refreshing_pid = 0  # the pid whose background refresh is in flight

    def set(self, formats: Formats, configured: str, stale_after: float) -> None:
        with self.lock:
            previous = self.formats
            self.formats, self.configured = formats, configured
            self.read_at, self.stale_after = time.monotonic(), stale_after
        if previous is None or previous.key != formats.key:
            log.info("%s", formats.reason)
            if formats.warning:
                log.warning("%s", formats.warning)


_STATES: weakref.WeakKeyDictionary[Store, _State] = weakref.WeakKeyDictionary()
_STATES_LOCK = threading.Lock()
# The last store looked up and its state: nearly every call is for the same one, and
# this is on every push (a weakref call, where the dictionary lookup costs ~1 us).
_last: tuple[weakref.ref[Store], _State] | None = None


def _state(store: Store) -> _State:
    global _last
    last = _last
    if last is not None and last[0]() is store:
        return last[1]
    state = _STATES.get(store)
    if state is None:
        with _STATES_LOCK:
            state = _STATES.setdefault(store, _State())
    _last = (weakref.ref(store), state)
    return state


def refresh(config: Config) -> Formats:
    """Read the live processes now and cache the choice (every heartbeat, and the client).

    A Redis error keeps the previous choice (float seconds if there is none), is retried
    within ``RETRY_AFTER_ERROR`` seconds, and is raised for the caller's outage handling.
    """
    state = _state(config.store)
    configured = config.timestamp_format
    try:
        peers = read_peers(config.store)
    except TRANSIENT_ERRORS:
        with state.lock:
            state.read_at, state.stale_after = time.monotonic(), RETRY_AFTER_ERROR
            if state.formats is None:
                state.formats, state.configured = SECONDS, configured
        raise
    formats = choose(peers, configured)
    state.set(formats, configured, REFRESH_AFTER)
    return formats


def formats(config: Config) -> Formats:
    """The cached choice for ``config``'s Redis; what a push or a flush writes.

    The first call reads the processes (a Redis error: float seconds, read again
    within ``RETRY_AFTER_ERROR``); a stale choice is re-read in the background (see
    the module docstring).
    """
    if config.redis_url is None:
        # No Redis to read (inline and fake test modes, perform_inline): nothing shares
        # it, so the configured format, or float seconds for auto.
        return choose([], config.timestamp_format)
    state = _state(config.store)
    current = state.formats
    if current is None or state.configured != config.timestamp_format:
        try:
            return refresh(config)
        except TRANSIENT_ERRORS:
            return state.formats or SECONDS  # the push itself reports the outage
    if time.monotonic() - state.read_at > state.stale_after:
        _refresh_in_background(config, state)
    return current


def _refresh_in_background(config: Config, state: _State) -> None:
    pid = os.getpid()
    with state.lock:
        if state.refreshing_pid == pid:
            return  # one in flight (a pid of our parent's is a thread lost at fork)
        state.refreshing_pid = pid

    def run() -> None:
        try:
            refresh(config)
        except TRANSIENT_ERRORS:
            pass  # refresh() set a short retry; the pushes report the outage themselves
        except Exception:  # a bug must not be silent, nor kill a push
            log.exception("could not read the processes sharing Redis; writing as before")
        finally:
            with state.lock:
                state.refreshing_pid = 0

    threading.Thread(target=run, name="kiq-peers", daemon=True).start()
