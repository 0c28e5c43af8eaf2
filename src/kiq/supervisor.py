"""Supervisor: ``kiq worker --processes N`` forks N worker processes and keeps them up.

Tasks:
  1. fork N children after the app is imported (one import, shared pages: Sidekiq
     Enterprise's swarm preload); each child runs its own Launcher with the same Config.
  2. restart a child that died (crash, OOM kill), with a short pause so a child that
     dies at boot does not spin a core.
  3. memory limit: a child whose RSS passes ``max_memory_mb`` gets TERM (it finishes
     or requeues its jobs) and is replaced (Sidekiq Enterprise: SIDEKIQ_MAXMEM_MB).
  4. signals: TERM/INT stop every child (each within its own ``timeout``), TSTP and
     TTIN are forwarded; the supervisor exits 0 when all children have exited.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any, Final

from kiq import log as kiq_log
from kiq.config import Config
from kiq.launcher import rss_kb

log = logging.getLogger("kiq.supervisor")

RESTART_PAUSE: Final = 1.0  # seconds before replacing a child that died
CHECK_EVERY: Final = 0.5  # seconds between liveness / memory checks


class Supervisor:
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
        self.children: dict[int, int] = {}  # pid -> slot
        self.stopping = False
        self._pending: list[str] = []

    def signal(self, name: str) -> None:
        """Called from the signal handler: remember it, act in the main loop."""
        self._pending.append(name)

    def run(self) -> int:
        if self.config.redis_url is None:
            _ = self.config.store.url  # start the embedded server once, before forking
            self.config.close()
        for slot in range(self.config.processes):
            self._spawn(slot)
        log.info("supervising %d worker processes", self.config.processes)
        while self.children:
            self._handle_signals()
            self._reap()
            if not self.stopping:
                self._check_memory()
            time.sleep(CHECK_EVERY)
        log.info("all worker processes exited")
        return 0

    def _spawn(self, slot: int) -> None:
        pid = os.fork()
        if pid == 0:  # child
            code = 0
            try:
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor sends TERM
                kiq_log.setup(self.config.log_format, self.config.verbose)
                from kiq.launcher import Launcher

                launcher = Launcher(self.config)
                self.install_signals(launcher)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                launcher.run()
            except BaseException:
                log.exception("worker process crashed")
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        self.children[pid] = slot

    def _handle_signals(self) -> None:
        while self._pending:
            name = self._pending.pop(0)
            if name in ("TERM", "INT"):
                self.stopping = True
                name = "TERM"
            for pid in list(self.children):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, getattr(signal, f"SIG{name}"))

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            slot = self.children.pop(pid, None)
            if slot is None or self.stopping:
                continue
            log.warning("worker process %d exited (status %d); starting a new one", pid, status)
            time.sleep(RESTART_PAUSE)
            self._spawn(slot)

    def _check_memory(self) -> None:
        if self.max_memory_mb is None:
            return
        for pid in list(self.children):
            rss = rss_kb(pid) / 1024
            if rss > self.max_memory_mb:
                log.warning(
                    "worker %d uses %.0f MB > %.0f MB: restarting it", pid, rss, self.max_memory_mb
                )
                os.kill(pid, signal.SIGTERM)
