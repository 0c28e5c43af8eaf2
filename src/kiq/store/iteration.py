"""Iterable-job state, cancel flags and job fates: ``it-<jid>``, ``kiq|fate|<jid>``.

Why its own file: ``it-<jid>`` is Sidekiq 7.3+'s own hash, and every write here must be
byte-for-byte what Ruby's ``Sidekiq::Job::Iterable`` writes and reads (docs/iterable.md):

* ``flush_iteration``: MULTI ``HSET it-<jid> ex <int> c <JSON> rt <float>``,
  ``EXPIRE it-<jid> 2592000 NX``, ``HGET it-<jid> cancelled`` (Ruby's ``flush_state``);
* ``mark_cancelled``: ``HSETNX it-<jid> cancelled <epoch int>``, ``HGET``, ``EXPIRE NX``
  (Ruby's ``cancel!``), pipelined;
* ``clear_iteration``: ``UNLINK it-<jid>`` when the job completes (Ruby's ``cleanup``).

``EXPIRE ... NX`` needs Redis 7.0, as Sidekiq's iterable jobs do. A job that never
finished records its fate (cancelled, expired) in kiq's own ``kiq|fate|<jid>`` and
counts it in ``kiq|stat|<fate>``, read by the API and the job detail page.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import orjson

from kiq.keys import FATE_TTL, ITERATION_TTL
from kiq.store.connection import Connection


class Iterations(Connection):
    """The iterable-job and fate half of ``Store`` (see the module docstring)."""

    def load_iteration(self, jid: str) -> dict[bytes, bytes]:
        """HGETALL ``it-<jid>``: the state a previous run flushed ({} for a first run)."""
        state: dict[bytes, bytes] = self._r.hgetall(self.keys.iteration(jid))
        return state

    def flush_iteration(self, jid: str, executions: int, cursor: bytes, runtime: float) -> bool:
        """Write the state as Ruby's ``flush_state`` does; True if the job is cancelled.

        One MULTI: the HSET and the TTL (set once, NX, so a long job's state still
        expires 30 days after its first flush, as Sidekiq's) with the cancel flag read.
        """
        key = self.keys.iteration(jid)
        pipe = self._pipeline(transaction=True)
        pipe.hset(key, mapping={"ex": str(executions), "c": cursor, "rt": repr(float(runtime))})
        pipe.execute_command("EXPIRE", key, ITERATION_TTL, "NX")
        pipe.hget(key, "cancelled")
        return pipe.execute()[-1] is not None

    def clear_iteration(self, jid: str) -> None:
        """UNLINK ``it-<jid>``: the job completed (Ruby's ``cleanup``)."""
        self._redis.unlink(self.keys.iteration(jid))

    def mark_cancelled(self, jid: str, now: int) -> tuple[bool, int]:
        """Ruby's ``cancel!``: HSETNX ``cancelled``, read it back, EXPIRE NX (pipelined).

        Returns (this call set the flag, the flag's epoch second). Not a MULTI, as in
        Ruby: each command stands alone and a repeat of the three changes nothing.
        """
        key = self.keys.iteration(jid)
        pipe = self._pipeline()
        pipe.hsetnx(key, "cancelled", str(now))
        pipe.hget(key, "cancelled")
        pipe.execute_command("EXPIRE", key, ITERATION_TTL, "NX")
        created, value, _ = pipe.execute()
        return bool(created), int(value or now)

    def unmark_cancelled(self, jid: str) -> None:
        """Take back a flag this process just set for a jid found nowhere (kiq.cancel)."""
        key = self.keys.iteration(jid)
        pipe = self._pipeline(transaction=True)
        pipe.hdel(key, "cancelled")
        pipe.execute()

    def cancel_flags(self, jids: Sequence[str]) -> list[str]:
        """The jids among ``jids`` whose ``it-<jid>`` has ``cancelled``, one round trip."""
        if not jids:
            return []
        pipe = self._pipeline()
        for jid in jids:
            pipe.hget(self.keys.iteration(jid), "cancelled")
        return [jid for jid, flag in zip(jids, pipe.execute(), strict=True) if flag is not None]

    def record_fate(self, jid: str, fields: Mapping[str, str | bytes]) -> None:
        """HSET ``kiq|fate|<jid>`` (with FATE_TTL) and INCR ``kiq|stat|<fate>``, one MULTI."""
        key = self.keys.fate(jid)
        pipe = self._pipeline(transaction=True)
        pipe.hset(key, mapping=dict(fields))
        pipe.expire(key, FATE_TTL)
        pipe.incr(self.keys.fate_count(str(fields["fate"])))
        pipe.execute()

    def read_fate(self, jid: str) -> dict[str, str]:
        """HGETALL ``kiq|fate|<jid>`` decoded ({} when the job has no recorded fate)."""
        raw: dict[bytes, bytes] = self._r.hgetall(self.keys.fate(jid))
        return {k.decode(): v.decode(errors="replace") for k, v in raw.items()}

    def fate_counts(self, fates: Sequence[str]) -> list[int]:
        """``kiq|stat|<fate>`` for each fate (0 when never counted), one MGET."""
        values = self._redis.mget([self.keys.fate_count(f) for f in fates])
        return [int(v or 0) for v in values]

    def find_fetched(self, needle: bytes) -> list[tuple[str, str, bytes]]:
        """Jobs taken by a kiq process and not yet acknowledged whose JSON contains
        ``needle``: (identity, queue, raw), from every in-progress list that
        ``kiq|fetchers`` names (one HGETALL, then one pipelined LRANGE per list)."""
        lists: list[tuple[str, str]] = []
        fetchers: dict[bytes, bytes] = self._r.hgetall(self.keys.fetchers)
        for raw_ident, queues in fetchers.items():
            try:
                names = orjson.loads(queues)
            except orjson.JSONDecodeError:
                continue
            lists.extend((raw_ident.decode(), str(q)) for q in names if isinstance(q, str))
        pipe = self._pipeline()
        for ident, queue in lists:
            pipe.lrange(self.keys.inprogress(ident, queue), 0, -1)
        found: list[tuple[str, str, bytes]] = []
        for (ident, queue), raws in zip(lists, pipe.execute() if lists else [], strict=True):
            found.extend((ident, queue, bytes(raw)) for raw in raws if needle in raw)
        return found
