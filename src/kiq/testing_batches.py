"""Batches and workflows in kiq.testing's fake and inline modes: the state in memory.

The rules are batch_update.lua's, written again in Python over dicts (a test mode
never touches Redis): a member counts once, ``complete`` when pending == failures,
``success`` when nothing is pending, ``death`` on a job's death, none while a
``jobs()`` block is open or once invalidated, children counted in their parent. A
fired callback is pushed through the test mode's own push, so in fake mode it waits in
the fake queue and ``drain`` runs it; in inline mode it runs at once. A job run by
``drain`` or inline mode that raises is recorded as dead: test modes do not retry.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kiq import batch
from kiq import payload as wire
from kiq.config import Config
from kiq.errors import BatchError
from kiq.payload import Payload

Push = Callable[[list[Payload], Config], bool]


@dataclass
class _Batch:
    fields: dict[str, str]
    parts: dict[str, set[str]] = field(
        default_factory=lambda: {"jids": set(), "died": set(), "kids": set(), "open": set()}
    )
    hashes: dict[str, dict[str, str]] = field(
        default_factory=lambda: {"failinfo": {}, "results": {}}
    )

    def num(self, name: str) -> int:
        return int(self.fields.get(name) or 0)

    def add(self, name: str, delta: int) -> None:
        self.fields[name] = str(self.num(name) + delta)


class MemoryBackend:
    """kiq.batch's Backend over dicts, for fake and inline mode."""

    def __init__(self, push: Push) -> None:
        self._push = push
        self._lock = threading.RLock()
        self.batches: dict[str, _Batch] = {}
        self.workflows: dict[str, dict[str, str]] = {}

    def clear(self) -> None:
        with self._lock:
            self.batches.clear()
            self.workflows.clear()

    # -- writes ------------------------------------------------------------------------
    def open(
        self, config: Config, bid: str, token: str, parent: str, fields: Mapping[str, str]
    ) -> bool:
        with self._lock:
            found = self.batches.get(bid)
            if found is not None and "invalidated" in found.fields:
                raise BatchError(f"batch {bid} was invalidated: it takes no jobs")
            created = found is None
            if found is None:
                if not fields:
                    raise BatchError(f"batch {bid} does not exist (expired?)")
                if parent and parent not in self.batches:
                    raise BatchError(f"parent batch {parent} does not exist (expired?)")
                found = self.batches[bid] = _Batch(self._new_fields(parent, fields))
                if parent and bid not in self.batches[parent].parts["kids"]:
                    self.batches[parent].parts["kids"].add(bid)
                    for name in ("kids", "kids_pending", "kids_open"):
                        self.batches[parent].add(name, 1)
            found.parts["open"].add(token)
            return created

    @staticmethod
    def _new_fields(parent: str, fields: Mapping[str, str]) -> dict[str, str]:
        base = dict.fromkeys(("total", "pending", "failures", "dead"), "0")
        base |= dict.fromkeys(("kids", "kids_pending", "kids_open"), "0")
        return {"created_at": repr(wire.now()), **base, "parent": parent, **fields}

    def register(self, payload: Payload) -> None:
        """A push in a test mode: make the job a member of its batch (``bid``)."""
        bid = str(payload["bid"])
        with self._lock:
            found = self.batches.get(bid)
            if found is None:
                raise BatchError(f"batch {bid} does not exist (expired, or never opened)")
            if "invalidated" in found.fields:
                raise BatchError(f"batch {bid} was invalidated: it takes no jobs")
            jid = str(payload["jid"])
            if jid not in found.parts["jids"]:
                found.parts["jids"].add(jid)
                found.add("total", 1)
                found.add("pending", 1)

    def launch(
        self, config: Config, bid: str, fields: Mapping[str, str], jobs: list[Payload]
    ) -> bool:
        with self._lock:
            if bid in self.batches:
                return False
            self.batches[bid] = _Batch(self._new_fields("", fields))
        self._push(jobs, config)  # registers each job through the test hook
        return True

    def update(self, config: Config, bid: str, op: str, member: str, info: str) -> list[str]:
        fired: list[str] = []
        with self._lock:
            found = self.batches.get(bid)
            if found is None:
                return []
            jids = found.parts["jids"]
            if op == "success" and member in jids:
                jids.discard(member)
                found.add("pending", -1)
                if found.hashes["failinfo"].pop(member, None) is not None:
                    found.add("failures", -1)
                if info and "keep_results" in found.fields:
                    found.hashes["results"][member] = info
            elif op in ("failure", "death") and member in jids:
                if member not in found.hashes["failinfo"]:
                    found.add("failures", 1)
                found.hashes["failinfo"][member] = info
                if op == "death" and member not in found.parts["died"]:
                    found.parts["died"].add(member)
                    found.add("dead", 1)
                    self._died(bid, fired)
            elif op == "close":
                found.parts["open"].discard(member)
            self._check(bid, fired)
            callbacks = [self._callback(event) for event in fired]
        pushes = [payload for payload in callbacks if payload is not None]
        if pushes:
            self._push(pushes, config)
        return fired

    def _fire(self, bid: str, event: str, fired: list[str]) -> bool:
        found = self.batches[bid]
        if f"{event}_at" in found.fields:
            return False
        found.fields[f"{event}_at"] = repr(wire.now())
        fired.append(f"{bid}:{event}")
        return True

    def _check(self, bid: str, fired: list[str]) -> None:
        while bid:
            found = self.batches.get(bid)
            if found is None or "invalidated" in found.fields or found.parts["open"]:
                return
            pending, failures = found.num("pending"), found.num("failures")
            done = pending == failures and found.num("kids_open") <= 0
            done = done and self._fire(bid, "complete", fired)
            won = pending == 0 and found.num("kids_pending") <= 0
            won = won and self._fire(bid, "success", fired)
            parent = found.fields.get("parent", "")
            if not (done or won) or parent not in self.batches:
                return
            if done:
                self.batches[parent].add("kids_open", -1)
            if won:
                self.batches[parent].add("kids_pending", -1)
            bid = parent

    def _died(self, bid: str, fired: list[str]) -> None:
        while bid:
            found = self.batches.get(bid)
            if (
                found is None
                or "invalidated" in found.fields
                or not self._fire(bid, "death", fired)
            ):
                return
            bid = found.fields.get("parent", "")

    def _callback(self, fired: str) -> Payload | None:
        bid, event = fired.rsplit(":", 1)
        raw = self.batches[bid].fields.get(f"cb_{event}")
        return None if raw is None else wire.loads(raw)

    def invalidate(self, config: Config, bid: str) -> bool:
        with self._lock:
            found = self.batches.get(bid)
            if found is None:
                return False
            found.fields["invalidated"] = "1"
            return True

    def save_workflow(self, config: Config, wid: str, fields: Mapping[str, str]) -> None:
        with self._lock:
            self.workflows[wid] = dict(fields)

    # -- reads -------------------------------------------------------------------------
    def read(self, config: Config, bid: str) -> tuple[dict[str, str], dict[str, int]] | None:
        with self._lock:
            found = self.batches.get(bid)
            if found is None:
                return None
            sizes = {name: len(part) for name, part in found.parts.items()}
            sizes |= {name: len(part) for name, part in found.hashes.items()}
            return dict(found.fields), sizes

    def members(self, config: Config, bid: str, part: str) -> list[str]:
        with self._lock:
            found = self.batches.get(bid)
            return [] if found is None else sorted(found.parts.get(part, set()))

    def hash(self, config: Config, bid: str, part: str) -> dict[str, str]:
        with self._lock:
            found = self.batches.get(bid)
            return {} if found is None else dict(found.hashes.get(part, {}))

    def gate(self, config: Config, bid: str, jid: str) -> tuple[bool, bool, bool]:
        with self._lock:
            found = self.batches.get(bid)
            if found is None:
                return False, False, False
            return True, "invalidated" in found.fields, jid in found.parts["jids"]

    def load_workflow(self, config: Config, wid: str) -> dict[str, str] | None:
        with self._lock:
            found = self.workflows.get(wid)
            return None if found is None else dict(found)


def run_member(config: Config, payload: Payload, run: Callable[[], Any]) -> Any:
    """Run a batch's job as the worker would: skipped when its batch says so, its
    outcome recorded after (a raise: dead, as a test mode does not retry)."""
    if not batch.admit(config, payload):
        return None
    try:
        result = run()
    except BaseException as exc:
        batch.record(config, payload, "death", batch.error_json(exc))
        raise
    batch.record(config, payload, "success", batch.result_json(result))
    return result
