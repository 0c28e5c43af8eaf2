"""Poller: move due jobs from the ``retry`` and ``schedule`` sets into their queues.

Sidekiq's algorithm, so Ruby and Python pollers can share one Redis safely
(shared/sidekiq-wire.md §5):
  1. read the first member with score <= now, prepare it through the normal client
     (``enqueued_at`` set, client middleware run; nothing written), then remove it and
     push it in one Lua step (``Store.move_due``: only the poller whose removal succeeds
     pushes, and a crash cannot lose it); repeat until nothing is due; ``retry`` before
     ``schedule``. The same policy as the cron poller (``kiq.recurring``).
  2. sleep a random interval averaging ``process_count * average_scheduled_poll_interval``
     (5 s), so the whole cluster polls about every 5 s: uniform in [A/2, 3A/2] under 10
     processes, [0, A] from 10 up; ``poll_interval_average`` fixes A.
  3. wait ``10 + 5 * rand`` seconds before the first poll (heartbeats register first).

On a Redis Cluster each tick also sweeps the batch outboxes (``Store.batch_sweep``,
kiq.store.cluster_batches): a batch push whose writer died between its two steps, in a
batch nobody touches again, is delivered once its stamp is ``batch_sweep_grace`` old.
One Redis has no outbox: the call does nothing there.
"""

from __future__ import annotations

import logging
import random
import threading
from typing import Final

from kiq import payload as wire
from kiq.client import Client
from kiq.config import Config
from kiq.errors import PayloadError
from kiq.outage import Outage
from kiq.retry import RetryHandler
from kiq.store import TRANSIENT_ERRORS, is_transient, is_wrong_type
from kiq.supervise import Health, spawn

log = logging.getLogger(__name__)

INITIAL_WAIT: Final = 10.0  # seconds, plus up to 5 random (Sidekiq)


class Poller:
    def __init__(self, config: Config, outage: Outage, rng: random.Random | None = None) -> None:
        self.config = config
        self.client = Client(config)
        self.retry = RetryHandler(config)
        self.outage = outage
        self.rng = rng or random.Random()
        self._stop = threading.Event()

    def start(self, health: Health | None = None) -> None:
        spawn("poller", self._run, stop=self._stop, health=health)

    def stop(self) -> None:
        self._stop.set()

    def enqueue_due(self, now: float | None = None) -> int:
        """Push every job due by ``now``; return how many were pushed."""
        store = self.config.store
        pushed = 0
        for key in store.due_sets():
            while not self._stop.is_set():
                raw = store.first_due(key, wire.now() if now is None else now)
                if raw is None:
                    break
                try:
                    job = self.client.prepare(wire.loads(raw))
                except TRANSIENT_ERRORS:
                    raise  # Redis is away: the loop backs off; the job stays in `key`
                except PayloadError as exc:
                    # Refused at the door (kiq.payload): dead with the reason as its error
                    # (kiq.PayloadError), as a worker's fetch buries it, so the dead set
                    # says why (issue 12; found by bench/chaos.py). Then removed, below.
                    self.retry.bury(raw, key, exc)
                    job = None
                except Exception as exc:
                    # A job that cannot be pushed (not JSON, a bad field, a client
                    # middleware raising) would block the set: keep it where the UI shows
                    # it. Dead first, then removed, so a crash in between loses nothing.
                    log.error("job in %s that cannot be pushed sent to the dead set: %s", key, exc)
                    store.add_dead(
                        raw, wire.now(), self.config.dead_max_jobs, self.config.dead_timeout
                    )
                    job = None
                # Removal and push in one step: a process killed between a pop and a push
                # loses the job (Sidekiq OSS does; found by bench/chaos.py, issue 4).
                try:
                    moved = store.move_due(key, raw, job)
                except Exception as exc:
                    if not is_wrong_type(exc):
                        raise
                    # Its queue key holds another type: nothing was written. Dead first,
                    # then removed (as above), so the set behind it keeps moving.
                    log.error("job in %s whose queue is no list sent to the dead set: %s", key, exc)
                    store.add_dead(
                        raw, wire.now(), self.config.dead_max_jobs, self.config.dead_timeout
                    )
                    store.move_due(key, raw, None)
                    continue
                if moved:
                    pushed += 1
        return pushed

    def interval(self, process_count: int) -> float:
        average = self.config.poll_interval_average
        if average is None:
            average = max(process_count, 1) * self.config.average_scheduled_poll_interval
        if process_count < 10:
            return average * self.rng.random() + average / 2
        return average * self.rng.random()

    def initial_wait(self) -> float:
        if self.config.poll_initial_wait is not None:
            return self.config.poll_initial_wait
        jitter = 5 * self.rng.random()
        return jitter if self.config.poll_interval_average is not None else INITIAL_WAIT + jitter

    def _run(self) -> None:
        if self._stop.wait(self.initial_wait()):
            return
        while not self._stop.is_set():
            try:
                self.enqueue_due()
                self.config.store.batch_sweep(wire.now(), self.config.batch_sweep_grace)
                count = self.config.store.process_count()
            except Exception as exc:
                if not is_transient(exc):
                    raise  # a bug: kiq.supervise logs it once and restarts the poller
                self.outage.error(exc)
                count = 1
            self._stop.wait(self.interval(count))
