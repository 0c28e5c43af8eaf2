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

    def add(self, middleware: M) -> None:
        """Append, replacing an existing entry of the same type (Sidekiq: add moves it)."""
        self.remove(type(middleware))
        self._entries.append(middleware)

    def prepend(self, middleware: M) -> None:
        self.remove(type(middleware))
        self._entries.insert(0, middleware)

    def insert_before(self, before: type, middleware: M) -> None:
        self._index(before)  # a missing anchor must fail before the chain is changed
        self.remove(type(middleware))
        self._entries.insert(self._index(before), middleware)

    def insert_after(self, after: type, middleware: M) -> None:
        self._index(after)
        self.remove(type(middleware))
        self._entries.insert(self._index(after) + 1, middleware)

    def remove(self, kind: type) -> None:
        self._entries = [m for m in self._entries if type(m) is not kind]

    def clear(self) -> None:
        self._entries.clear()

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

    async def ainvoke(
        self, first: Any, payload: Payload, queue: str, last: Callable[[], Awaitable[Any]]
    ) -> Any:
        """Run the chain around an ``async def perform``.

        A middleware whose ``__call__`` is ``async def`` gets a ``call_next`` returning an
        awaitable and wraps the whole job. A plain (sync) middleware's ``call_next()``
        only starts the job: its code after ``call_next()`` runs before the job ends.
        """
        entries = self._entries

        async def step(index: int) -> Any:
            if index == len(entries):
                return await last()
            entry: Any = entries[index]
            if inspect.iscoroutinefunction(entry) or inspect.iscoroutinefunction(
                type(entry).__call__
            ):
                return await entry(first, payload, queue, lambda: step(index + 1))
            started: list[Awaitable[Any]] = []
            entry(first, payload, queue, lambda: started.append(step(index + 1)))
            result = None
            for awaitable in started:
                result = await awaitable
            return result

        return await step(0)
