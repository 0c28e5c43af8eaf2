"""Job: the base class users subclass, its options, the enqueue verbs and the registry.

Example::

    class CalculateMetricsJob(kiq.Job, queue="default", retry=5):
        def perform(self, entity_id: int) -> None:
            ...

    CalculateMetricsJob.perform_async(42)
    CalculateMetricsJob.perform_in(300, 42)
    CalculateMetricsJob.set(queue="urgent", retry=False).perform_async(42)

    @kiq.job(queue="mailers", retry=2)
    def send_digest(user_id: int) -> None: ...

    send_digest.perform_async(7)

Options are class keywords (the Python form of ``sidekiq_options``), inherited by
subclasses. Those that Sidekiq knows travel in the payload under Sidekiq's names
(``queue``, ``retry``, ``backtrace``, ``retry_queue``, ``dead``, ``tags``,
``log_level``); ``timeout`` travels too (Ruby ignores it); ``discard_on`` stays in
the class. Every subclass registers under ``name`` (default
``f"{module}.{qualname}"``); the worker finds job classes only through this
registry, never by importing a path taken from a payload.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Final,
    Generic,
    ParamSpec,
    TypeVar,
    cast,
    overload,
)

from kiq import payload as wire
from kiq import unique
from kiq.batch import Batch, Signature
from kiq.batch_status import BatchStatus
from kiq.cancel import CancelResult
from kiq.cancel import cancel as cancel_jid
from kiq.client import AsyncClient, Client, resolve_at
from kiq.config import Config, get_default
from kiq.errors import ConfigError, JobArgumentError
from kiq.keys import PROGRESS_TTL as PROGRESS_TTL  # re-exported: where Job.progress says it is
from kiq.middleware import Chain, ServerMiddleware
from kiq.payload import Payload
from kiq.results import Result

if TYPE_CHECKING:
    from kiq.activejob import ActiveJobData

log = logging.getLogger(__name__)

# Options copied into every payload, under Sidekiq's names.
PAYLOAD_OPTIONS: Final = (
    "queue",
    "retry",
    "backtrace",
    "retry_queue",
    "dead",
    "tags",
    "log_level",
    "timeout",
    "unique_for",  # kiq.unique: Sidekiq Enterprise's unique jobs (docs/unique.md)
    "unique_until",
    "result_ttl",  # kiq.results: keep what perform returns this many seconds (docs/results.md)
    "expires_in",  # Sidekiq Pro's expiring jobs: dropped unrun once late (docs/iterable.md)
)
CLASS_OPTIONS: Final = ("discard_on",)

_registry: dict[str, type[Job]] = {}
# ActiveJob (kiq.activejob): the Job that unwraps each ActiveJob wrapper class name,
# checked before the registry (so plain jobs pay one dict miss), and the Jobs that
# claim ActiveJob classes (``activejob="ImportJob"``), by ActiveJob class name.
_wrappers: dict[str, type[Job]] = {}
_activejob: dict[str, type[Job]] = {}

PROGRESS_EVERY = 0.5  # seconds between progress writes of one job (issue 7: rate limit)


def read_progress(config: Config, jid: str) -> dict[str, Any] | None:
    """The last progress a job reported: jid, percent, message, class, at; None if none."""
    return config.store.read_progress([jid]).get(jid)


def lookup(name: str) -> type[Job] | None:
    """The Job registered under a payload's ``class`` (or None).

    ActiveJob's wrapper class names resolve to kiq.activejob's unwrapping Job, which
    dispatches on the envelope's ``job_class`` (see ``lookup_activejob``).
    """
    return _wrappers.get(name) or _registry.get(name)


def lookup_registered(name: str) -> type[Job] | None:
    """The Job registered under ``name`` itself, ActiveJob's wrappers aside."""
    return _registry.get(name)


def lookup_activejob(job_class: str) -> type[Job] | None:
    """The Job that claims the ActiveJob class ``job_class`` (``activejob=``), or None."""
    return _activejob.get(job_class)


def register_wrapper(name: str, job: type[Job]) -> None:
    """Make payloads of class ``name`` run ``job`` (kiq.activejob's wrappers)."""
    _wrappers[name] = job


def registered() -> Mapping[str, type[Job]]:
    return dict(_registry)


When = float | int | datetime | timedelta


def _seconds(value: When, *, relative: bool) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds() if relative else wire.now() + value.total_seconds()
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise JobArgumentError(f"a time must be seconds, a timedelta or a datetime, got {value!r}")
    return float(value)


class Job:
    """Base class of kiq jobs; subclass it and define ``perform`` (sync or ``async def``)."""

    wire_name: ClassVar[str] = "kiq.job.Job"
    options: ClassVar[dict[str, Any]] = {"retry": True, "queue": "default"}
    discard_on: ClassVar[tuple[type[BaseException], ...]] = ()
    is_async: ClassVar[bool] = False
    activejob_name: ClassVar[str | None] = None  # the ActiveJob class this Job runs

    jid: str
    payload: Payload
    activejob: ActiveJobData  # set before perform when this Job runs an ActiveJob job

    def __init_subclass__(
        cls, *, name: str | None = None, activejob: str | None = None, **options: Any
    ) -> None:
        super().__init_subclass__()
        unknown = set(options) - set(PAYLOAD_OPTIONS) - set(CLASS_OPTIONS)
        if unknown:
            raise ConfigError(
                f"{cls.__qualname__}: unknown job option(s) {sorted(unknown)}; "
                f"allowed: {sorted(PAYLOAD_OPTIONS + CLASS_OPTIONS)}"
            )
        if "discard_on" in options:
            discard = options.pop("discard_on")
            cls.discard_on = tuple(discard) if isinstance(discard, list | tuple) else (discard,)
        merged = dict(cls.options)
        merged.update(options)
        _validate_options(cls.__qualname__, merged)
        cls.options = merged
        cls.wire_name = name or f"{cls.__module__}.{cls.__qualname__}"
        cls.is_async = inspect.iscoroutinefunction(cls.perform)
        _registry[cls.wire_name] = cls
        if activejob is not None:
            if not isinstance(activejob, str) or not activejob:
                raise ConfigError(
                    f"{cls.__qualname__}: activejob={activejob!r} must be the Rails class "
                    f'name, e.g. activejob="ImportJob"'
                )
            cls.activejob_name = activejob
            _activejob[activejob] = cls
        # A ``unique_args(args) -> list`` classmethod/staticmethod narrows what makes a
        # unique job's lock (docs/unique.md); the client and the worker read it there.
        unique.register_hook(cls.wire_name, getattr(cls, "unique_args", None))

    def perform(self, *args: Any) -> Any:
        raise NotImplementedError(f"{type(self).__qualname__} must define perform(self, ...)")

    @property
    def logger(self) -> logging.Logger:
        """A logger whose records carry this job's context (jid, class) via kiq.log."""
        return logging.getLogger(f"kiq.job.{type(self).__qualname__}")

    def progress(self, percent: float, message: str = "") -> None:
        """Report how far this job is: ``self.progress(40, "imported 400 of 1000")``.

        Stored in ``kiq|progress|<jid>`` (a hash with a TTL of ``PROGRESS_TTL``) for the
        admin API and the Web UI. Rate-limited: a write happens at most every
        ``PROGRESS_EVERY`` seconds, plus always at 0 and 100, so a tight loop calling
        it per row costs almost nothing and does not flood Redis.
        """
        percent = max(0.0, min(100.0, float(percent)))
        now = time.monotonic()
        last = getattr(self, "_progress_at", None)
        if last is not None and now - last < PROGRESS_EVERY and percent not in (0.0, 100.0):
            return
        self._progress_at = now
        config = getattr(self, "config", None) or get_default()
        fields = {
            "percent": repr(percent),
            "message": message,
            "class": type(self).wire_name,
            "at": repr(wire.now()),
        }
        config.store.write_progress(getattr(self, "jid", "") or "", fields)

    # -- cancel (kiq.cancel; docs/iterable.md) -----------------------------------------
    _kiq_cancelled: bool = False  # set by the worker's heartbeat when the jid is cancelled

    def cancelled(self) -> bool:
        """True once this job was cancelled (``kiq.api.cancel``, Ruby's ``cancel!``).

        A running job learns it within one heartbeat (5 s); a long loop should check
        it and return (or raise ``kiq.JobCancelled``): the job is then recorded as
        cancelled, neither failed nor retried.
        """
        return self._kiq_cancelled

    @classmethod
    def cancel(cls, jid: str, config: Config | None = None) -> CancelResult:
        """Cancel the job ``jid`` wherever it is (kiq.cancel.cancel)."""
        return cancel_jid(config or get_default(), jid)

    # -- batches (kiq.batch; docs/workflows.md) ------------------------------------------
    @property
    def bid(self) -> str | None:
        """The id of the batch this job belongs to (payload field ``bid``), or None."""
        value = getattr(self, "payload", {}).get("bid")
        return value if isinstance(value, str) else None

    @property
    def batch(self) -> Batch | None:
        """This job's batch, to add jobs to it while running: ``with self.batch.jobs():``.

        The block's token is this job's jid, so a re-run after a crash re-opens the same
        block (and the same child batches) instead of leaving one open forever.
        """
        bid = self.bid
        config = getattr(self, "config", None) or get_default()
        token = f"job-{getattr(self, 'jid', '')}"
        return None if bid is None else Batch(bid, config=config, token=token)

    def valid_within_batch(self) -> bool:
        """False once this job's batch was invalidated (Sidekiq Pro's valid_within_batch?)."""
        bid = self.bid
        config = getattr(self, "config", None) or get_default()
        return bid is None or not BatchStatus(bid, config=config).invalidated

    @classmethod
    def s(cls, *args: Any, **options: Any) -> Signature:
        """This job and its arguments as data: a step of ``kiq.chain``/``group``/``chord``."""
        wire.check_args(cls.wire_name, list(args))
        return Signature(cls.wire_name, args, options)

    # -- hooks (override as classmethods) ----------------------------------------------
    @classmethod
    def retry_in(cls, count: int, exc: BaseException, payload: Payload) -> float | str | None:
        """Seconds until the next try, ``"discard"``, ``"kill"``, or None for the default."""
        return None

    @classmethod
    def retries_exhausted(cls, payload: Payload, exc: BaseException) -> str | None:
        """Called once retries run out; return ``"discard"`` to skip the dead set."""
        return None

    # -- enqueue verbs ----------------------------------------------------------------
    @classmethod
    def payload_options(cls) -> dict[str, Any]:
        return cls.options

    @classmethod
    def set(cls, **options: Any) -> Setter:
        """Per-call options: queue, retry, timeout, ..., plus ``wait``/``wait_until``."""
        return Setter(cls, options)

    @classmethod
    def perform_async(cls, *args: Any) -> str | None:
        return Client(get_default()).push_job(cls, args)

    @classmethod
    def perform_in(cls, interval: When, *args: Any) -> str | None:
        return Setter(cls, {}).perform_in(interval, *args)

    @classmethod
    def enqueue(cls, *args: Any) -> Result | None:
        """``perform_async`` returning a ``kiq.Result`` (needs ``result_ttl``); None if a
        client middleware or a unique lock stopped the push."""
        return Setter(cls, {}).enqueue(*args)

    @classmethod
    async def aenqueue(cls, *args: Any) -> Result | None:
        return await Setter(cls, {}).aenqueue(*args)

    @classmethod
    def perform_at(cls, when: When, *args: Any) -> str | None:
        return Setter(cls, {}).perform_at(when, *args)

    @classmethod
    def perform_bulk(cls, args_list: Sequence[Sequence[Any]]) -> list[str | None]:
        return Setter(cls, {}).perform_bulk(args_list)

    @classmethod
    def perform_inline(cls, *args: Any) -> Any:
        return Setter(cls, {}).perform_inline(*args)

    # -- asyncio forms, for async web views (Django's ``a`` prefix convention) ---------
    @classmethod
    async def aperform_async(cls, *args: Any) -> str | None:
        return await Setter(cls, {}).aperform_async(*args)

    @classmethod
    async def aperform_in(cls, interval: When, *args: Any) -> str | None:
        return await Setter(cls, {}).aperform_in(interval, *args)

    @classmethod
    async def aperform_at(cls, when: When, *args: Any) -> str | None:
        return await Setter(cls, {}).aperform_at(when, *args)

    @classmethod
    async def aperform_bulk(cls, args_list: Sequence[Sequence[Any]]) -> list[str | None]:
        return await Setter(cls, {}).aperform_bulk(args_list)

    if TYPE_CHECKING:
        # Test-mode accessors, attached when kiq.testing is imported (Sidekiq: require
        # "sidekiq/testing"); declared here only so that type checkers know them.
        jobs: ClassVar[list[Payload]]

        @classmethod
        def clear(cls) -> None: ...
        @classmethod
        def drain(cls) -> int: ...
        @classmethod
        def perform_one(cls) -> Any: ...


def _validate_options(owner: str, options: Mapping[str, Any]) -> None:
    queue = options.get("queue")
    if not isinstance(queue, str) or not queue:
        raise ConfigError(f"{owner}: queue={queue!r} must be a non-empty string")
    retry = options.get("retry")
    if not isinstance(retry, bool | int) or (not isinstance(retry, bool) and retry < 0):
        raise ConfigError(f"{owner}: retry={retry!r} must be True, False or a count >= 0")
    for key, value in options.items():  # the worker's rules for every field (timeout...)
        if (problem := wire.field_problem(key, value)) is not None:
            raise ConfigError(f"{owner}: {problem}")


class Setter:
    """Options for one enqueue (Sidekiq's ``Job.set``), returned by ``Job.set(...)``."""

    def __init__(self, job: type[Job], options: Mapping[str, Any]) -> None:
        opts = dict(options)
        self._wait: When | None = opts.pop("wait", None)
        self._wait_until: When | None = opts.pop("wait_until", None)
        self._sync = bool(opts.pop("sync", False))
        self._config: Config | None = opts.pop("config", None)
        _validate_options(job.__qualname__, {**job.options, **opts})
        self.job = job
        self.options = opts

    def _item(self, args: Sequence[Any], at: float | None = None) -> dict[str, Any]:
        item: dict[str, Any] = {"class": self.job, "args": list(args), **self.options}
        if at is None and self._wait is not None:
            at = resolve_at(_seconds(self._wait, relative=True), wire.now())
        if at is None and self._wait_until is not None:
            at = resolve_at(_seconds(self._wait_until, relative=False), wire.now())
        if at is not None:
            item["at"] = at
        return item

    def _client(self) -> Client:
        return Client(self._config or get_default())

    def perform_async(self, *args: Any) -> str | None:
        if self._sync:
            self.perform_inline(*args)
            return None
        return self._client().push(self._item(args))

    def perform_in(self, interval: When, *args: Any) -> str | None:
        at = resolve_at(_seconds(interval, relative=True), wire.now())
        return self._client().push(self._item(args, at))

    def enqueue(self, *args: Any) -> Result | None:
        """Push like ``perform_async`` (``wait``/``wait_until`` too); a ``kiq.Result``."""
        self._need_result_ttl()
        jid = self._client().push(self._item(args))
        return None if jid is None else Result(jid, config=self._config)

    async def aenqueue(self, *args: Any) -> Result | None:
        self._need_result_ttl()
        jid = await self._aclient().push(self._item(args))
        return None if jid is None else Result(jid, config=self._config)

    def _need_result_ttl(self) -> None:
        if {**self.job.options, **self.options}.get("result_ttl") is None:
            name = self.job.__qualname__
            raise ConfigError(
                f"{name}.enqueue needs a result_ttl (seconds to keep the result): declare "
                f"class {name}(kiq.Job, result_ttl=3600) or call "
                f"{name}.set(result_ttl=3600).enqueue(...); perform_async keeps no result"
            )

    def perform_at(self, when: When, *args: Any) -> str | None:
        at = resolve_at(_seconds(when, relative=False), wire.now())
        return self._client().push(self._item(args, at))

    def perform_bulk(self, args_list: Sequence[Sequence[Any]]) -> list[str | None]:
        item = self._item([])
        item["args"] = [list(a) for a in args_list]  # middleware may edit them: copies
        return self._client().push_bulk(item)

    def _aclient(self) -> AsyncClient:
        return AsyncClient(self._config or get_default())

    async def aperform_async(self, *args: Any) -> str | None:
        return await self._aclient().push(self._item(args))

    async def aperform_in(self, interval: When, *args: Any) -> str | None:
        at = resolve_at(_seconds(interval, relative=True), wire.now())
        return await self._aclient().push(self._item(args, at))

    async def aperform_at(self, when: When, *args: Any) -> str | None:
        at = resolve_at(_seconds(when, relative=False), wire.now())
        return await self._aclient().push(self._item(args, at))

    async def aperform_bulk(self, args_list: Sequence[Sequence[Any]]) -> list[str | None]:
        item = self._item([])
        item["args"] = [list(a) for a in args_list]  # middleware may edit them: copies
        return await self._aclient().push_bulk(item)

    def perform_inline(self, *args: Any) -> Any:
        """Run now in this thread, through both middleware chains (Sidekiq perform_inline)."""
        client = self._client()
        payload = client.normalize(self._item(args))
        payload.pop("at", None)
        final = client._through_middleware(payload)
        if final is None:
            return None
        return run_payload(client.config, self.job, wire.loads(wire.dumps(final)))


def instantiate(job_class: type[Job], payload: Payload) -> Job:
    """A fresh ``job_class`` for ``payload``: how the worker (kiq.processor.Executor) and
    the test and inline modes (``run_payload``) make every job object."""
    job = job_class()
    job.jid = payload.get("jid", "")
    job.payload = payload
    return job


def perform(
    job: Job,
    payload: Payload,
    queue: str,
    chain: Chain[ServerMiddleware],
    settle: Callable[[Any], Any] | None = None,
) -> Any:
    """Run ``job.perform(*args)`` through the server middleware ``chain``; its result.

    The one way a sync job is performed, by the worker and by the test and inline
    modes. ``settle`` (those modes) turns the result into the final one inside the
    chain, so that middleware sees an async perform finish.
    """
    args = payload["args"]
    if settle is None and not len(chain):
        return job.perform(*args)  # the worker's fast path: no closure
    result: Any = None

    def call() -> None:
        nonlocal result
        result = job.perform(*args)
        if settle is not None:
            result = settle(result)

    chain.invoke(job, payload, queue, call)
    return result


def run_payload(
    config: Config,
    job_class: type[Job],
    payload: Payload,
    *,
    middleware: Chain[ServerMiddleware] | None = None,
) -> Any:
    """Instantiate and perform one job through the server middleware, synchronously.

    ``middleware`` replaces ``config.server_middleware``: kiq.testing runs jobs through
    its own chain (Sidekiq: ``Sidekiq::Testing.server_middleware``). The same two steps
    as the worker's (``instantiate``, ``perform``); an async perform is run to its end.
    """
    chain = config.server_middleware if middleware is None else middleware
    job = instantiate(job_class, payload)
    return perform(job, payload, payload["queue"], chain, settle=_settle)


def _settle(result: Any) -> Any:
    return _run_to_completion(result) if inspect.isawaitable(result) else result


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _run_to_completion(awaitable: Awaitable[Any]) -> Any:
    """Finish an async perform from sync code, even in a thread that runs a loop.

    perform_inline and kiq.testing's inline mode and drain are often called from async
    code (an async view, an async test), where asyncio.run refuses to nest; the job
    then runs on a loop of its own in a helper thread while the caller waits, as it
    would for a sync job.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_await(awaitable))
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kiq.inline") as pool:
        return pool.submit(asyncio.run, _await(awaitable)).result()


P = ParamSpec("P")
R = TypeVar("R")


class FunctionJob(Generic[P, R]):
    """What ``@kiq.job`` returns: call it to run now, or enqueue with the Job verbs."""

    def __init__(self, fn: Callable[P, R], job_class: type[Job]) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.job_class = job_class

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def perform_async(self, *args: P.args, **kwargs: P.kwargs) -> str | None:
        _no_kwargs(self.job_class, kwargs)
        return self.job_class.perform_async(*args)

    def perform_in(self, interval: When, *args: P.args, **kwargs: P.kwargs) -> str | None:
        _no_kwargs(self.job_class, kwargs)
        return self.job_class.perform_in(interval, *args)

    def perform_at(self, when: When, *args: P.args, **kwargs: P.kwargs) -> str | None:
        _no_kwargs(self.job_class, kwargs)
        return self.job_class.perform_at(when, *args)

    def perform_bulk(self, args_list: Sequence[Sequence[Any]]) -> list[str | None]:
        return self.job_class.perform_bulk(args_list)

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Result | None:
        _no_kwargs(self.job_class, kwargs)
        return self.job_class.enqueue(*args)

    def set(self, **options: Any) -> Setter:
        return self.job_class.set(**options)

    if TYPE_CHECKING:
        # Attached by kiq.testing, as on Job: ``send_digest.jobs``, ``send_digest.drain()``.
        @property
        def jobs(self) -> list[Payload]: ...
        def clear(self) -> None: ...
        def drain(self) -> int: ...
        def perform_one(self) -> Any: ...


def _no_kwargs(job: type[Job], kwargs: Mapping[str, Any]) -> None:
    if kwargs:
        raise JobArgumentError(
            f"{job.wire_name}: keyword arguments {sorted(kwargs)} cannot travel in a Sidekiq "
            f"payload (args is a JSON array); pass them positionally or as one dict argument"
        )


@overload
def job(name: Callable[P, R], /) -> FunctionJob[P, R]: ...
@overload
def job(
    name: str | None = None, **options: Any
) -> Callable[[Callable[P, R]], FunctionJob[P, R]]: ...
def job(name: str | Callable[..., Any] | None = None, **options: Any) -> Any:
    """Turn a function into a job: ``@kiq.job(queue="mailers", retry=2)`` or bare ``@kiq.job``."""
    if callable(name):
        # Bare ``@kiq.job``: without this the function itself arrived as ``name`` and the
        # decorated name silently became the inner ``wrap``.
        return job()(name)

    def wrap(fn: Callable[P, R]) -> FunctionJob[P, R]:
        wire_name = name or f"{fn.__module__}.{fn.__qualname__}"
        if inspect.iscoroutinefunction(fn):
            afn = cast(Callable[..., Awaitable[Any]], fn)

            class AsyncFunctionJob(Job, name=wire_name, **options):
                async def perform(self, *args: Any) -> Any:
                    return await afn(*args)

            return FunctionJob(fn, AsyncFunctionJob)  # type: ignore[arg-type]  # R is the coroutine

        call = cast(Callable[..., Any], fn)

        class SyncFunctionJob(Job, name=wire_name, **options):
            def perform(self, *args: Any) -> Any:
                return call(*args)

        return FunctionJob(fn, SyncFunctionJob)

    return wrap
