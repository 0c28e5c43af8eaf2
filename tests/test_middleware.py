"""Middleware chains: Sidekiq's editing verbs and call order, and ``ainvoke`` around an
``async def perform`` with sync and async middleware. Pure Python, no Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from kiq.middleware import Chain

PAYLOAD: dict[str, Any] = {"class": "HardJob", "args": [], "jid": "j", "queue": "default"}


class Recorder:
    """A middleware that logs "<name> before" / "<name> after" around call_next()."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def __call__(self, job: Any, payload: Any, queue: str, call_next: Callable[[], Any]) -> Any:
        name = type(self).__name__
        self.log.append(f"{name} before")
        result = call_next()
        self.log.append(f"{name} after")
        return result


class A(Recorder): ...


class B(Recorder): ...


class C(Recorder): ...


class AsyncRecorder:
    """An async middleware: wraps the whole awaited job."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def __call__(
        self, job: Any, payload: Any, queue: str, call_next: Callable[[], Awaitable[Any]]
    ) -> Any:
        self.log.append("async before")
        result = await call_next()
        self.log.append("async after")
        return result


def kinds(chain: Chain[Any]) -> list[str]:
    return [type(entry).__name__ for entry in chain]


@pytest.fixture
def log() -> list[str]:
    return []


@pytest.fixture
def chain(log: list[str]) -> Chain[Any]:
    """A chain holding A, B, C in that order."""
    chain: Chain[Any] = Chain()
    for kind in (A, B, C):
        chain.add(kind(log))
    return chain


# -- editing ------------------------------------------------------------------------------


def test_add_appends_in_order(chain: Chain[Any]) -> None:
    """add() puts each middleware after those already there."""
    assert kinds(chain) == ["A", "B", "C"]


def test_add_of_a_present_type_replaces_it_at_the_end(chain: Chain[Any], log: list[str]) -> None:
    """Adding a type again drops the old instance and appends the new one (Sidekiq: add)."""
    replacement = A(log)

    chain.add(replacement)

    assert kinds(chain) == ["B", "C", "A"]
    assert list(chain)[-1] is replacement
    assert len(chain) == 3


def test_prepend_puts_it_first(chain: Chain[Any], log: list[str]) -> None:
    """prepend() makes a middleware the outermost, moving it if present."""
    chain.prepend(C(log))

    assert kinds(chain) == ["C", "A", "B"]


def test_insert_before_places_it_ahead_of_the_anchor(chain: Chain[Any], log: list[str]) -> None:
    """insert_before(B, x) puts x right before B."""
    chain.insert_before(B, C(log))

    assert kinds(chain) == ["A", "C", "B"]


def test_insert_after_places_it_behind_the_anchor(chain: Chain[Any], log: list[str]) -> None:
    """insert_after(A, x) puts x right after A."""
    chain.insert_after(A, C(log))

    assert kinds(chain) == ["A", "C", "B"]


def test_remove_drops_every_entry_of_the_type(chain: Chain[Any]) -> None:
    """remove() takes the type out; removing an absent type is a no-op."""
    chain.remove(B)
    chain.remove(int)

    assert kinds(chain) == ["A", "C"]
    assert B not in chain
    assert A in chain


@pytest.mark.parametrize("verb", ["insert_before", "insert_after"])
def test_insert_next_to_a_missing_anchor_fails_without_changing_the_chain(
    chain: Chain[Any], log: list[str], verb: str
) -> None:
    """An unknown anchor is an error naming it, and the chain is left as it was."""
    chain.remove(B)

    with pytest.raises(ValueError, match="B is not in this middleware chain"):
        getattr(chain, verb)(B, C(log))

    assert kinds(chain) == ["A", "C"]


def test_clear_empties_the_chain(chain: Chain[Any]) -> None:
    """clear() removes everything."""
    chain.clear()

    assert len(chain) == 0


# -- invoke --------------------------------------------------------------------------------


def test_invoke_runs_first_added_outermost(chain: Chain[Any], log: list[str]) -> None:
    """A wraps B wraps C wraps the job, and the job's value comes back out."""

    def job() -> str:
        log.append("job")
        return "done"

    result = chain.invoke("job", PAYLOAD, "default", job)

    assert result == "done"
    assert log == [
        "A before",
        "B before",
        "C before",
        "job",
        "C after",
        "B after",
        "A after",
    ]


def test_invoke_stops_where_a_middleware_does_not_call_next(log: list[str]) -> None:
    """A middleware that returns without call_next() skips the inner ones and the job."""

    def halt(job: Any, payload: Any, queue: str, call_next: Callable[[], Any]) -> None:
        log.append("halt")

    chain: Chain[Any] = Chain()
    chain.add(A(log))
    chain.add(halt)
    chain.add(B(log))

    assert chain.invoke("job", PAYLOAD, "default", lambda: log.append("job")) is None
    assert log == ["A before", "halt", "A after"]


def test_invoke_on_an_empty_chain_just_runs_the_job() -> None:
    """No middleware: the job's own value is returned."""
    assert Chain[Any]().invoke("job", PAYLOAD, "default", lambda: 42) == 42


def test_middleware_gets_job_payload_and_queue(log: list[str]) -> None:
    """Each middleware is called with the job, the payload and the queue."""
    seen: list[tuple[Any, ...]] = []

    def spy(job: Any, payload: Any, queue: str, call_next: Callable[[], Any]) -> Any:
        seen.append((job, payload, queue))
        return call_next()

    chain: Chain[Any] = Chain()
    chain.add(spy)
    chain.invoke("HardJob", PAYLOAD, "critical", lambda: None)

    assert seen == [("HardJob", PAYLOAD, "critical")]


# -- ainvoke ---------------------------------------------------------------------------------


def _async_job(log: list[str]) -> Callable[[], Awaitable[str]]:
    async def perform() -> str:
        log.append("job start")
        await asyncio.sleep(0)
        log.append("job end")
        return "done"

    return perform


def test_ainvoke_async_middleware_wraps_the_whole_job(log: list[str]) -> None:
    """An ``async def __call__`` middleware's after-code runs once the job has finished."""
    chain: Chain[Any] = Chain()
    chain.add(AsyncRecorder(log))

    result = asyncio.run(chain.ainvoke("job", PAYLOAD, "default", _async_job(log)))

    assert result == "done"
    assert log == ["async before", "job start", "job end", "async after"]


def test_ainvoke_sync_middleware_only_starts_the_job(log: list[str]) -> None:
    """A sync middleware's call_next() starts the job: its after-code runs before the job."""
    chain: Chain[Any] = Chain()
    chain.add(A(log))

    result = asyncio.run(chain.ainvoke("job", PAYLOAD, "default", _async_job(log)))

    assert result == "done"
    assert log == ["A before", "A after", "job start", "job end"]


def test_ainvoke_mixes_sync_and_async_middleware_in_order(log: list[str]) -> None:
    """Sync then async: both before-hooks run first, in chain order, then the job."""
    chain: Chain[Any] = Chain()
    chain.add(A(log))
    chain.add(AsyncRecorder(log))

    result = asyncio.run(chain.ainvoke("job", PAYLOAD, "default", _async_job(log)))

    assert result == "done"
    assert log == ["A before", "A after", "async before", "job start", "job end", "async after"]


def test_ainvoke_sync_middleware_that_does_not_call_next_skips_the_job(log: list[str]) -> None:
    """Not calling call_next() in a sync middleware skips the async job."""

    def halt(job: Any, payload: Any, queue: str, call_next: Callable[[], Any]) -> None:
        log.append("halt")

    chain: Chain[Any] = Chain()
    chain.add(halt)

    assert asyncio.run(chain.ainvoke("job", PAYLOAD, "default", _async_job(log))) is None
    assert log == ["halt"]


def test_ainvoke_propagates_the_jobs_exception_through_async_middleware(
    log: list[str],
) -> None:
    """A failing job's exception reaches the caller, past the async middleware."""
    chain: Chain[Any] = Chain()
    chain.add(AsyncRecorder(log))

    async def boom() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        asyncio.run(chain.ainvoke("job", PAYLOAD, "default", boom))
    assert log == ["async before"]


class Both:
    """A middleware for both kinds of job: ``__call__`` for threads, ``acall`` for coroutines."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def __call__(self, job: Any, payload: Any, queue: str, call_next: Callable[[], Any]) -> Any:
        self.log.append("sync path")
        return call_next()

    async def acall(
        self, job: Any, payload: Any, queue: str, call_next: Callable[[], Awaitable[Any]]
    ) -> Any:
        self.log.append("acall before")
        result = await call_next()
        self.log.append("acall after")
        return result


def test_ainvoke_prefers_acall_and_wraps_the_whole_job(log: list[str]) -> None:
    """An ``async def acall`` is the async chain's form of a middleware: it wraps the job."""
    chain: Chain[Any] = Chain()
    chain.add(Both(log))

    result = asyncio.run(chain.ainvoke("job", PAYLOAD, "default", _async_job(log)))

    assert result == "done"
    assert log == ["acall before", "job start", "job end", "acall after"]


def test_ainvoke_sees_middleware_added_after_a_first_run(log: list[str]) -> None:
    """The async chain's cached view is rebuilt when the chain changes."""
    chain: Chain[Any] = Chain()
    asyncio.run(chain.ainvoke("job", PAYLOAD, "default", _async_job(log)))
    chain.add(AsyncRecorder(log))
    log.clear()

    asyncio.run(chain.ainvoke("job", PAYLOAD, "default", _async_job(log)))

    assert log == ["async before", "job start", "job end", "async after"]
    chain.remove(AsyncRecorder)
    log.clear()
    asyncio.run(chain.ainvoke("job", PAYLOAD, "default", _async_job(log)))
    assert log == ["job start", "job end"]
