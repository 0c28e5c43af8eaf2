"""Queue order: which queues a fetch asks, in which order, and the ones left out.

Sidekiq's two orders: strict (every weight 0: always the given order) or weighted
(each queue ``weight`` times, shuffled, first occurrences kept), minus the paused queues
and, for ``SKIP_BROKEN`` seconds, a queue whose key holds another type (WRONGTYPE,
issue 12), reported at most once per ``REPORT_BROKEN`` seconds. Used by kiq.fetch (each
fetch call) and kiq.idle (which queues the waiters watch); split out of kiq.fetch to
keep that file about fetching.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from typing import Final

from kiq.config import Queue

log = logging.getLogger("kiq.fetch")  # the name its lines always had

SKIP_BROKEN: Final = 10.0  # seconds a queue whose key has the wrong type is left out
REPORT_BROKEN: Final = 60.0  # seconds between two error lines about the same broken queue


class QueueOrder:
    """Sidekiq's queue ordering: strict when no weights are given, else weighted-random."""

    def __init__(self, queues: Sequence[Queue], rng: random.Random | None = None) -> None:
        self.strict = all(weight == 0 for _, weight in queues)
        self._expanded = [name for name, weight in queues for _ in range(max(weight, 1))]
        self.names = list(dict.fromkeys(name for name, _ in queues))
        self._rng = rng or random.Random()
        self.paused: frozenset[str] = frozenset()
        self.broken: dict[str, float] = {}  # queue -> monotonic time to try it again
        self._reported: dict[str, float] = {}  # queue -> when its error was last logged

    def next(self) -> list[str]:
        if self.strict:
            names = self.names
        else:
            expanded = self._expanded[:]
            self._rng.shuffle(expanded)
            names = list(dict.fromkeys(expanded))
        if self.broken:
            self._mend()
            return [n for n in names if n not in self.paused and n not in self.broken]
        if self.paused:
            return [n for n in names if n not in self.paused]
        return names

    def skipped(self, queue: str) -> bool:
        """True while ``queue`` is paused or left out for a key of the wrong type."""
        if queue in self.broken:
            self._mend()
        return queue in self.paused or queue in self.broken

    def _mend(self) -> None:
        now = time.monotonic()
        for name, until in list(self.broken.items()):
            if now >= until:
                self.broken.pop(name, None)

    def break_queue(self, queue: str, error: str) -> None:
        """Leave ``queue`` out for SKIP_BROKEN seconds: one of its keys has another type.

        A WRONGTYPE is a bad key, not an outage: the other queues keep flowing, and the
        error is logged loudly, at most once per REPORT_BROKEN seconds (issue 12).
        """
        now = time.monotonic()
        self.broken[queue] = now + SKIP_BROKEN
        if now - self._reported.get(queue, -REPORT_BROKEN) < REPORT_BROKEN:
            return
        self._reported[queue] = now
        log.error(
            "queue %r is skipped: a key of it is not a list (%s). Jobs in the other queues "
            "still run; kiq tries %r again every %.0f s. Fix: see what the key holds with "
            "`redis-cli TYPE <key>`, then RENAME it aside (or DEL it) if it is not a kiq queue",
            queue,
            error,
            queue,
            SKIP_BROKEN,
        )
