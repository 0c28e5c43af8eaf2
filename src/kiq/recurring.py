"""Recurring jobs: the cron poller, enqueueing each tick exactly once across processes.

The Redis layout is sidekiq-cron 1.x's (the version Debian ships next to Sidekiq 6.4),
so the Ruby gem's Web tab lists kiq's recurring jobs and a Ruby and a Python poller can
share the work (shared/sidekiq-wire.md §11):

  * ``cron_jobs``                   SET of ``cron_job:<name>`` keys
  * ``cron_job:<name>``             HASH: name, klass, cron, description, args (JSON),
                                    message (JSON), status, last_enqueue_time, ...
  * ``cron_job:<name>:enqueued``    ZSET: one member per fired tick (the claim)
  * ``cron_job:<name>:jid_history`` LIST of ``{"jid", "enqueued"}``

Exactly once: every process computes the same latest tick for a job and claims it in
the ``enqueued`` set; only the process whose claim added the member enqueues. Claim and
push are one Lua step (``Store.cron_fire``), so a crash or a Redis error between them
can neither lose the tick nor push it twice. The set outlives restarts, so a restarted
process never fires a tick twice. (A sidekiq-cron poller sharing the Redis claims with
its own ZADD, then pushes: the same member, so the two still fire each tick once.)

One atomicity policy for both pollers (this one and ``kiq.scheduler``): the job is
prepared first (normalised, client middleware run, encoded: no Redis write), then the
decision (claim, or removal from ``schedule``/``retry``) and the push are one script,
which checks every key it writes before its first write.

Missed ticks (policy): only the latest tick is considered, and only while it is less
than ``cron_grace`` seconds (60, as sidekiq-cron) old. A tick missed while every
process was down is enqueued once when one comes back within the grace period, and
skipped otherwise — a recurring job never fires a burst of catch-up runs.

Example::

    kiq.get_default().cron_jobs.append(
        kiq.cron.CronJob(name="cleanup", klass="app.jobs.CleanupOldDataJob", cron="0 2 * * *")
    )
    for entry in kiq.crontab.CronSet():
        print(entry.name, entry.last_enqueue_time, entry.next_time)
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from kiq import cron
from kiq.config import Config
from kiq.crontab import CronEntry, CronSet, enqueue, load_all, save
from kiq.outage import Outage
from kiq.store import is_transient, is_wrong_type
from kiq.supervise import Health, spawn

__all__ = ["CronEntry", "CronPoller", "CronSet", "enqueue", "load_all", "save"]

log = logging.getLogger(__name__)


class CronPoller:
    """Fire due recurring jobs; one per process, all processes share the claims."""

    def __init__(self, config: Config, outage: Outage) -> None:
        self.config = config
        self.outage = outage
        self._stop = threading.Event()

    def load(self) -> int:
        """Save the schedule file's and the code's jobs to Redis; return how many."""
        jobs = list(self.config.cron_jobs)
        path = self.config.schedule_file or cron.find_default()
        if path is not None:
            jobs += cron.load(path)
        for job in jobs:
            save(self.config, job)
        if jobs:
            log.info("recurring jobs: %s", ", ".join(j.name for j in jobs))
        return len(jobs)

    def start(self, health: Health | None = None) -> None:
        spawn("cron", self._run, stop=self._stop, health=health)

    def stop(self) -> None:
        self._stop.set()

    def tick(self, now: datetime | None = None) -> int:
        """Enqueue every job whose latest tick is due and unclaimed; return how many."""
        now = now or datetime.now(UTC)
        fired = 0
        for entry in load_all(self.config):
            if not entry.enabled:
                continue
            last = entry.job.previous_tick(now)
            if (now - last).total_seconds() > self.config.cron_grace:
                continue
            if entry.last_enqueue_time is not None and entry.last_enqueue_time >= last:
                continue
            try:
                if enqueue(self.config, entry.job, now, tick=last) is not None:
                    fired += 1  # None: another process (kiq or sidekiq-cron) fired it
            except Exception as exc:
                if not is_wrong_type(exc):
                    raise
                # A key of this job (its queue, its claims) holds another type: nothing
                # was written, so the tick fires once the key is fixed; the others go on.
                log.error("recurring job %s: not enqueued: %s", entry.name, exc)
        return fired

    def _run(self) -> None:
        while not self._stop.wait(self.config.cron_poll_interval):
            try:
                self.tick()  # no outage.ok(): a tick that wrote nothing proves no recovery
            except Exception as exc:
                if not is_transient(exc):
                    raise  # a bug: kiq.supervise logs it once and restarts the cron loop
                self.outage.error(exc)
