"""Client and server middleware chains (Sidekiq's ``call ... yield``, as Starlette's ``call_next``).

A middleware is any callable; the chain calls it with the job, the payload, the
queue and ``call_next``. Do something, call ``call_next()``, do something after::

    class Timing:
        def __call__(self, job, payload, queue, call_next):
            started = time.monotonic()
            try:
                return call_next()
            finally:
                statsd.timing(payload["class"], time.monotonic() - started)

    config.server_middleware.add(Timing())

* Client middleware runs at push time with the job *name* (a str: the job may be a
  Ruby class kiq cannot import). Return ``call_next()``'s result to let the push go
  on, possibly after changing ``payload``; return ``None`` to stop it (Sidekiq: not
  yielding). A stopped push returns ``None`` instead of a jid.
* Server middleware runs around ``perform`` with the Job *instance*; raising fails
  the job as usual, not calling ``call_next()`` skips it (counted as done).

First added runs outermost, as in Sidekiq.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Generic, Protocol, TypeVar

from kiq.payload import Payload


class ClientMiddleware(Protocol):
    def __call__(
        self,
        job: str,
        payload: Payload,
        queue: str,
        call_next: Callable[[], Payload | None],
    ) -> Payload | None: ...


class ServerMiddleware(Protocol):
    def __call__(
        self, job: Any, payload: Payload, queue: str, call_next: Callable[[], None]
    ) -> None: ...


M = TypeVar("M")


class Chain(Generic[M]):
    """An ordered list of middleware with Sidekiq's editing verbs."""

    def __init__(self) -> None:
        self._entries: list[M] = []
        self._kinds: list[tuple[Any, int]] | None = None  # ainvoke's view, rebuilt on change

    def add(self, middleware: M) -> None:
        """Append, replacing an existing entry of the same type (Sidekiq: add moves it)."""
        self.remove(type(middleware))
        self._entries.append(middleware)
        self._kinds = None

    def prepend(self, middleware: M) -> None:
        self.remove(type(middleware))
        self._entries.insert(0, middleware)
        self._kinds = None

    def insert_before(self, before: type, middleware: M) -> None:
        self._index(before)  # a missing anchor must fail before the chain is changed
        self.remove(type(middleware))
        self._entries.insert(self._index(before), middleware)
        self._kinds = None

    def insert_after(self, after: type, middleware: M) -> None:
        self._index(after)
        self.remove(type(middleware))
        self._entries.insert(self._index(after) + 1, middleware)
        self._kinds = None

    def remove(self, kind: type) -> None:
        self._entries = [m for m in self._entries if type(m) is not kind]
        self._kinds = None

    def clear(self) -> None:
        self._entries.clear()
        self._kinds = None

    def __contains__(self, kind: type) -> bool:
        return any(type(m) is kind for m in self._entries)

    def __iter__(self) -> Iterator[M]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def _index(self, kind: type) -> int:
        for index, entry in enumerate(self._entries):
            if type(entry) is kind:
                return index
        raise ValueError(
            f"{kind.__name__} is not in this middleware chain; add() it first, or use "
            f"add()/prepend() to place the new middleware at an end"
        )

    def invoke(self, first: Any, payload: Payload, queue: str, last: Callable[[], Any]) -> Any:
        """Run every middleware around ``last`` and return what the outermost returned."""
        # Built inside-out from partials: no closure or recursion per step. This runs
        # for every job (the Metrics middleware is always installed), so it is hot.
        entries: list[Any] = self._entries
        if not entries:
            return last()
        call: Callable[[], Any] = last
        for entry in reversed(entries):
            call = functools.partial(entry, first, payload, queue, call)
        return call()

    def ainvoke(
        self, first: Any, payload: Payload, queue: str, last: Callable[[], Awaitable[Any]]
    ) -> Awaitable[Any]:
        """Run the chain around an ``async def perform``: the awaitable of the whole job.

        A middleware whose ``__call__`` is ``async def`` gets a ``call_next`` returning an
        awaitable and wraps the whole job; so does one with an ``async def acall`` (a
        middleware serving both kinds of job, as kiq's metrics). A plain (sync)
        middleware's ``call_next()`` only starts the job: its code after ``call_next()``
        runs before the job ends.
        """
        kinds = self._kinds
        if kinds is None:
            kinds = self._kinds = [_async_kind(entry) for entry in self._entries]
        if len(kinds) == 1 and kinds[0][1]:  # the usual chain: kiq's metrics alone
            # its coroutine itself, not one awaiting it: one frame less on every resume
            return kinds[0][0](first, payload, queue, last)  # type: ignore[no-any-return]
        return self._astep(kinds, first, payload, queue, last)

    @staticmethod
    def _astep(
        kinds: list[tuple[Any, int]],
        first: Any,
        payload: Payload,
        queue: str,
        last: Callable[[], Awaitable[Any]],
    ) -> Awaitable[Any]:
        count = len(kinds)

        async def step(index: int) -> Any:
            if index == count:
                return await last()
            call, wraps = kinds[index]
            # The last middleware calls the job itself: one coroutine less per job.
            call_next = last if index + 1 == count else (lambda: step(index + 1))
            if wraps:
                return await call(first, payload, queue, call_next)
            started: list[Awaitable[Any]] = []
            call(first, payload, queue, lambda: started.append(call_next()))
            result = None
            for awaitable in started:
                result = await awaitable
            return result

        return step(0)


_SYNC, _WRAPS = False, True


def _async_kind(entry: Any) -> tuple[Any, bool]:
    """(what to call, whether it awaits the job) for one entry of the async chain."""
    acall = getattr(entry, "acall", None)
    if acall is not None and inspect.iscoroutinefunction(acall):
        return acall, _WRAPS
    if inspect.iscoroutinefunction(entry) or inspect.iscoroutinefunction(type(entry).__call__):
        return entry, _WRAPS
    return entry, _SYNC
