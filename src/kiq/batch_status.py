"""``BatchStatus``: one batch read at once (Sidekiq Pro's ``Sidekiq::Batch::Status``).

Why its own module: the status is a read model shared by job code, the workflow layer,
``kiq.api`` and the Web UI, while kiq.batch holds the writes; it reads through the same
``Backend`` (Redis, or the test modes' memory), so a test in fake mode reads its batches
the way production code reads Redis.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from kiq.batch import EVENTS, backend
from kiq.config import Config, get_default


def _int(fields: Mapping[str, str], name: str) -> int:
    try:
        return int(fields.get(name) or 0)
    except ValueError:
        return 0


def _float(fields: Mapping[str, str], name: str) -> float | None:
    try:
        return float(fields[name])
    except (KeyError, ValueError):
        return None


class BatchStatus:
    """A snapshot of one batch (Sidekiq Pro's ``Sidekiq::Batch::Status``), read at once."""

    def __init__(
        self,
        bid: str,
        *,
        config: Config | None = None,
        data: tuple[dict[str, str], dict[str, int]] | bool | None = False,
    ) -> None:
        """Read ``bid`` now; ``data``: what ``Store.batch_read`` already returned for it
        (kiq.api reads a page of batches in one round trip)."""
        self.bid = bid
        self.config = config or get_default()
        found = backend().read(self.config, bid) if data is False else data
        if isinstance(found, bool):
            found = None
        self.exists = found is not None
        fields, sizes = found if found is not None else ({}, {})
        self._fields = fields
        self.description = fields.get("description", "")
        self.created_at = _float(fields, "created_at")
        self.parent_bid = fields.get("parent") or None
        self.total = _int(fields, "total")
        self.pending = _int(fields, "pending")
        self.failures = _int(fields, "failures")
        self.dead = _int(fields, "dead")
        self.child_count = _int(fields, "kids")
        self.kids_pending = _int(fields, "kids_pending")
        self.open_blocks = sizes.get("open", 0)
        self.invalidated = "invalidated" in fields
        self.fired = {e: at for e in EVENTS if (at := _float(fields, f"{e}_at")) is not None}
        self.callbacks = {
            e: _callback_class(fields[f"cb_{e}"]) for e in EVENTS if f"cb_{e}" in fields
        }
        self.workflow = fields.get("wf") or None

    @property
    def complete(self) -> bool:
        """Every job ran once and every child batch is complete (the event fired)."""
        return "complete" in self.fired

    @property
    def success(self) -> bool:
        return "success" in self.fired

    @property
    def death(self) -> bool:
        return "death" in self.fired

    @property
    def done(self) -> int:
        """Jobs that succeeded: ``total - pending``."""
        return self.total - self.pending

    @property
    def percent(self) -> float:
        return 100.0 if not self.total else round(100.0 * self.done / self.total, 1)

    def pending_jids(self) -> list[str]:
        return sorted(backend().members(self.config, self.bid, "jids"))

    def dead_jids(self) -> list[str]:
        return sorted(backend().members(self.config, self.bid, "died"))

    def child_bids(self) -> list[str]:
        return sorted(backend().members(self.config, self.bid, "kids"))

    def failure_info(self) -> list[dict[str, Any]]:
        """One entry per failing jid: ``jid``, ``error_class``, ``error_message``."""
        rows = []
        for jid, raw in sorted(backend().hash(self.config, self.bid, "failinfo").items()):
            try:
                info = json.loads(raw)
            except ValueError:
                info = {}
            rows.append({"jid": jid, **(info if isinstance(info, dict) else {})})
        return rows

    def results(self) -> dict[str, Any]:
        """jid -> the JSON result of each succeeded job (workflow steps only)."""
        out: dict[str, Any] = {}
        for jid, raw in backend().hash(self.config, self.bid, "results").items():
            try:
                out[jid] = json.loads(raw)
            except ValueError:
                continue
        return out

    def to_dict(self) -> dict[str, Any]:
        """What kiq.api and the Web UI show."""
        return {
            "bid": self.bid,
            "description": self.description,
            "created_at": self.created_at,
            "parent_bid": self.parent_bid,
            "total": self.total,
            "pending": self.pending,
            "failures": self.failures,
            "dead": self.dead,
            "children": self.child_count,
            "complete": self.complete,
            "success": self.success,
            "death": self.death,
            "invalidated": self.invalidated,
            "fired": dict(self.fired),
            "callbacks": dict(self.callbacks),
            "percent": self.percent,
            "workflow": self.workflow,
        }

    def __repr__(self) -> str:
        return (
            f"<BatchStatus {self.bid} total={self.total} pending={self.pending} "
            f"failures={self.failures} fired={sorted(self.fired)}>"
        )


def _callback_class(raw: str) -> str:
    try:
        data = json.loads(raw)
    except ValueError:
        return "?"
    return str(data.get("class", "?")) if isinstance(data, dict) else "?"
