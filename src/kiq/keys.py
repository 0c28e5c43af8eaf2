"""Every Redis key kiq reads or writes, in one place.

The names are Sidekiq's own (see shared/sidekiq-wire.md §1), so Sidekiq's
documentation doubles as this module's spec. ``Keys(prefix)`` prepends an optional
namespace to every key, for sharing Redis with a Sidekiq 6.x app that uses
``redis-namespace`` (``namespace: "myapp"`` there is ``prefix="myapp:"`` here).

Time units, documented once:
  * ZSET scores (``schedule``, ``retry``, ``dead``): epoch seconds as a float.
  * Payload timestamps (``created_at``, ``enqueued_at``, ``failed_at``...): epoch
    seconds as a float that always carries a decimal point (readable by Sidekiq
    6.4 through 8.x); integer epoch milliseconds are read too (Sidekiq 8 writes them).
  * Heartbeat ``beat``: float epoch seconds; ``rss`` KB; ``rtt_us`` microseconds.

Keys that only kiq uses start with ``kiq|`` so they never collide with Sidekiq's,
and are never in the ``queues`` set:
  * ``kiq|inprogress|<identity>|<queue>``: LIST, jobs a live process has taken from
    ``queue:<queue>`` and not yet acknowledged (Sidekiq Pro's super_fetch idea).
  * ``kiq|fetchers``: HASH identity -> JSON list of queue names, so a survivor can
    find the in-progress lists of a process whose heartbeat expired.
  * ``kiq|recover-lock``: STRING, one orphan sweep at a time cluster-wide.
  * ``kiq|paused``: SET of queue names kiq workers do not fetch from.
  * ``kiq|progress|<jid>``: HASH, progress reported by a running job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True, slots=True)
class Keys:
    """Key builders under an optional namespace prefix (``""`` = none, as Sidekiq 7+)."""

    prefix: str = ""

    # Sidekiq's own keys -------------------------------------------------------------
    @property
    def queues(self) -> str:
        return f"{self.prefix}queues"

    @property
    def schedule(self) -> str:
        return f"{self.prefix}schedule"

    @property
    def retry(self) -> str:
        return f"{self.prefix}retry"

    @property
    def dead(self) -> str:
        return f"{self.prefix}dead"

    @property
    def processes(self) -> str:
        return f"{self.prefix}processes"

    def queue(self, name: str) -> str:
        return f"{self.prefix}queue:{name}"

    def process(self, identity: str) -> str:
        return f"{self.prefix}{identity}"

    def work(self, identity: str) -> str:
        """Busy-jobs hash read by Sidekiq 6.5+/7/8."""
        return f"{self.prefix}{identity}:work"

    def workers(self, identity: str) -> str:
        """Busy-jobs hash read by Sidekiq 6.4 (written too, so a 6.4 UI shows our jobs)."""
        return f"{self.prefix}{identity}:workers"

    def signals(self, identity: str) -> str:
        return f"{self.prefix}{identity}-signals"

    def stat(self, kind: str) -> str:
        """``stat:processed`` or ``stat:failed``."""
        return f"{self.prefix}stat:{kind}"

    def stat_daily(self, kind: str, day: date) -> str:
        return f"{self.prefix}stat:{kind}:{day.isoformat()}"

    @property
    def leader(self) -> str:
        """Sidekiq Enterprise's leader identity; OSS readers only show it (Busy page star)."""
        return f"{self.prefix}dear-leader"

    # kiq's own keys -----------------------------------------------------------------
    def inprogress(self, identity: str, queue: str) -> str:
        return f"{self.prefix}kiq|inprogress|{identity}|{queue}"

    @property
    def fetchers(self) -> str:
        return f"{self.prefix}kiq|fetchers"

    @property
    def recover_lock(self) -> str:
        return f"{self.prefix}kiq|recover-lock"

    @property
    def paused(self) -> str:
        return f"{self.prefix}kiq|paused"

    def progress(self, jid: str) -> str:
        return f"{self.prefix}kiq|progress|{jid}"


STAT_TTL = 157_680_000  # 5 years in seconds, as Sidekiq's daily stat keys
PROCESS_TTL = 60  # seconds; Sidekiq readers treat a process whose hash expired as gone
SIGNAL_TTL = 60  # seconds; Sidekiq's API expires the signals list after a minute
