"""Manager: the pool of slots of one capsule of a kiq process, and its quiet -> stop sequence.

One Manager per capsule (kiq.capsule): each has its own Fetcher, QueueOrder, slots,
pending units, waiters and runners, so a capsule whose slots are all held by slow jobs
never delays another's fetches or acks. The launcher stops them together
(``stop_all``): one deadline for every capsule, one hard shutdown.

A job's path through the engine, top to bottom (docs/internals.md):
``Fetcher`` takes units from Redis and calls ``deliver`` (or a waiter of kiq.idle
calls ``run_here``); a Processor thread or the event loop runs the unit through the
``Executor``, which records the outcome and calls ``finished``, the one way back:
``Fetcher.ack`` frees the unit's slot and acknowledges it in Redis.

Tasks:
  1. start: ``concurrency`` Processor threads for ``def perform`` jobs, one event loop
     for ``async def perform`` jobs, the Fetcher that feeds both, and the Waiters.
  2. deliver: route each fetched unit to the loop or the thread inbox; after quiet,
     put it straight back in its queue instead. run_here: the idle fast path.
  3. processor_died: replace a Processor whose thread died, so no state leaks from a
     failed job into the next (Sidekiq: Manager#processor_result).
  4. quiet: stop fetching; units fetched ahead but not started go back to their queues.
  5. stop(deadline): wait for running jobs; at the deadline requeue what is still
     unfinished, then raise Shutdown into busy threads and cancel busy tasks
     (Sidekiq: Manager#hard_shutdown). Acks are flushed first, so a finished job is
     never requeued and an unfinished one never lost.

Example::

    manager = Manager(config, identity, state)
    manager.start()
    ...
    manager.stop(deadline=time.monotonic() + config.timeout)
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Final

from kiq import capsule as capsules
from kiq.aio import AsyncRunner
from kiq.capsule import Capsule
from kiq.config import Config
from kiq.errors import Shutdown
from kiq.fetch import TIMEOUT, Fetcher, UnitOfWork, by_queue
from kiq.idle import Waiters
from kiq.job import lookup, registered
from kiq.outage import Outage
from kiq.processor import Executor, Pool, Processor, State, interrupt
from kiq.supervise import Health

log = logging.getLogger(__name__)

# Seconds to wait for interrupted threads after the deadline. Sidekiq waits 3, which
# made TERM with -t 3 take 6.1 s (issue 12): the jobs are requeued before the interrupt,
# and a thread that has not ended within 1 s is stuck in C code, where waiting longer
# rarely helps. A stop takes about ``timeout`` + 1 s at most.
HARD_SHUTDOWN_WAIT: Final = 1.0
POLL: Final = 0.05  # seconds between checks while waiting for busy jobs at stop


class Manager:
    def __init__(
        self,
        config: Config,
        identity: str,
        state: State,
        outage: Outage,
        health: Health | None = None,
        capsule: Capsule | None = None,
    ) -> None:
        self.config = config
        self.identity = identity
        self.state = state
        self.health = health
        self.capsule = cap = capsule or config.all_capsules()[0]
        self.concurrency = cap.concurrency
        self.stopping = threading.Event()
        self.quieted = threading.Event()
        self.inbox: queue.SimpleQueue[UnitOfWork | None] = queue.SimpleQueue()
        # Slots: at most ``concurrency`` jobs run at once, thread and async jobs alike;
        # fetched-ahead units wait in ``_pending`` (still in Redis in-progress lists).
        self._slots = threading.Lock()
        self._pending: collections.deque[UnitOfWork] = collections.deque()
        self._running_count = 0
        # Where units go: an async capsule runs every unit on its loop (a sync job there
        # fails in Executor.instantiate), a named thread capsule on its threads, the
        # default capsule each by its kind (kiq as before capsules).
        self._route: bool | None = (
            None if cap.is_default and cap.mode == "thread" else (cap.mode == "async")
        )
        self.fetcher = Fetcher(config, identity, self, outage, health, cap)
        # An async capsule's waiters never run a job themselves (no idle fast path).
        self.waiters = Waiters(self.fetcher, runner=self if cap.mode == "thread" else None)
        # An async capsule's jobs all finish on its loop thread: their acks are handed
        # back once per loop iteration (one lock and one fetcher wakeup for the batch).
        pool: Pool = _LoopAcks(self) if self._route is True else self
        self.executor = Executor(config, state, pool, self.stopping, cap, self.quieted)
        self._prefix = "" if cap.is_default else f"{cap.name}."
        # A named thread capsule runs no coroutine: no loop thread for it. The default
        # capsule starts its loop at its first ``async def`` job (``_async_runner``): a
        # worker of thread jobs only never builds one (uvloop's import alone: 2.3 MB RSS).
        self.aio: AsyncRunner | None = None
        self._aio_lock = threading.Lock()
        if self._route is True:
            self.aio = AsyncRunner(self.executor, f"{self._prefix}asyncio")
        threads = self.concurrency if cap.mode == "thread" else 0
        self.processors = [self._processor(i) for i in range(threads)]

    def _processor(self, index: int) -> Processor:
        return Processor(index, self.executor, self.inbox, self._processor_died, self._prefix)

    def start(self) -> None:
        if self.aio is not None:
            self.aio.start(self.health)
        for processor in self.processors:
            processor.start(self.health)
        self.fetcher.start()
        self.waiters.start()

    def busy(self) -> int:
        with self.state.lock:
            return len(self.state.work)

    def deliver(self, units: list[UnitOfWork]) -> None:
        """The fetcher's hand-over (kiq.fetch.Hand): queue the units for a free slot."""
        if self.quieted.is_set():
            self._put_back(units)
            return
        with self._slots:
            self._pending.extend(units)
        self._dispatch()

    def room(self) -> int:
        """Free slots minus the units waiting for one (kiq.fetch.Hand: how many ahead
        units the next fetch call releases)."""
        with self._slots:
            return self.concurrency - self._running_count - len(self._pending)

    def run_here(self, unit: UnitOfWork) -> bool:
        """Run a sync job on the calling (waiter) thread if a slot is free now.

        kiq.idle's fast path (idle.Runner): no hop to a processor thread. False
        (nothing done) for an async or unknown job, with no free slot, or after quiet;
        the waiter then hands the unit to the fetcher, which delivers it as usual. Like
        a processor, a failure of kiq's own frees the slot and leaves the job
        in-progress (requeued at exit).
        """
        job_class = lookup(unit.payload["class"]) if unit.payload else None
        if job_class is None or job_class.is_async:
            return False
        with self._slots:  # quiet checked with the slot taken: stop() then waits for it
            if self.quieted.is_set() or self._pending or self._running_count >= self.concurrency:
                return False
            self._running_count += 1
        try:
            self.executor.run_sync(unit)
        except Shutdown:
            raise
        except BaseException:  # kiq's own bug: as Processor's watchdog, keep the process up
            log.exception("running a job on the waiter thread failed")
            self.abandon(unit)
        return True

    def finished(self, unit: UnitOfWork) -> None:
        """A job's outcome is recorded (kiq.processor.Pool): ack it, free its slot,
        start the next one. The one way back from every runner to Redis."""
        self.fetcher.ack(unit)
        self._free_slot()

    def requeue(self, unit: UnitOfWork) -> None:
        """An iterable job stopped early with its cursor saved (kiq.processor.Pool): move
        the same payload from in-progress back to the tail of its queue now, so it runs
        next (here, or elsewhere once quiet), and free its slot. On a Redis error it
        stays in-progress: requeued at exit, or recovered if this process dies."""
        try:
            self.config.store.requeue(self.identity, unit.queue, [unit.raw])
        except Exception:
            log.warning("could not put an interrupted iterable job back yet", exc_info=True)
        self.fetcher.release(unit)
        self._free_slot()

    def _free_slot(self) -> None:
        with self._slots:
            self._running_count -= 1
        self._dispatch()

    def finished_many(self, units: list[UnitOfWork]) -> None:
        """``finished`` for a batch (an async capsule's, from its loop thread)."""
        self.fetcher.ack_many(units)
        with self._slots:
            self._running_count -= len(units)
        self._dispatch()

    def _dispatch(self) -> None:
        with self._slots:
            ready: list[UnitOfWork] = []
            while self._pending and self._running_count < self.concurrency:
                ready.append(self._pending.popleft())
                self._running_count += 1
            starved = not self._pending and self._running_count < self.concurrency
        if starved:
            self.fetcher.nudge()  # units taken ahead may wait for a release
        if not ready:
            return
        aio = self.aio
        if self._route is True and aio is not None:
            aio.submit_many(ready)
            return
        coroutines: list[UnitOfWork] = []
        for unit in ready:
            if self._route is None:  # the default capsule: each unit by its kind
                job_class = lookup(unit.payload["class"]) if unit.payload else None
                if job_class is not None and job_class.is_async:
                    coroutines.append(unit)
                    continue
            self.inbox.put(unit)
        if coroutines:
            self._async_runner().submit_many(coroutines)  # one wakeup of the loop for all

    def _async_runner(self) -> AsyncRunner:
        """The default capsule's loop thread, built and started at its first async job."""
        with self._aio_lock:
            if self.aio is None:
                runner = AsyncRunner(self.executor, f"{self._prefix}asyncio")
                runner.start(self.health)
                self.aio = runner
            return self.aio

    def _put_back(self, units: list[UnitOfWork]) -> None:
        try:
            for name, raws in by_queue(units).items():
                self.config.store.requeue(self.identity, name, raws)
        except Exception:  # still in-progress in Redis: requeued at exit or recovered
            log.warning("could not put %d fetched jobs back yet", len(units), exc_info=True)
        for unit in units:
            self.fetcher.release(unit)

    def _processor_died(self, processor: Processor, exc: BaseException) -> None:
        if self.stopping.is_set():
            return
        unit = processor.current
        if unit is not None:
            self.abandon(unit)
        replacement = self._processor(processor.index)
        self.processors[processor.index] = replacement
        replacement.start(self.health)

    def abandon(self, unit: UnitOfWork) -> None:
        """Free the slot of a unit whose runner failed (kiq.processor.Pool); it stays
        in-progress in Redis (requeued at exit, or recovered if this process dies)."""
        self.fetcher.release(unit)
        self._free_slot()

    def quiet(self) -> None:
        """Stop fetching; put back what was fetched ahead but not started."""
        if self.quieted.is_set():
            return
        self.quieted.set()
        self.fetcher.stop()
        self.waiters.stop()
        with self._slots:
            pending: list[UnitOfWork] = list(self._pending)
            self._pending.clear()
        pending += self.fetcher.drain_ahead()  # taken ahead, newer than the pending ones
        while True:
            try:
                unit = self.inbox.get_nowait()
            except queue.Empty:
                break
            if unit is not None:
                pending.append(unit)
                with self._slots:
                    self._running_count -= 1  # dispatched but never started
        if pending:
            self._put_back(pending)

    def stop(self, deadline: float, forced: threading.Event | None = None) -> None:
        """Finish running jobs until ``deadline`` (monotonic) or ``forced``, then hard-shutdown."""
        stop_all([self], deadline, forced)

    def _wait_quiet(self, deadline: float, forced: threading.Event) -> None:
        # Wait on the slot count, not on the busy-jobs map: a slot is freed only after its
        # job's ack is written, so nothing finished can be requeued below (a finished
        # job's ack racing requeue_all ran it twice).
        while self._in_flight() and time.monotonic() < deadline and not forced.is_set():
            time.sleep(POLL)

    def _requeue_unfinished(self) -> int:
        """At the deadline: stop the fetch loops, write the acks, put everything still
        in-progress back in its queue, then interrupt what still runs. Returns how many
        units were still running (0: nothing to wait for)."""
        self.stopping.set()
        end = time.monotonic() + TIMEOUT + 1.0
        self.fetcher.join(TIMEOUT + 1.0)
        self.waiters.join(max(0.0, end - time.monotonic()))
        self.fetcher.flush_acks()
        busy = self._in_flight()
        moved = self.config.store.requeue_all(self.identity, self.fetcher.order.names)
        if busy:
            where = "" if self.capsule.is_default else f" in capsule {self.capsule.name}"
            log.warning(
                "timeout reached: %d jobs still running%s were put back in their queues",
                moved,
                where,
            )
            for processor in self.processors:
                if processor.current is not None:
                    processor.interrupt()
            for ident in self.waiters.running_here():
                interrupt(ident)
            if self.aio is not None:
                self.aio.cancel_all()
        return busy

    def _end(self) -> None:
        for _ in self.processors:
            self.inbox.put(None)
        if self.aio is not None:
            self.aio.stop()
        self.executor.reaper.stop()

    def _in_flight(self) -> int:
        """Jobs handed to a thread or the loop whose outcome is not yet acknowledged."""
        with self._slots:
            return self._running_count


class _LoopAcks:
    """The Pool of an async capsule's Executor: collects the units finished during one
    iteration of the event loop and hands them to ``Manager.finished_many`` at its end
    (``call_soon`` runs after the callbacks already due). Used on the loop thread only.
    Until the batch is handed back the slots count as running, so ``stop`` waits for it.
    """

    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self.units: list[UnitOfWork] = []

    def finished(self, unit: UnitOfWork) -> None:
        self.units.append(unit)
        if len(self.units) == 1:
            aio = self.manager.aio
            assert aio is not None  # an async capsule always has its loop
            aio.loop.call_soon(self._flush)

    def _flush(self) -> None:
        units, self.units = self.units, []
        self.manager.finished_many(units)

    def requeue(self, unit: UnitOfWork) -> None:
        """An interrupted iterable job goes back at once: not batched, it is rare."""
        self.manager.requeue(unit)

    def abandon(self, unit: UnitOfWork) -> None:
        """A unit kiq itself failed to run (AsyncRunner's guard): its slot, at once."""
        self.manager.abandon(unit)


def stop_all(
    managers: Sequence[Manager], deadline: float, forced: threading.Event | None = None
) -> None:
    """Stop every capsule with one deadline (Sidekiq: Launcher#stop over its capsules).

    All quiet first, so no capsule fetches while another drains; then each is waited
    for until the same ``deadline``; then each requeues what it still holds and
    interrupts it, and one HARD_SHUTDOWN_WAIT covers them all. A capsule owns its
    queues alone (kiq.capsule.check_all), so one capsule's requeue_all never takes a
    job another capsule is running.
    """
    forced = forced or threading.Event()
    for manager in managers:
        manager.quiet()
    for manager in managers:
        manager._wait_quiet(deadline, forced)
    busy = sum(manager._requeue_unfinished() for manager in managers)
    if busy:
        end = time.monotonic() + HARD_SHUTDOWN_WAIT
        # busy() counts the shared busy-jobs map: every capsule's running jobs at once
        while managers[0].busy() and time.monotonic() < end:
            time.sleep(POLL)
    for manager in managers:
        manager._end()


def check_kinds(config: Config) -> None:
    """At start-up: every registered job whose default queue a capsule of this process
    serves must be of that capsule's kind (ConfigError naming the job and the fix).

    kiq's own jobs (the ActiveJob wrapper, whose real queue is the Rails job's) are
    left out; a job pushed to another queue at run time fails alone (Executor).
    """
    jobs = {
        name: (str(cls.options.get("queue", "default")), cls.is_async)
        for name, cls in registered().items()
        if not cls.__module__.startswith("kiq.")
    }
    capsules.check_kinds(config.all_capsules(), jobs)
