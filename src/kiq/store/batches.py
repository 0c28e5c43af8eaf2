"""Batches: Sidekiq Pro's ``b-<bid>`` keys, written by three Lua scripts.

Why its own file and why scripts: a batch's counts must move with its jobs. A push
into a batch registers the jids and pushes the jobs in one step (``batch_push.lua``),
so no job is counted without being pushed; a job's outcome updates the counts and
pushes the callbacks it makes due in one step (``batch_update.lua``), so each callback
is pushed exactly once whatever crashes where; a ``jobs()`` block opens and creates
the batch (and links it to its parent) in one step (``batch_open.lua``). Reads are
plain pipelines: a status is a snapshot, not a transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

from kiq.errors import BatchError
from kiq.store.connection import UNREACHABLE, Connection

# One job of a batch push: (jid, queue, at or None, encoded payload)
BatchJob = tuple[str, str, float | None, bytes]
_PARTS = ("jids", "failinfo", "died", "kids", "open", "results")


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class Batches(Connection):
    """The batch half of ``Store`` (see the module docstring)."""

    def _run_batch_script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """``name`` run once, a script's KIQBATCH error as ``kiq.BatchError``."""
        try:
            return self._batch_eval(name, keys, args)
        except UNREACHABLE as exc:
            raise self.unavailable(exc) from exc
        except ResponseError as exc:
            text = str(exc)
            if text.startswith("KIQBATCH "):
                raise BatchError(text.removeprefix("KIQBATCH ")) from None
            raise

    def _batch_eval(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """One batch script's call (a cluster: on the batch's slot, then WAIT)."""
        return self._retry_once_on_failover(self._evalsha, name, keys, args)

    def _evalsha(self, name: str, keys: list[str], args: list[Any]) -> Any:
        # EVALSHA as one packed write on the lane (as unique_push does): the Script
        # object's path costs a job several times the script's own time. NOSCRIPT (a
        # fresh or restarted server): the Script object loads it and runs it.
        script = self._script(name)
        try:
            (reply,) = self._call([("EVALSHA", script.sha, len(keys), *keys, *args)])
        except NoScriptError:
            reply = script(keys=keys, args=args)
        return reply

    def batch_open(
        self, bid: str, token: str, ttl: int, now: float, parent: str, fields: Mapping[str, str]
    ) -> bool:
        """Open a ``jobs()`` block on ``bid`` (creating it with ``fields`` if new); True if
        it was created. ``fields`` empty: the batch must exist (re-opened by bid)."""
        return self._open_batch(bid, token, ttl, now, parent, fields, self.keys.batches)

    def _open_batch(
        self,
        bid: str,
        token: str,
        ttl: int,
        now: float,
        parent: str,
        fields: Mapping[str, str],
        index: str,
    ) -> bool:
        """``batch_open.lua``; ``index``: where it adds a new batch (a cluster: the batch's
        own hash again, so nothing is written off its slot)."""
        b = self.keys.batch
        keys = [b(bid), b(bid, "open"), index]
        keys += [b(parent), b(parent, "kids")] if parent else [b(bid), b(bid, "kids")]
        args: list[Any] = [bid, token, ttl, repr(now), parent]
        for name, value in fields.items():
            args += (name, value)
        return bool(self._run_batch_script("batch_open", keys, args))

    def batch_push(self, bid: str, ttl: int, jobs: Sequence[BatchJob]) -> int:
        """Push ``jobs`` as members of ``bid`` (one script); how many were newly counted."""
        keys = [self.keys.batch(bid), self.keys.batch(bid, "jids")]
        keys += [self.keys.queues, self.keys.schedule]
        args: list[Any] = [ttl]
        for jid, queue, at, raw in jobs:
            keys.append(self.keys.queue(queue))
            args += (jid, queue, "" if at is None else repr(float(at)), raw)
        return int(self._run_batch_script("batch_push", keys, args))

    def batch_launch(
        self, bid: str, ttl: int, now: float, fields: Mapping[str, str], jobs: Sequence[BatchJob]
    ) -> bool:
        """Create ``bid`` with all of ``jobs`` in one script, unless it exists (then write
        nothing); True if launched. A workflow step (kiq.workflow)."""
        keys = [self.keys.batch(bid), self.keys.batch(bid, "jids"), self.keys.batches]
        keys += [self.keys.queues, self.keys.schedule]
        args: list[Any] = [bid, ttl, repr(now), len(fields)]
        for name, value in fields.items():
            args += (name, value)
        for jid, queue, at, raw in jobs:
            keys.append(self.keys.queue(queue))
            args += (jid, queue, "" if at is None else repr(float(at)), raw)
        return bool(self._run_batch_script("batch_launch", keys, args))

    def batch_update(self, bid: str, op: str, member: str, info: str | bytes = "") -> list[str]:
        """Record ``op`` (success, failure, death, close) for ``member`` of ``bid`` and fire
        what is due; the events fired, as ``"<bid>:<event>"``."""
        args = [self.keys.prefix, op, bid, member, info]
        fired = self._run_batch_script("batch_update", [self.keys.batch(bid)], args)
        return [_text(event) for event in fired]

    def batch_sweep(self, now: float, grace: float) -> int:
        """Nothing on one Redis: a push is one script, so no batch outbox is ever left
        (Redis Cluster: ``ClusterBatches.batch_sweep``); 0 jobs pushed."""
        return 0

    def batch_gate(self, bid: str, jid: str) -> tuple[bool, bool, bool]:
        """(exists, invalidated, jid still pending) in one round trip: the worker skips a
        job of an invalidated batch, and one whose success is already recorded."""
        commands: list[tuple[Any, ...]] = [
            ("HMGET", self.keys.batch(bid), "created_at", "invalidated"),
            ("SISMEMBER", self.keys.batch(bid, "jids"), jid),
        ]
        try:
            (created, invalidated), pending = self._retry_once_on_failover(self._call, commands)
        except UNREACHABLE as exc:
            raise self.unavailable(exc) from exc
        return created is not None, invalidated is not None, bool(pending)

    def batch_invalidate(self, bid: str) -> bool:
        """Mark ``bid`` invalidated (its jobs are skipped, no callback fires); False if gone.

        HSET only if the hash exists (a check then a write: a batch that expires between
        the two gets a one-field hash that expires with the TTL below, which is harmless).
        """
        key = self.keys.batch(bid)
        if not self._r.exists(key):
            return False
        pipe = self._pipeline(transaction=True)
        pipe.hset(key, "invalidated", "1")
        pipe.expire(key, 86400, nx=True)
        pipe.execute()
        return True

    def batch_read(self, bid: str) -> tuple[dict[str, str], dict[str, int]] | None:
        """The batch hash (decoded) and the sizes of its parts, or None if it expired."""
        return self.batch_read_many([bid])[0]

    def batch_read_many(
        self, bids: Sequence[str]
    ) -> list[tuple[dict[str, str], dict[str, int]] | None]:
        """``batch_read`` of each bid, in one pipelined round trip (a page of the list)."""
        pipe = self._pipeline()
        for bid in bids:
            pipe.hgetall(self.keys.batch(bid))
            for part in _PARTS:
                if part in ("failinfo", "results"):
                    pipe.hlen(self.keys.batch(bid, part))
                else:
                    pipe.scard(self.keys.batch(bid, part))
        replies = pipe.execute()
        found: list[tuple[dict[str, str], dict[str, int]] | None] = []
        step = 1 + len(_PARTS)
        for index in range(len(bids)):
            raw, *sizes = replies[index * step : (index + 1) * step]
            if not raw:
                found.append(None)
                continue
            fields = {_text(k): _text(v) for k, v in raw.items()}
            found.append((fields, {part: int(n) for part, n in zip(_PARTS, sizes, strict=True)}))
        return found

    def batch_members(self, bid: str, part: str, count: int = 1000) -> list[str]:
        """Up to ``count`` members of a set part (``jids``, ``died``, ``kids``, ``open``)."""
        key = self.keys.batch(bid, part)
        found: list[str] = []
        for member in self._r.sscan_iter(key, count=min(count, 1000)):
            found.append(_text(member))
            if len(found) >= count:
                break
        return found

    def batch_hash(self, bid: str, part: str) -> dict[str, str]:
        """A hash part (``failinfo``: jid -> error JSON, ``results``: jid -> JSON)."""
        raw = self._r.hgetall(self.keys.batch(bid, part))
        return {_text(k): _text(v) for k, v in raw.items()}

    def batch_index(self, start: int, stop: int, expired_before: float) -> list[tuple[str, float]]:
        """(bid, created_at) from ``batches``, newest first; entries older than
        ``expired_before`` (their keys have expired) are dropped first."""
        pipe = self._pipeline()
        pipe.zremrangebyscore(self.keys.batches, "-inf", f"({expired_before!r}")
        pipe.zrange(self.keys.batches, start, stop, desc=True, withscores=True)
        _, rows = pipe.execute()
        return [(_text(bid), float(score)) for bid, score in rows]

    def batch_count(self) -> int:
        return int(self._r.zcard(self.keys.batches))

    # -- workflows (kiq.workflow): a spec written once, then read -------------------------
    def workflow_save(self, wid: str, fields: Mapping[str, str], ttl: int, now: float) -> None:
        """HSET the workflow's hash, ZADD it to ``kiq|workflows``, one MULTI."""
        pipe = self._pipeline(transaction=True)
        pipe.hset(self.keys.workflow(wid), mapping=dict(fields))
        pipe.expire(self.keys.workflow(wid), ttl)
        pipe.zadd(self.keys.workflows, {wid: now})
        pipe.execute()

    def workflow_load(self, wid: str) -> dict[str, str] | None:
        raw = self._r.hgetall(self.keys.workflow(wid))
        return {_text(k): _text(v) for k, v in raw.items()} or None

    def workflow_index(
        self, start: int, stop: int, expired_before: float
    ) -> list[tuple[str, float]]:
        """(wid, created_at), newest first, dropping the entries past their TTL."""
        pipe = self._pipeline()
        pipe.zremrangebyscore(self.keys.workflows, "-inf", f"({expired_before!r}")
        pipe.zrange(self.keys.workflows, start, stop, desc=True, withscores=True)
        _, rows = pipe.execute()
        return [(_text(wid), float(score)) for wid, score in rows]

    def workflow_count(self) -> int:
        return int(self._r.zcard(self.keys.workflows))
