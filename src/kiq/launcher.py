"""Launcher: one kiq process — heartbeat, poller, orphan sweeps, the Manager, signals.

Tasks:
  1. start: check the Redis version, fire ``startup``, write the first heartbeat,
     register this process's in-progress lists, sweep dead processes' jobs, log
     ``started``, then start the Manager, the Poller and the loops below, each a
     thread started through kiq.supervise.
  2. heartbeat (every ``heartbeat_interval``, 5 s): flush stats, write the process
     hash and busy-jobs hashes Sidekiq's API and Web UI read, take one remote signal
     from ``<identity>-signals``, refresh paused queues. Next to it, the recoverer
     sweeps orphans every ``orphan_check_interval`` and the metrics loop flushes the
     per-class metrics every beat: a failure of one never stops the others.
  2b. health: a part that cannot go on (kiq.supervise) stops the beats at once, then
     the process stops as on TERM and ``run`` raises PartDied (exit status non-zero).
  3. signals: TERM/INT stop, TSTP quiets, TTIN logs every thread's stack; they arrive
     from the OS (through the CLI) or remotely, and are handled on the main thread.
  4. stop: quiet, let running jobs finish until ``timeout``, requeue the rest, flush
     stats, remove this process from ``processes``; a second TERM forces it.
  5. systemd (``Type=notify``, kiq.sdnotify): READY=1 once started, WATCHDOG=1 and
     STATUS at each heartbeat, STOPPING=1 when the stop begins.
"""

from __future__ import annotations

import gc
import logging
import os
import queue
import socket
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

import orjson

from kiq import __version__, peers
from kiq import payload as wire
from kiq.capsule import Capsule
from kiq.config import Config
from kiq.errors import ConfigError, RedisUnavailable
from kiq.manager import Manager, check_kinds, stop_all
from kiq.metrics import install as install_metrics
from kiq.outage import Outage
from kiq.processor import State
from kiq.recover import Recoverer
from kiq.recurring import CronPoller
from kiq.scheduler import Poller
from kiq.sdnotify import Notifier
from kiq.store import TRANSIENT_ERRORS, is_transient
from kiq.supervise import Health, PartDied, spawn

log = logging.getLogger("kiq")

MIN_REDIS: Final = (6, 2)  # LMOVE/BLMOVE and RPOP count
BEAT_JOIN_TIMEOUT: Final = 10.0  # seconds to let a beat or sweep in flight finish at exit


GC_GEN0: Final = 20_000  # allocations between young collections in a worker process


def collect_less() -> None:
    """Raise the collector's first threshold (700) to GC_GEN0 in a worker process.

    An async capsule keeps ~1,000 jobs alive at once, each with its task, coroutines
    and futures: at 700 allocations per young collection those survive a few passes,
    are promoted and walked again and again. At 20,000 most die young (13 % fewer
    instructions per 50 ms job, measured under callgrind; no change for thread jobs,
    little memory: the garbage cycles of 20,000 allocations). A threshold the app has
    set (another number, or collection turned off) is left alone.
    """
    gen0, gen1, gen2 = gc.get_threshold()
    if gc.isenabled() and gen0 == 700:
        gc.set_threshold(GC_GEN0, gen1, gen2)


def new_identity() -> str:
    """``host:pid:nonce``, or KIQ_IDENTITY when set: kiq's supervisor names each child it
    starts, so that it can recover the child's jobs the moment it dies (kiq.supervisor)."""
    given = os.environ.get("KIQ_IDENTITY")
    if given:
        return given
    host = os.environ.get("DYNO") or socket.gethostname()
    return f"{host}:{os.getpid()}:{os.urandom(6).hex()}"


def rss_kb(pid: int | None = None) -> int:
    """Resident memory of a process (this one by default) in KB, from /proc; 0 elsewhere."""
    try:
        with open(f"/proc/{pid or os.getpid()}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Launcher:
    """One kiq process: ``Launcher(config).run()`` runs every capsule of ``config``.

    ``capsules`` names the ones this process runs instead (kiq.supervisor gives each
    child its group of ``config.process_groups()``: the shared capsules, or one capsule
    with processes of its own); its heartbeat then lists only those, with their slots::

        Launcher(config, capsules=("io",)).run()
    """

    def __init__(self, config: Config, capsules: Sequence[str] | None = None) -> None:
        self.config = config
        self.identity = new_identity()
        self.state = State()
        self.outage = Outage(config.store.safe_url)
        self.events: queue.Queue[str] = queue.Queue()
        self.health = Health(on_fail=lambda: self.events.put("DEAD"))
        check_kinds(config)  # a job of the wrong kind for its capsule: refuse to start
        self.capsules = _pick(config, capsules)
        self.concurrency = sum(cap.concurrency for cap in self.capsules)
        # One Manager per capsule (kiq.capsule); ``manager`` is the first one's (the
        # default capsule's, whenever it runs here).
        self.managers = [
            Manager(config, self.identity, self.state, self.outage, self.health, cap)
            for cap in self.capsules
        ]
        self.manager = self.managers[0]
        self.poller = Poller(config, self.outage)
        self.cron = CronPoller(config, self.outage)
        self.recoverer = Recoverer(config, self.identity)
        self.metrics = install_metrics(config)  # per-class metrics for the Web UI (issue 6)
        self.started_at = wire.now()
        self.quiet_flag = False
        self._beaten = False  # a beat was written (later beats that find no hash: resync)
        self.stopping = False
        self.forced = threading.Event()
        self._stop_beat = threading.Event()
        self._loops: list[threading.Thread] = []  # heartbeat, recoverer, metrics
        # Every capsule's queues: recovery finds each in-progress list by identity+queue.
        self._fetcher_queues = orjson.dumps(
            [name for m in self.managers for name in m.fetcher.order.names]
        )
        self._last_sweep = 0.0
        self._info = self._process_info()
        self.notifier = Notifier()

    def _process_info(self) -> bytes:
        """The heartbeat's ``info``: this process's capsules only, and their slots, so
        Sidekiq's Busy page shows each process of a split worker as it is."""
        c = self.config
        caps = self.capsules
        weights = [dict(cap.queues) for cap in caps]
        return orjson.dumps(
            {
                "hostname": self.identity.rsplit(":", 2)[0],
                "started_at": self.started_at,
                "pid": os.getpid(),
                "tag": c.tag or os.path.basename(os.getcwd()),
                "concurrency": self.concurrency,
                "queues": list(dict.fromkeys(q for cap in caps for q, _ in cap.queues)),
                "weights": weights,  # Sidekiq 7: one {queue: weight} per capsule
                "capsules": {  # Sidekiq 8.0.9+
                    cap.name: {
                        "concurrency": cap.concurrency,
                        "mode": _order_mode(w),
                        "weights": w,
                    }
                    for cap, w in zip(caps, weights, strict=True)
                },
                "labels": ["kiq", *c.labels],
                "identity": self.identity,
                "version": f"kiq {__version__}",
                "embedded": False,
            }
        )

    # -- start ------------------------------------------------------------------------
    def start(self) -> None:
        self._check_redis()
        self.config.fire("startup")
        self._first_beat()  # registers this process's in-progress lists for recovery
        self._sweep()
        self._last_sweep = time.monotonic()
        self.cron.load()
        first = self.capsules[0]  # the default capsule, whenever it runs here
        log.info(  # before the first job can start, so its line comes after this one
            "kiq %s started: %s, %sconcurrency %d, queues %s, Redis %s",
            __version__,
            self.identity,
            "" if first.is_default else f"capsule {first.name}, {first.mode}, ",
            first.concurrency,
            ",".join(f"{n}{',' + str(w) if w else ''}" for n, w in first.queues),
            self.config.store.safe_url,
        )
        for cap in self.capsules[1:]:
            log.info(
                "capsule %s: %s, concurrency %d, queues %s",
                cap.name,
                cap.mode,
                cap.concurrency,
                ",".join(f"{n}{',' + str(w) if w else ''}" for n, w in cap.queues),
            )
        for manager in self.managers:
            manager.start()
        self.poller.start(self.health)
        self.cron.start(self.health)
        stop, health = self._stop_beat, self.health
        # The heartbeat gives up after process_ttl of crash after crash: by then other
        # processes take this one for dead, so it had better exit and be restarted.
        give_up = float(self.config.process_ttl)
        self._loops = [
            spawn("heartbeat", self._heartbeat_loop, stop=stop, health=health, give_up=give_up),
            spawn("recoverer", self._recover_loop, stop=stop, health=health),
            spawn("metrics", self._metrics_loop, stop=stop, health=health),
        ]
        self._notify_ready()

    def _notify_ready(self) -> None:
        interval = self.notifier.watchdog_interval
        if interval is not None and interval < 2 * self.config.heartbeat_interval:
            log.warning(
                "systemd WatchdogSec=%gs is shorter than twice heartbeat_interval (%gs): a "
                "healthy kiq may be killed; set WatchdogSec=%g or more",
                interval,
                self.config.heartbeat_interval,
                4 * self.config.heartbeat_interval,
            )
        self.notifier.ready(self._status())

    def _status(self) -> str:
        with self.state.lock:
            busy = len(self.state.work)
        state = "quiet, " if self.quiet_flag else ""
        return f"{state}{busy} of {self.concurrency} busy"

    def _check_redis(self) -> None:
        store = self.config.store
        with store.translate_errors():
            info = store.info()
        version = tuple(int(p) for p in str(info.get("redis_version", "0.0")).split(".")[:2])
        if version < MIN_REDIS:
            raise ConfigError(
                f"Redis at {store.safe_url} is {info.get('redis_version')}; kiq needs 6.2 or "
                f"newer (7.0+ to share with Sidekiq 8)"
            )
        policy = info.get("maxmemory_policy", "noeviction")
        if policy != "noeviction":
            log.warning("Redis maxmemory-policy is %s: jobs may be evicted; use noeviction", policy)

    # -- heartbeat --------------------------------------------------------------------
    def _first_beat(self) -> None:
        """Beat until one beat is written, before anything is fetched.

        The beat registers this process's in-progress lists (``kiq|fetchers``); a job
        fetched before that is in a list no sweep knows, so a SIGKILL then would lose it
        (issue 12: a worker started in an out-of-memory window fetched, since RPOP is
        allowed while Redis is full, and its jobs were stranded). Bounded by
        ``redis_wait`` (at least one heartbeat interval), then the start fails.
        """
        wait = max(self.config.redis_wait, self.config.heartbeat_interval)
        deadline = time.monotonic() + wait
        delay = 0.1
        while not self.beat():
            if time.monotonic() >= deadline:
                raise RedisUnavailable(
                    f"could not write this process's first heartbeat to Redis at "
                    f"{self.config.store.safe_url} within {wait:g}s (the errors above say "
                    f"why); kiq takes no job before it is registered. Fix Redis, or raise "
                    f"redis_wait / --redis-wait"
                )
            time.sleep(delay)  # engine back-off between tries, not a test's wait
            delay = min(delay * 2, 2.0)

    def beat(self) -> bool:
        """Write one heartbeat; False when Redis refused it (a transient error, logged
        by Outage) or a part of this process is dead."""
        if not self.health.ok:
            return False  # a part of this process is dead: never look alive (kiq.supervise)
        processed, failed = self.state.take_counts()
        store = self.config.store
        sent = time.monotonic()
        try:
            store.flush_stats(processed, failed, datetime.now(UTC).date())
            with self.state.lock:
                work = {
                    tid: orjson.dumps({"queue": q, "payload": raw.decode(), "run_at": run_at})
                    for tid, (q, raw, run_at) in self.state.work.items()
                }
            rtt_us = store.rtt_us()
            for manager in self.managers:
                manager.fetcher.tune(rtt_us / 1_000_000)
            fields = {
                "info": self._info,
                "concurrency": self.concurrency,
                "busy": len(work),
                "beat": repr(wire.now()),
                "rtt_us": rtt_us,
                "quiet": "true" if self.quiet_flag else "false",
                "rss": rss_kb(),
            }
            # The in-progress registration is rewritten every beat, not once: a partition
            # longer than process_ttl lets another process sweep us and drop the entry,
            # and the jobs we fetch after it would be unrecoverable if we died.
            existed, signal, paused, cancelled = store.beat(
                self.identity,
                fields,
                work,
                self.config.process_ttl,
                self._fetcher_queues,
                watch=self.state.running_jids(),  # kiq.cancel: the running jobs' flags
            )
            if cancelled:
                self.state.cancel(cancelled)
            for manager in self.managers:
                manager.fetcher.order.paused = paused
            self.outage.ok(sent)
        except BaseException as exc:
            self.state.restore_counts(processed, failed)
            if not is_transient(exc):
                raise  # a bug: kiq.supervise logs it and restarts the heartbeat
            self.outage.error(exc)
            return False
        self._read_peers()
        if not existed and self._beaten:
            self._resync()
        self._beaten = True
        if not existed:
            self.config.fire("heartbeat")
        self.config.fire("beat")
        if signal:
            self.events.put(signal.decode())
        return True

    def _resync(self) -> None:
        """Our heartbeat hash had expired: a sweep may have requeued our jobs
        (``Fetcher.resync``). An error leaves them; they then just run twice."""
        try:
            for manager in self.managers:  # every capsule's fetched-ahead units
                manager.fetcher.resync()
        except TRANSIENT_ERRORS as exc:
            self.outage.error(exc)

    def _read_peers(self) -> None:
        """Re-read the live processes' versions: which formats kiq writes (kiq.peers).

        Its own round trips after the beat's, off the job path; an error keeps the last
        choice (the next beat reads again), so the beat itself still counts as done."""
        try:
            peers.refresh(self.config)
        except TRANSIENT_ERRORS as exc:
            self.outage.error(exc)

    def _heartbeat_loop(self) -> None:
        while not self._stop_beat.wait(self.config.heartbeat_interval):
            self.beat()
            if self.health.ok:
                # Even when Redis is away: the process is alive, and a restart would not
                # help. Not once a part is dead: then systemd may restart it at once.
                self.notifier.watchdog(self._status())

    def _recover_loop(self) -> None:
        """Sweep dead processes' jobs every ``orphan_check_interval`` (kiq.recover)."""
        wait = max(0.0, self.config.orphan_check_interval - (time.monotonic() - self._last_sweep))
        while not self._stop_beat.wait(wait):
            wait = self.config.orphan_check_interval
            self._last_sweep = time.monotonic()
            self._sweep()

    def _sweep(self) -> None:
        try:
            self.recoverer.sweep()
        except Exception as exc:
            if not is_transient(exc):
                raise  # a bug: kiq.supervise logs it and restarts the sweeps
            self.outage.error(exc)  # Redis away (or full): the next sweep tries again

    def _metrics_loop(self) -> None:
        """Flush the per-class metrics every beat; on an error they keep their counts."""
        while not self._stop_beat.wait(self.config.heartbeat_interval):
            try:
                self.metrics.flush(self.config)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self.outage.error(exc)

    # -- signals and stop -------------------------------------------------------------
    def signal(self, name: str) -> None:
        """Called from a signal handler or the heartbeat; handled on the main thread."""
        if name in ("TERM", "INT") and self.stopping:
            log.warning("second %s: forcing shutdown now", name)
            self.forced.set()
            return
        self.events.put(name)

    def run(self) -> None:
        """Start, then handle signals until told to stop (the CLI's main loop).

        Raises PartDied (the CLI exits non-zero) once it has stopped because a part of
        the process could not go on (kiq.supervise).
        """
        collect_less()
        self.start()
        while True:
            try:
                name = self.events.get(timeout=1.0)
            except queue.Empty:
                continue
            if name in ("TERM", "INT"):
                self.stop()
                return
            if name == "DEAD":
                self.stop()
                raise PartDied(
                    f"stopped because kiq.{self.health.reason}; it must be restarted "
                    f"(kiq --processes, systemd or Kubernetes do so)"
                )
            if name == "TSTP":
                self.quiet()
            elif name == "TTIN":
                self.dump_threads()

    def quiet(self) -> None:
        if self.quiet_flag:
            return
        log.info("quieting: no new jobs will be taken")
        self.quiet_flag = True
        for manager in self.managers:
            manager.quiet()
        self.poller.stop()
        self.cron.stop()
        self.config.fire("quiet")
        self.beat()

    def stop(self) -> None:
        self.stopping = True
        self.notifier.stopping()
        log.info("shutting down (timeout %ss)", self.config.timeout)
        self.quiet()
        stop_all(self.managers, time.monotonic() + self.config.timeout, self.forced)
        self.config.fire("shutdown")
        self._stop_beat.set()
        end = time.monotonic() + BEAT_JOIN_TIMEOUT
        for thread in self._loops:
            # A beat in flight would SADD us back to `processes` after clear_process.
            thread.join(max(0.0, end - time.monotonic()))
        processed, failed = self.state.take_counts()
        store = self.config.store
        try:
            self.metrics.flush(self.config)
            store.flush_stats(processed, failed, datetime.now(UTC).date())
            store.clear_process(self.identity)
            store.unregister_fetcher(self.identity)
        except TRANSIENT_ERRORS as exc:
            log.warning("could not clear the heartbeat at exit: %s", exc)
        self.config.fire("exit")
        log.info("bye")

    def dump_threads(self) -> None:
        frames = sys._current_frames()
        for thread in threading.enumerate():
            frame = frames.get(thread.ident or -1)
            stack = "".join(traceback.format_stack(frame)) if frame else "(no frame)"
            log.warning("thread %s\n%s", thread.name, stack)


def _pick(config: Config, names: Sequence[str] | None) -> list[Capsule]:
    """The capsules named (every one of ``config`` for None), in the config's order."""
    caps = config.all_capsules()
    if names is None:
        return caps
    known = {cap.name for cap in caps}
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise ConfigError(
            f"Launcher(capsules={list(names)!r}): name at least one capsule, each of "
            f"{sorted(known)}"
        )
    return [cap for cap in caps if cap.name in names]


def _order_mode(weights: dict[str, int]) -> str:
    """Sidekiq's Capsule#queues=: all weights 0 strict, all 1 random, otherwise weighted."""
    if all(w == 0 for w in weights.values()):
        return "strict"
    if all(w == 1 for w in weights.values()):
        return "random"
    return "weighted"
