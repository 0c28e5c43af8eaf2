"""Job progress: ``kiq|progress|<jid>``, written by a running job, read by the API and UI.

Why its own file: progress is kiq's own key, written from job code (``Job.progress``)
rather than by the engine, and read in one place (``read_progress``) by both
``kiq.job.read_progress`` and ``kiq.api.progress``. Sidekiq 7.3+'s iterable jobs keep
their progress in ``it-<jid>``; ``read_iterations`` reads it (read-only) next to kiq's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kiq.keys import PROGRESS_TTL
from kiq.store.connection import Connection


def _float(value: str | None) -> float:
    try:
        return float(value or "")
    except ValueError:
        return 0.0


class Progress(Connection):
    """The progress half of ``Store`` (see the module docstring)."""

    def write_progress(self, jid: str, fields: Mapping[str, str]) -> None:
        """HSET the job's progress hash and give it PROGRESS_TTL, in one MULTI."""
        key = self.keys.progress(jid)
        pipe = self._pipeline(transaction=True)
        pipe.hset(key, mapping=dict(fields))
        pipe.expire(key, PROGRESS_TTL)
        pipe.execute()

    def read_progress(self, jids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The last progress each job reported, by jid (jobs without any are left out).

        One pipelined HGETALL per job; each value has ``jid``, ``percent`` (0-100),
        ``message``, ``class`` and ``at`` (epoch seconds).
        """
        pipe = self._pipeline()
        for jid in jids:
            pipe.hgetall(self.keys.progress(jid))
        found: dict[str, dict[str, Any]] = {}
        for jid, raw in zip(jids, pipe.execute(), strict=True):
            if not raw:
                continue
            data = {k.decode(): v.decode(errors="replace") for k, v in raw.items()}
            found[jid] = {
                "jid": jid,
                "percent": _float(data.get("percent")),
                "message": data.get("message", ""),
                "class": data.get("class", ""),
                "at": _float(data.get("at")),
            }
        return found

    def read_iterations(self, jids: Sequence[str]) -> list[dict[bytes, bytes]]:
        """HGETALL ``it-<jid>`` of each job ({} for a job with no iteration state), pipelined."""
        pipe = self._pipeline()
        for jid in jids:
            pipe.hgetall(self.keys.iteration(jid))
        return list(pipe.execute())
