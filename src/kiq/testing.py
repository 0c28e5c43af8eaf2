"""Test modes for code that enqueues jobs: fake, inline or disable (Sidekiq::Testing).

* ``fake``: pushes are kept in memory instead of Redis. Each payload is JSON
  round-tripped (so a test sees what Redis would hold), given ``enqueued_at`` unless
  it is scheduled (``at`` is kept), and listed per class (``MyJob.jobs``) and per
  queue (``kiq.testing.queues["mailers"]``). ``MyJob.drain()`` runs them.
* ``inline``: each push runs its job at once, in the calling thread, after the client
  middleware and a JSON round trip; a job's exception reaches the caller.
* ``disable``: the real Redis push (the default until a mode is chosen).

Each mode function switches at once and also works as a block that restores the
previous mode::

    kiq.testing.fake()                      # from here on (e.g. in conftest.py)

    with kiq.testing.inline():              # only inside the block
        signup("ann@example.com")

    def test_signup_enqueues_welcome(kiq_fake):   # or the pytest fixtures
        signup("ann@example.com")
        assert WelcomeEmail.jobs[-1]["args"] == ["ann@example.com"]
        assert WelcomeEmail.drain() == 1

Importing this module gives every Job class (and every ``@kiq.job`` function) the
fake-mode accessors ``jobs``, ``clear()``, ``drain()`` and ``perform_one()``; on
``kiq.Job`` itself they act on all jobs (Sidekiq: ``Sidekiq::Job.jobs``). Jobs run
by ``drain`` and by inline mode go through ``kiq.testing.server_middleware``, which
is empty unless a test adds to it, never through a Config's server chain.
``MyJob.perform_inline(...)`` is not a push: it runs through both of the Config's
chains whatever the mode (Sidekiq: ``perform_inline``).

Batches and workflows (kiq.batch, kiq.workflow) live in memory in fake and inline
mode (kiq.testing_batches): ``drain`` runs a batch's jobs, then the callbacks they
fired; ``clear_all()`` forgets them too.

Unlike Sidekiq, where a block mode is thread-local, the mode is process-wide: test
clients (Starlette's TestClient, Django's live server) run the code under test in
another thread, and its pushes must be seen by the test. A different mode inside a
block is therefore refused everywhere (Sidekiq 7.2: ``TestModeAlreadySetError``).
The mode and the fake queues are guarded by one lock; jobs never run under it.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, Final, Literal, Self

from kiq import batch as kiq_batch
from kiq import batch_context, results
from kiq import payload as wire
from kiq.client import set_test_hook, timestamp
from kiq.config import Config, get_default
from kiq.errors import KiqError, UnknownJobError
from kiq.job import FunctionJob, Job, lookup, run_payload
from kiq.middleware import Chain, ServerMiddleware
from kiq.payload import Payload
from kiq.testing_batches import MemoryBackend, run_member

__all__ = [
    "EmptyQueueError",
    "Mode",
    "ModeSwitch",
    "TestModeAlreadySetError",
    "clear_all",
    "disable",
    "drain_all",
    "fake",
    "inline",
    "jobs",
    "mode",
    "queues",
    "server_middleware",
]

Mode = Literal["fake", "inline", "disable"]

# Server middleware for jobs run by drain / perform_one / inline mode (Sidekiq:
# Sidekiq::Testing.server_middleware). Empty by default, so tests see bare perform.
server_middleware: Final[Chain[ServerMiddleware]] = Chain()


class TestModeAlreadySetError(KiqError, RuntimeError):
    """A different test mode was asked for inside a ``with kiq.testing.<mode>():`` block."""

    __test__ = False  # not a pytest test class, despite its name


class EmptyQueueError(KiqError, LookupError):
    """``perform_one()`` found no fake job of its class."""


class _State:
    """The mode and the fake jobs, behind one lock (Sidekiq 7.1.6: thread-safe modes)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.mode: Mode = "disable"
        self.blocks = 0  # `with` blocks open, all in `mode` (a different one is refused)
        self.restore: Mode = "disable"  # the mode from before the first open block
        self.jobs: list[Payload] = []  # every fake job, oldest first
        self.results: dict[str, bytes] = {}  # kiq.results records of jobs run, by jid


_state: Final = _State()


# -- modes ---------------------------------------------------------------------------


class ModeSwitch:
    """What ``fake()``, ``inline()`` and ``disable()`` return: the mode is already on;
    use it in a ``with`` statement to put the previous mode back at the end."""

    def __init__(self, mode: Mode) -> None:
        self.mode = mode
        self.previous = _switch(mode)

    def __enter__(self) -> Self:
        with _state.lock:
            if _state.mode != self.mode:
                raise TestModeAlreadySetError(
                    f"the mode changed to {_state.mode!r} between kiq.testing.{self.mode}() "
                    f"and its `with`; write `with kiq.testing.{self.mode}():` in one statement"
                )
            if not _state.blocks:
                _state.restore = self.previous
            _state.blocks += 1
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Blocks opened by several threads may end in any order, so the mode goes back
        # only when the last one ends.
        with _state.lock:
            _state.blocks -= 1
            if not _state.blocks:
                _apply(_state.restore)


def fake() -> ModeSwitch:
    """Keep pushes in memory: ``MyJob.jobs``, ``MyJob.drain()``, ``queues["q"]``."""
    return ModeSwitch("fake")


def inline() -> ModeSwitch:
    """Run every pushed job at once, in the caller's thread."""
    return ModeSwitch("inline")


def disable() -> ModeSwitch:
    """Push to Redis for real (the default)."""
    return ModeSwitch("disable")


def mode() -> Mode:
    """The current mode: ``"fake"``, ``"inline"`` or ``"disable"``."""
    with _state.lock:
        return _state.mode


def _switch(mode: Mode) -> Mode:
    with _state.lock:
        current = _state.mode
        if _state.blocks and mode != current:
            raise TestModeAlreadySetError(
                f"kiq.testing.{mode}() inside a `with kiq.testing.{current}():` block: "
                f"nesting test modes is not supported. Switch modes outside the block "
                f"(the kiq_fake and kiq_inline fixtures hold one for the whole test)."
            )
        _apply(mode)
        return current


def _apply(mode: Mode) -> None:
    _state.mode = mode
    set_test_hook(None if mode == "disable" else _push)
    results.use_local(None if mode == "disable" else _state.results)
    kiq_batch.set_backend(None if mode == "disable" else _batches)  # batches in memory


def _push(payloads: list[Payload], config: Config) -> bool:
    """The client's test hook: take over the Redis write in fake and inline mode."""
    current = mode()
    if current == "fake":
        for payload in payloads:
            if "bid" in payload:
                _batches.register(payload)  # a batch member, counted as Redis would
            job = wire.loads(wire.dumps(payload))
            if "at" not in job:
                job["enqueued_at"] = timestamp(config)
            with _state.lock:
                _state.jobs.append(job)
        return True
    if current == "inline":
        token = batch_context.outside()  # a job's own pushes do not join an open batch
        try:
            _run_inline(payloads, config)
        finally:
            batch_context.leave(token)
        return True
    return False


def _run_inline(payloads: list[Payload], config: Config) -> None:
    for payload in payloads:
        job_class = _job_class(payload["class"])
        job = wire.loads(wire.dumps(payload))
        job.pop("at", None)  # runs now, and looks as it would to a worker
        job["enqueued_at"] = timestamp(config)
        run = functools.partial(_inline, config, job_class, job)
        if "bid" in job:
            _batches.register(job)
            results.run_recorded(config, job, functools.partial(run_member, config, job, run))
        else:
            results.run_recorded(config, job, run)


def _inline(config: Config, job_class: type[Job], job: Payload) -> Any:
    return run_payload(config, job_class, job, middleware=server_middleware)


# Batches and workflows in fake and inline mode (kiq.testing_batches); callbacks are
# pushed through _push, so drain runs them.
_batches: Final = MemoryBackend(_push)


# -- fake queues -----------------------------------------------------------------------


def jobs() -> list[Payload]:
    """Every fake job, oldest first (Sidekiq: ``Sidekiq::Job.jobs``)."""
    return _select(None)


def clear_all() -> None:
    """Forget every fake job, every result kept and the fake batches (Sidekiq:
    ``Sidekiq::Job.clear_all``)."""
    with _state.lock:
        _state.jobs.clear()
        _state.results.clear()
    _batches.clear()


def drain_all() -> int:
    """Drain every class present, again and again, until no fake job is left.

    Jobs enqueued while draining are run too. Returns the number of jobs run; an
    exception from a job propagates (that job is gone, the rest stay queued).
    """
    count = 0
    while names := list(dict.fromkeys(job["class"] for job in jobs())):
        for name in names:
            count += _drain(_job_class(name))
    return count


class _Queues(Mapping[str, list[Payload]]):
    """``queues["mailers"]``: that queue's fake jobs, oldest first; ``[]`` for an unknown
    queue, as Sidekiq's ``Sidekiq::Queues["name"]`` (so ``.get()`` never needs a default).
    """

    def __getitem__(self, queue: str) -> list[Payload]:
        with _state.lock:
            return [job for job in _state.jobs if job["queue"] == queue]

    def __contains__(self, queue: object) -> bool:
        with _state.lock:
            return any(job["queue"] == queue for job in _state.jobs)

    def __iter__(self) -> Iterator[str]:
        with _state.lock:
            return iter(list(dict.fromkeys(job["queue"] for job in _state.jobs)))

    def __len__(self) -> int:
        return sum(1 for _ in self)


queues: Final = _Queues()


def _select(name: str | None) -> list[Payload]:
    with _state.lock:
        return [job for job in _state.jobs if name is None or job["class"] == name]


def _take(name: str | None) -> Payload | None:
    with _state.lock:
        for index, job in enumerate(_state.jobs):
            if name is None or job["class"] == name:
                return _state.jobs.pop(index)
    return None


def _drain(job_class: type[Job]) -> int:
    count = 0
    while (job := _take(job_class.wire_name)) is not None:
        _run(job_class, job)
        count += 1
    return count


def _run(job_class: type[Job], job: Payload) -> Any:
    # Drained jobs keep `at` (Sidekiq: drain ignores it); the Config is only the
    # default one, since the testing chain replaces its server middleware.
    config = get_default()
    run = functools.partial(_inline, config, job_class, job)
    if "bid" in job:  # a batch member: its outcome fires the batch's callbacks
        return results.run_recorded(config, job, functools.partial(run_member, config, job, run))
    return results.run_recorded(config, job, run)


def _job_class(name: str) -> type[Job]:
    job_class = lookup(name)
    if job_class is None:
        raise UnknownJobError(
            f"no kiq Job is registered under {name!r}, so kiq.testing cannot run it. Import "
            f"the module that defines it, or, for a job another app runs (e.g. a Ruby "
            f"class), check MyJob.jobs / kiq.testing.queues in fake mode instead of running it."
        )
    return job_class


# -- per-class accessors (attached to Job and FunctionJob below) -----------------------


def _name(job_class: type[Job]) -> str | None:
    return None if job_class is Job else job_class.wire_name  # kiq.Job: every job


class _ClassJobs:
    """``MyJob.jobs``: the fake jobs of that class, oldest first (a copy)."""

    def __get__(self, instance: object, owner: type[Job]) -> list[Payload]:
        return _select(_name(owner))


def _clear(cls: type[Job]) -> None:
    """Forget this class's fake jobs (Sidekiq: ``MyJob.clear``)."""
    name = _name(cls)
    if name is None:
        clear_all()
        return
    with _state.lock:
        _state.jobs[:] = [job for job in _state.jobs if job["class"] != name]


def _drain_class(cls: type[Job]) -> int:
    """Run this class's fake jobs, and any it enqueues meanwhile, until none is left.

    Returns the number run; ``at`` is ignored, and a job's exception propagates.
    """
    return drain_all() if cls is Job else _drain(cls)


def _perform_one(cls: type[Job]) -> Any:
    """Run this class's oldest fake job and return what ``perform`` returned."""
    job = _take(_name(cls))
    if job is None:
        raise EmptyQueueError(
            f"{cls.wire_name}.perform_one(): no fake job of this class is queued; check "
            f"that fake mode is on (kiq.testing.fake() or the kiq_fake fixture) and that "
            f"the code under test enqueued one"
        )
    return _run(_job_class(job["class"]) if cls is Job else cls, job)


_JOB_MEMBERS: Final[Mapping[str, object]] = {
    "jobs": _ClassJobs(),
    "clear": classmethod(_clear),
    "drain": classmethod(_drain_class),
    "perform_one": classmethod(_perform_one),
}
_FUNCTION_JOB_MEMBERS: Final[Mapping[str, object]] = {
    "jobs": property(lambda self: _select(self.job_class.wire_name)),
    "clear": lambda self: _clear(self.job_class),
    "drain": lambda self: _drain(self.job_class),
    "perform_one": lambda self: _perform_one(self.job_class),
}
for _member, _value in _JOB_MEMBERS.items():
    setattr(Job, _member, _value)
for _member, _value in _FUNCTION_JOB_MEMBERS.items():
    setattr(FunctionJob, _member, _value)
