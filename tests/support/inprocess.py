"""A kiq process (Launcher) running inside the test process, for tests that look at
what happens in-process (spans, log records, handler calls, scrapes)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from kiq.config import Config
from kiq.launcher import Launcher

# Launcher.stop() joins the fetcher's threads for at most 1 s, but a waiter can sit in
# BLMOVE for up to 2 s; closing the Config under it (the ``config`` fixture's teardown)
# makes redis-py fail inside that thread. Waiting here keeps teardown clean.
WAITER_JOIN = 5.0


@contextmanager
def running(config: Config) -> Iterator[Launcher]:
    """Start a Launcher on ``config``; stop it and wait for its fetch threads after."""
    launcher = Launcher(config)
    launcher.start()
    try:
        yield launcher
    finally:
        launcher.stop()
        launcher.manager.waiters.join(WAITER_JOIN)
