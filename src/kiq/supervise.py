"""Supervise: every engine thread is started here, so none can die silently (issue 12).

Sidekiq's ``safe_thread``/``watchdog``, for Python threads. ``spawn`` starts a named
daemon thread around a loop and keeps it alive:

  1. restart (the default): an exception escaping the loop is logged once with its
     traceback (the same error again within ``REPEAT_WINDOW`` is counted, then
     summarised in one line), the thread waits a backoff (exponential from
     ``BACKOFF_FIRST`` to ``BACKOFF_CAP`` seconds, reset after a run that lasted
     ``HEALTHY_RUN``) and calls the loop again. The wrapper is around the loop, never
     around one iteration: it adds nothing to a job's path.
  2. give up: a loop that keeps crashing for ``give_up`` seconds (no run lasting
     ``HEALTHY_RUN`` in between), or any crash of a part started with
     ``restart=False``, cannot go on: ``Health.fail`` marks the process unhealthy.
     From then on the heartbeat no longer beats (a process never beats while a part of
     it is dead) and the launcher stops and exits non-zero, so a supervisor (kiq's
     ``--processes``, systemd, Kubernetes) starts a fresh one and, if this one dies
     before it is done, the others recover its jobs.
  3. ``Shutdown`` (the hard stop's interrupt) ends a thread quietly; a loop that
     returns is done (its part was stopped).

Example::

    health = Health(on_fail=lambda: events.put("DEAD"))
    spawn("poller", poller.run, stop=poller.stopped, health=health)
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from typing import Final

from kiq.errors import KiqError, Shutdown

log = logging.getLogger("kiq.supervise")

BACKOFF_FIRST: Final = 0.1  # seconds before the first restart of a crashed loop
BACKOFF_CAP: Final = 5.0  # seconds, the longest wait between two restarts
HEALTHY_RUN: Final = 30.0  # seconds a loop must run before its crash streak is forgotten
GIVE_UP: Final = 60.0  # seconds of crash after crash before a part counts as dead
REPEAT_WINDOW: Final = 60.0  # seconds during which the same error is not logged again


class PartDied(KiqError):
    """A part of the process could not go on; the process stopped to be restarted."""


class Health:
    """Whether every part of this process can go on; set once, never cleared.

    ``on_fail`` is called once, on the failing thread, when the first part dies (the
    launcher wakes its main loop with it).
    """

    def __init__(self, on_fail: Callable[[], None] | None = None) -> None:
        self._on_fail = on_fail
        self._lock = threading.Lock()
        self.reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None

    def fail(self, part: str, reason: str) -> None:
        with self._lock:
            if self.reason is not None:
                return
            self.reason = f"{part}: {reason}"
        log.error(
            "kiq.%s cannot go on (%s): this process stops beating and exits non-zero so "
            "that its supervisor starts a fresh one",
            part,
            reason,
        )
        if self._on_fail is not None:
            self._on_fail()


class _Repeats:
    """Rate limit for crash reports: the first of a kind with its traceback, then a
    count of the same kind once per REPEAT_WINDOW."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str, str], tuple[float, int]] = {}  # -> (logged at, since)

    def report(self, part: str, exc: BaseException, *, restarting: bool = True) -> None:
        key = (part, type(exc).__qualname__, str(exc)[:200])
        now = time.monotonic()
        with self._lock:
            logged_at, repeats = self._seen.get(key, (None, 0))
            if logged_at is not None and now - logged_at < REPEAT_WINDOW:
                self._seen[key] = (logged_at, repeats + 1)
                return
            self._seen[key] = (now, 0)
        if logged_at is None:
            text = "".join(traceback.format_exception(exc)).rstrip()
            then = "restarting it after a pause" if restarting else "not restarted: stopping"
            log.error("kiq.%s crashed; %s\n%s", part, then, text)
        else:
            log.error(
                "kiq.%s crashed again (%s: %s), %d more times in the last %.0f s; restarting",
                part,
                type(exc).__qualname__,
                exc,
                repeats + 1,
                now - logged_at,
            )


_repeats = _Repeats()


def spawn(
    name: str,
    loop: Callable[[], None],
    *,
    stop: threading.Event | None = None,
    health: Health | None = None,
    restart: bool = True,
    give_up: float = GIVE_UP,
) -> threading.Thread:
    """Start ``loop`` on a daemon thread named ``kiq.<name>``, supervised as above.

    ``stop`` set means the part is stopping: no restart after a crash. Without
    ``health`` a part that cannot go on is only logged (library use, tests).
    """
    thread = threading.Thread(
        target=_supervised,
        args=(name, loop, stop, health, restart, give_up),
        name=f"kiq.{name}",
        daemon=True,
    )
    thread.start()
    return thread


def _supervised(
    name: str,
    loop: Callable[[], None],
    stop: threading.Event | None,
    health: Health | None,
    restart: bool,
    give_up: float,
) -> None:
    pause = BACKOFF_FIRST
    streak_since: float | None = None  # monotonic time of the first crash of a streak
    while True:
        started = time.monotonic()
        try:
            loop()
            return
        except Shutdown:
            return
        except BaseException as exc:  # any crash: the point of a supervisor
            now = time.monotonic()
            if now - started >= HEALTHY_RUN:
                streak_since, pause = None, BACKOFF_FIRST
            streak_since = now if streak_since is None else streak_since
            if stop is not None and stop.is_set():
                _repeats.report(name, exc, restarting=False)  # stopping: not restarted
                return
            if not restart:
                _dead(name, exc, health, "it is not restarted after a crash")
                return
            if now - streak_since >= give_up:
                _dead(name, exc, health, f"it crashed again and again for {give_up:.0f} s")
                return
            _repeats.report(name, exc)
        if stop is not None:
            if stop.wait(pause):
                return
        else:
            time.sleep(pause)
        pause = min(pause * 2, BACKOFF_CAP)


def _dead(name: str, exc: BaseException, health: Health | None, why: str) -> None:
    text = "".join(traceback.format_exception(exc)).rstrip()
    log.error("kiq.%s died (%s)\n%s", name, why, text)
    if health is not None:
        health.fail(name, f"{type(exc).__qualname__}: {exc}")
