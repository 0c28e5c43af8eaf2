"""IterableJob: a long job that walks an enumerator and resumes from a saved cursor.

Example::

    class ExportDataJob(kiq.IterableJob, queue="exports"):
        def build_enumerator(self, export_id: int, *, cursor):
            return kiq.iter.sqlalchemy_batches(session, select(Row), Row.id, cursor=cursor)

        def each_iteration(self, batch, export_id: int) -> None:
            write_rows(export_id, batch)

Sidekiq 7.3+'s ``Sidekiq::IterableJob`` in Python, in its own Redis format (kiq.store's
``iteration`` file), so a Rails app's ``cancel!`` reaches a kiq job and Sidekiq's Web
UI shows its state. Tasks of one run (``perform``, which subclasses must not define):

  1. load ``it-<jid>`` (executions ``ex``, cursor ``c``, runtime ``rt``, ``cancelled``);
     count this execution; build the enumerator from the cursor;
  2. ``on_start`` on the first execution, ``on_resume`` on later ones; a job already
     cancelled calls ``on_cancel`` and ends;
  3. for each ``(item, cursor)``: note the cursor; every ``state_flush_interval`` (5 s)
     and when interrupted, flush the state and read the cancel flag; stop when
     cancelled (``on_cancel``) or interrupted (quiet/TERM, ``max_iteration_runtime``);
     else ``around_iteration`` -> ``each_iteration(item, *args)``;
  4. ``on_stop``; then, completed: ``on_complete`` and UNLINK the state; interrupted:
     flush and raise IterationInterrupted, and the worker puts the same payload back
     in its queue at once (kiq.processor); an error flushes too, so a retry resumes
     at the item that failed.

The cursor yielded with an item is the cursor *of that item*: the enumerator rebuilt
from it starts with that item again (Sidekiq's rule). A flush happens before the item
is processed, so after SIGKILL at most ``state_flush_interval`` seconds of work run
again; after quiet, TERM or ``max_iteration_runtime`` none does (docs/iterable.md).
An ``async def each_iteration`` makes an ``async def perform`` job that takes async
iterators too (``kiq.iter.async_items``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any, ClassVar, Protocol

import orjson

from kiq.client import in_test_mode
from kiq.config import Config, get_default
from kiq.errors import ConfigError, IterationInterrupted
from kiq.job import Job

log = logging.getLogger(__name__)

STATE_FLUSH_INTERVAL = 5.0  # seconds between state flushes (Sidekiq's STATE_FLUSH_INTERVAL)


class StateStore(Protocol):
    """Where ``it-<jid>`` is read and written: kiq.store's Store, or MemoryState."""

    def load_iteration(self, jid: str) -> dict[bytes, bytes]: ...
    def flush_iteration(self, jid: str, executions: int, cursor: bytes, runtime: float) -> bool: ...
    def clear_iteration(self, jid: str) -> None: ...


class IterableJob(Job):
    """Base class of iterable jobs: define ``build_enumerator`` and ``each_iteration``."""

    state_flush_interval: ClassVar[float] = STATE_FLUSH_INTERVAL
    # Seconds a run may iterate before it is put back in its queue (Sidekiq 8's config
    # option, per class here); None: no limit.
    max_iteration_runtime: ClassVar[float | None] = None

    _cursor: Any = None
    _executions: int = 0
    _runtime: float = 0.0
    _stop: threading.Event | None = None  # set by the worker: the process quiets or stops
    config: Config | None = None  # set by the worker; else the default Config

    def __init_subclass__(cls, **options: Any) -> None:
        if "perform" in cls.__dict__:
            raise ConfigError(
                f"{cls.__qualname__} is an iterable job and must not define perform; "
                f"define build_enumerator and each_iteration instead"
            )
        if inspect.iscoroutinefunction(cls.each_iteration):
            cls.perform = IterableJob._aperform  # type: ignore[method-assign,assignment]
        else:
            cls.perform = IterableJob._perform  # type: ignore[method-assign,assignment]
        super().__init_subclass__(**options)
        limit = cls.max_iteration_runtime
        if limit is not None and not (isinstance(limit, int | float) and limit > 0):
            raise ConfigError(f"{cls.__qualname__}: max_iteration_runtime={limit!r} must be > 0")

    # -- the user's side ------------------------------------------------------------
    def build_enumerator(self, *args: Any, cursor: Any) -> Iterable[Any] | None:
        """Items as ``(item, cursor)`` pairs from ``cursor`` on (None on the first run)."""
        raise NotImplementedError(f"{type(self).__qualname__} must define build_enumerator")

    def each_iteration(self, item: Any, *args: Any) -> Any:
        raise NotImplementedError(f"{type(self).__qualname__} must define each_iteration")

    def on_start(self) -> None:
        """Called once, before the first item of the first execution."""

    def on_resume(self) -> None:
        """Called before the first item of every later execution."""

    def on_stop(self) -> None:
        """Called at the end of every execution: completed, cancelled or interrupted."""

    def on_cancel(self) -> None:
        """Called when the job finds itself cancelled (then, as Sidekiq, ``on_complete``)."""

    def on_complete(self) -> None:
        """Called once the enumerator is exhausted (or the job was cancelled)."""

    def around_iteration(self, call: Callable[[], Any]) -> Any:
        """Wrap each item (Sidekiq's ``yield``): return ``call()``'s result."""
        return call()

    @property
    def cursor(self) -> Any:
        """The cursor of the item being processed (None before the first)."""
        return self._cursor

    @property
    def executions(self) -> int:
        """How many times this job has started, this run included (``ex``)."""
        return self._executions

    # -- the engine's side -----------------------------------------------------------
    def _config(self) -> Config:
        return getattr(self, "config", None) or get_default()

    def _store(self) -> StateStore:
        """Where the state lives: Redis (kiq.store), or memory in kiq.testing's modes
        when no worker runs the job (Sidekiq's test modes use no Redis either)."""
        if self.config is None and in_test_mode():
            return MEMORY
        return self._config().store

    def _load(self) -> bool:
        """Read the previous runs' state; True if the job is already cancelled."""
        state = self._store().load_iteration(self.jid)
        if state.get(b"ex") is not None:
            self._executions = int(state[b"ex"])
            self._cursor = orjson.loads(state.get(b"c") or b"null")
            self._runtime = float(state.get(b"rt") or 0)
        self._executions += 1
        if state.get(b"cancelled") is not None:
            self._kiq_cancelled = True
        return self._kiq_cancelled

    def _flush(self, started: float) -> bool:
        """Write ``it-<jid>``; True if the job is cancelled there (Ruby's flush_state)."""
        runtime = self._runtime + (time.monotonic() - started)
        cancelled = self._store().flush_iteration(
            self.jid, self._executions, orjson.dumps(self._cursor), runtime
        )
        if cancelled:
            self._kiq_cancelled = True
        return cancelled

    def _interrupted(self, started: float) -> bool:
        stop = self._stop
        if stop is not None and stop.is_set():
            return True
        limit = self.max_iteration_runtime
        return limit is not None and time.monotonic() - started >= limit

    def _step(self, cursor: Any, started: float, flushed: list[float]) -> str | None:
        """Before an item: "cancel", "stop" or None (go on); flushes when due."""
        self._cursor = cursor
        if self._kiq_cancelled:
            return "cancel"
        interrupted = self._interrupted(started)
        now = time.monotonic()
        if interrupted or now - flushed[0] >= self.state_flush_interval:
            cancelled = self._flush(started)
            flushed[0] = time.monotonic()
            if cancelled:
                return "cancel"
        return "stop" if interrupted else None

    def _perform(self, *args: Any) -> None:
        started = time.monotonic()
        cancelled = self._load()
        enumerator = self.build_enumerator(*args, cursor=self._cursor)
        if enumerator is None:
            log.info("build_enumerator returned None, skipping the job")
            return
        pairs = _pairs(enumerator)
        self._begin()
        outcome = "cancel" if cancelled else None
        flushed = [time.monotonic()]
        try:
            if outcome is None:
                for item, cursor in pairs:
                    outcome = self._step(cursor, started, flushed)
                    if outcome is not None:
                        break
                    self.around_iteration(functools.partial(self.each_iteration, item, *args))
        except BaseException:
            self._flush(started)  # a retry resumes at the item that failed
            raise
        finally:
            self._runtime += time.monotonic() - started
        self._finish(outcome)

    async def _aperform(self, *args: Any) -> None:
        started = time.monotonic()
        cancelled = await asyncio.to_thread(self._load)
        enumerator = self.build_enumerator(*args, cursor=self._cursor)
        if enumerator is None:
            log.info("build_enumerator returned None, skipping the job")
            return
        self._begin()
        outcome = "cancel" if cancelled else None
        flushed = [time.monotonic()]
        try:
            if outcome is None:
                async for item, cursor in _apairs(enumerator):
                    if self._kiq_cancelled or self._due(started, flushed[0]):
                        outcome = await asyncio.to_thread(self._step, cursor, started, flushed)
                    else:
                        self._cursor = cursor
                    if outcome is not None:
                        break
                    call = functools.partial(self.each_iteration, item, *args)
                    result = self.around_iteration(call)
                    if inspect.isawaitable(result):
                        await result
        except asyncio.CancelledError:
            raise  # hard shutdown: the manager requeued the job; no flush on the loop
        except BaseException:
            await asyncio.to_thread(self._flush, started)
            raise
        finally:
            self._runtime += time.monotonic() - started
        await asyncio.to_thread(self._finish, outcome)

    def _begin(self) -> None:
        if self._executions > 1:
            self.on_resume()
        else:
            self.on_start()

    def _due(self, started: float, flushed: float) -> bool:
        """Whether the next item needs the (blocking) ``_step``: a flush or a stop is due."""
        return self._interrupted(started) or time.monotonic() - flushed >= self.state_flush_interval

    def _finish(self, outcome: str | None) -> None:
        if outcome == "cancel":
            self._kiq_cancelled = True
            self.on_cancel()
            log.info("job cancelled")
        self.on_stop()
        if outcome == "stop":
            self._store().flush_iteration(
                self.jid, self._executions, orjson.dumps(self._cursor), self._runtime
            )
            raise IterationInterrupted(f"interrupted at cursor {self._cursor!r}")
        self.on_complete()
        self._store().clear_iteration(self.jid)


def _pairs(enumerator: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
    for pair in enumerator:
        yield _pair(pair)


async def _apairs(enumerator: Any) -> AsyncIterator[tuple[Any, Any]]:
    if hasattr(enumerator, "__aiter__"):
        async for pair in enumerator:
            yield _pair(pair)
    else:
        for pair in enumerator:
            yield _pair(pair)


def _pair(pair: Any) -> tuple[Any, Any]:
    if not isinstance(pair, tuple) or len(pair) != 2:
        raise TypeError(
            f"build_enumerator must yield (item, cursor) pairs, got {pair!r}; wrap a plain "
            f"sequence with kiq.iter.items(seq, cursor=cursor)"
        )
    return pair


class MemoryState:
    """``it-<jid>`` in a dict, for jobs performed by kiq.testing's fake and inline modes."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[bytes, bytes]] = {}

    def load_iteration(self, jid: str) -> dict[bytes, bytes]:
        return dict(self.hashes.get(jid, {}))

    def flush_iteration(self, jid: str, executions: int, cursor: bytes, runtime: float) -> bool:
        state = self.hashes.setdefault(jid, {})
        state.update({b"ex": str(executions).encode(), b"c": cursor, b"rt": repr(runtime).encode()})
        return b"cancelled" in state

    def clear_iteration(self, jid: str) -> None:
        self.hashes.pop(jid, None)


MEMORY = MemoryState()
