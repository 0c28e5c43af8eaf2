"""Supervisor: ``kiq worker --processes N`` forks N worker processes and keeps them up.

Tasks:
  1. fork a child per slot after the app is imported (one import, shared pages: Sidekiq
     Enterprise's swarm preload); each child runs its own Launcher with the same Config
     and an identity the supervisor chose (``KIQ_IDENTITY``, kiq.launcher.new_identity).
     A slot has a group of capsules (``Config.process_groups``): N slots run the shared
     capsules (the default one and every capsule without ``processes``), then each
     capsule with ``processes: k`` has k slots that run it alone (a GIL of its own).
  2. a child that died (crash, SIGKILL, OOM kill): recover its in-progress jobs at once,
     by its identity (kiq.recover.Recoverer.recover), instead of waiting ``process_ttl``
     for its heartbeat to expire (that bound stays, for a whole host lost); then start a
     new child for its slot (the same group) after a short pause, so a child that dies
     at boot does not spin a core.
  3. memory limit (``--max-memory-mb``, Sidekiq Enterprise's SIDEKIQ_MAXMEM_MB): a child
     whose RSS passes it is quieted once (TSTP: it takes no new job and puts back what
     it fetched ahead), then TERMed once it is idle; if its jobs still run ``timeout``
     (-t) seconds after the quiet, it is KILLed and its jobs are recovered as crashed,
     so a job that leaks memory reaches the dead set as a poison job (see
     ``_finish_memory_stops`` for why not TERM at once).
  4. signals: TERM/INT stop every child (each within its own ``timeout``; a child still
     there ``KILL_GRACE`` seconds later is KILLed and its jobs recovered), TSTP and TTIN
     are forwarded; the supervisor exits 0 when all children have exited.
  5. systemd (``Type=notify``): the supervisor is the unit's main process, so it is the
     one that notifies (systemd ignores other pids by default): READY=1 once every slot's
     child beats, WATCHDOG=1 and STATUS from its loop, STOPPING=1 at the stop. Children get no
     NOTIFY_SOCKET (a child's restart must not tell systemd the service is stopping).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from kiq import log as kiq_log
from kiq.config import Config
from kiq.launcher import new_identity, rss_kb
from kiq.recover import Recoverer
from kiq.sdnotify import Notifier
from kiq.store import TRANSIENT_ERRORS

log = logging.getLogger("kiq.supervisor")

RESTART_PAUSE: Final = 1.0  # seconds before replacing a child that died
CHECK_EVERY: Final = 0.5  # seconds between liveness / memory checks
KILL_GRACE: Final = 10.0  # seconds past its -t before a stopping child is KILLed
RECOVERY_RETRY: Final = 5.0  # seconds between tries to recover a child's jobs, Redis away
STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGTSTP, signal.SIGTTIN)
NOTIFY_VARIABLES: Final = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


@dataclass
class Child:
    """One worker process: its slot, the identity it beats as, the capsules it runs, its
    memory stop if any."""

    pid: int
    slot: int
    identity: str
    group: tuple[str, ...]
    quieted_at: float | None = None  # monotonic: TSTP sent for the memory limit
    stop_by: float | None = None  # monotonic: KILL it if it is still there then
    killed: bool = False


class Supervisor:
    """The parent of ``kiq worker --processes N``, or of a worker with a capsule that has
    processes of its own (see the module docstring).

    Example (what kiq.cli does)::

        supervisor = Supervisor(config, max_memory_mb=512, install_signals=install_signals)
        install_signals(supervisor)  # TERM, INT, TSTP, TTIN -> supervisor.signal(name)
        sys.exit(supervisor.run())  # 0 once every child has exited
    """

    def __init__(
        self,
        config: Config,
        max_memory_mb: float | None = None,
        *,
        install_signals: Callable[[Any], None],
    ) -> None:
        self.config = config
        self.max_memory_mb = max_memory_mb
        # The CLI's signal table, handed in so that this module never imports kiq.cli
        # (cli sits above supervisor in the layering, tests/test_layers.py).
        self.install_signals = install_signals
        self.children: dict[int, Child] = {}
        self.groups = config.process_groups()  # slot -> the capsules its child runs
        self.stopping = False
        self._pending: list[str] = []
        self._respawn: list[tuple[float, int]] = []  # (monotonic due, slot)
        self._unrecovered: set[str] = set()  # identities whose recovery met a Redis error
        self._retry_at = 0.0  # monotonic: when to try those again
        self._host = ""
        self.notifier = Notifier(env={})  # the real one is made in run()
        self._ready = False
        self._status = ""
        self._last_ping = 0.0

    def signal(self, name: str) -> None:
        """Called from the signal handler: remember it, act in the main loop."""
        self._pending.append(name)

    def run(self) -> int:
        # An inherited KIQ_IDENTITY would name every child alike: each gets its own.
        os.environ.pop("KIQ_IDENTITY", None)
        self._host = new_identity().rsplit(":", 2)[0]
        self.notifier = Notifier()
        for name in NOTIFY_VARIABLES:  # for this process only, not for its children
            os.environ.pop(name, None)
        if self.config.redis_url is None:
            _ = self.config.store.url  # start the embedded server once, before forking
        for slot in range(len(self.groups)):
            self._spawn(slot)
        log.info("supervising %d worker processes: %s", len(self.groups), self._layout())
        while self.children or (self._respawn and not self.stopping):
            self._handle_signals()
            self._reap()
            self._retry_recoveries()
            self._kill_overdue()
            if not self.stopping:
                self._start_due()
                self._check_memory()
                self._finish_memory_stops()
                self._notify()
            time.sleep(CHECK_EVERY)
        self._retry_at = 0.0
        self._retry_recoveries()  # a last try before exiting
        log.info("all worker processes exited")
        return 0

    def _layout(self) -> str:
        """``2 x default+mail, 1 x io``: how many processes run which capsules."""
        counts: dict[tuple[str, ...], int] = {}
        for group in self.groups:
            counts[group] = counts.get(group, 0) + 1
        return ", ".join(f"{n} x {'+'.join(group)}" for group, n in counts.items())

    # -- children ---------------------------------------------------------------------
    def _spawn(self, slot: int) -> None:
        self.config.close()  # the child opens its own connections
        group = self.groups[slot]
        nonce = os.urandom(6).hex()
        # Signals wait until the child's Launcher has its handlers: a TSTP for the
        # memory limit would otherwise stop (suspend) a child still booting.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        pid = os.fork()
        if pid == 0:  # child
            code = 0
            try:
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor sends TERM
                kiq_log.setup(self.config.log_format, self.config.verbose)
                from kiq.launcher import Launcher

                os.environ["KIQ_IDENTITY"] = f"{self._host}:{os.getpid()}:{nonce}"
                launcher = Launcher(self.config, capsules=group)
                del os.environ["KIQ_IDENTITY"]  # not for processes a job starts
                self.install_signals(launcher)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
                launcher.run()
            except BaseException:
                log.exception("worker process crashed")
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        self.children[pid] = Child(pid, slot, f"{self._host}:{pid}:{nonce}", group)

    def _start_due(self) -> None:
        now = time.monotonic()
        for due, slot in [item for item in self._respawn if item[0] <= now]:
            self._respawn.remove((due, slot))
            self._spawn(slot)

    def _send(self, child: Child, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, sig)

    def _handle_signals(self) -> None:
        while self._pending:
            name = self._pending.pop(0)
            if name in ("TERM", "INT") and not self.stopping:
                self.stopping = True
                self.notifier.stopping()
                self._respawn.clear()
                deadline = time.monotonic() + self.config.timeout + KILL_GRACE
                for child in self.children.values():
                    if child.stop_by is None:  # else TERMed (or KILLed) already: a
                        child.stop_by = deadline  # second TERM would force its stop
                        self._send(child, signal.SIGTERM)
                continue
            name = "TERM" if name == "INT" else name  # a second TERM forces every child
            for child in list(self.children.values()):
                self._send(child, getattr(signal, f"SIG{name}"))

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue
            self._recover(child.identity)
            if self.stopping:
                continue
            log.warning("worker process %d exited (status %d); starting a new one", pid, status)
            self._respawn.append((time.monotonic() + RESTART_PAUSE, child.slot))

    def _kill_overdue(self) -> None:
        now = time.monotonic()
        for child in self.children.values():
            if child.stop_by is not None and now >= child.stop_by and not child.killed:
                log.warning(
                    "worker %d still runs %.0f s after its stop began: killing it",
                    child.pid,
                    self.config.timeout + KILL_GRACE,
                )
                child.killed = True
                self._send(child, signal.SIGKILL)

    # -- systemd ----------------------------------------------------------------------
    def _notify(self) -> None:
        if not self.notifier.enabled:
            return
        status = f"{len(self.children)} of {len(self.groups)} worker processes"
        if not self._ready:
            if self._all_beating():
                self._ready = True
                self._status = status
                self.notifier.ready(status)
            return
        interval = self.notifier.watchdog_interval
        now = time.monotonic()
        if interval is not None and now - self._last_ping >= interval / 4:
            self._last_ping, self._status = now, status
            self.notifier.watchdog(status)
        elif status != self._status:
            self._status = status
            self.notifier.status(status)

    def _all_beating(self) -> bool:
        """True once every slot's child has written its heartbeat (it is processing)."""
        if len(self.children) < len(self.groups):
            return False
        identities = [child.identity for child in self.children.values()]
        try:
            return all(info for (info,) in self.config.store.process_fields(identities, ["info"]))
        except Exception:  # Redis away: not ready yet, ask again at the next check
            return False

    # -- recovery ---------------------------------------------------------------------
    def _recover(self, identity: str) -> None:
        """Requeue (or bury, past max_recoveries) what a dead child had in progress, and
        take it off the process list; on a Redis error, try again at the next check (the
        heartbeat's expiry and any process's sweep remain as the fallback)."""
        try:
            Recoverer(self.config, f"{self._host}:{os.getpid()}:supervisor").recover(identity)
            self._forget(identity)
        except TRANSIENT_ERRORS as exc:
            log.warning("could not recover the jobs of %s yet: %s", identity, exc)
            self._unrecovered.add(identity)
            return
        except Exception:  # a bug or a bad key: the sweep after process_ttl still runs
            log.exception("could not recover the jobs of %s; left to the sweep", identity)
        self._unrecovered.discard(identity)

    def _forget(self, identity: str) -> None:
        """Drop a dead child from ``processes`` with its heartbeat and busy hashes."""
        self.config.store.forget_process(identity)

    def _retry_recoveries(self) -> None:
        if not self._unrecovered or time.monotonic() < self._retry_at:
            return
        self._retry_at = time.monotonic() + RECOVERY_RETRY  # one warning per try, not per tick
        for identity in list(self._unrecovered):
            self._recover(identity)

    # -- memory limit -----------------------------------------------------------------
    def _check_memory(self) -> None:
        if self.max_memory_mb is None:
            return
        for child in self.children.values():
            if child.quieted_at is not None:
                continue  # one stop per limit hit
            rss = rss_kb(child.pid) / 1024
            if rss > self.max_memory_mb:
                log.warning(
                    "worker %d uses %.0f MB > %.0f MB: restarting it (quiet now; its running "
                    "jobs get -t %gs)",
                    child.pid,
                    rss,
                    self.max_memory_mb,
                    self.config.timeout,
                )
                child.quieted_at = time.monotonic()
                self._send(child, signal.SIGTSTP)

    def _finish_memory_stops(self) -> None:
        """TERM a quieted child once it is idle; KILL it if its jobs outlive -t.

        Not TERM at once: at its -t a TERMed child puts its running jobs back in their
        queues itself, as a deploy would, so a job that leaks memory was requeued
        unblamed and restarted forever (issue 12: 28 starts a minute). A quieted child
        ends no job early; its in-progress lists (which, once quiet, hold only running
        jobs) tell the supervisor when it is idle. A job still running -t after the
        limit hit ends with its process, as in an OOM kill: it stays in-progress, is
        recovered at once with ``kiq_recoveries`` + 1 and, past ``max_recoveries``,
        goes to the dead set. Its neighbours count one crash too, and then run apart
        from it (kiq.fetch isolates crash survivors), so they are not blamed again.
        """
        now = time.monotonic()
        for child in self.children.values():
            if child.quieted_at is None or child.stop_by is not None:
                continue
            running = self._in_progress(child)
            if running == 0:
                log.info("worker %d is idle: stopping it", child.pid)
                child.stop_by = now + self.config.timeout + KILL_GRACE
                self._send(child, signal.SIGTERM)
            elif now >= child.quieted_at + self.config.timeout:
                log.warning(
                    "worker %d still runs %s jobs %gs after it passed the memory limit: "
                    "killing it; they count as crashed (kiq_recoveries)",
                    child.pid,
                    "its" if running is None else running,
                    self.config.timeout,
                )
                child.stop_by, child.killed = now, True
                self._send(child, signal.SIGKILL)

    def _in_progress(self, child: Child) -> int | None:
        """How many jobs ``child`` holds in progress; None if Redis cannot say now."""
        caps = [cap for cap in self.config.all_capsules() if cap.name in child.group]
        names = list(dict.fromkeys(name for cap in caps for name, _ in cap.queues))
        try:
            return sum(self.config.store.in_progress_sizes(child.identity, names))
        except Exception:  # Redis away (or a key of the wrong type): busy, for all we know
            log.debug("cannot count the jobs of %s", child.identity, exc_info=True)
            return None
