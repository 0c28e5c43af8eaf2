"""Job results: ``kiq|result|<jid>`` records, their wake-up and their count.

Why its own file: results are opt-in (a job pushed with ``result_ttl``), written by the
worker around a job's run and read by ``kiq.Result`` and the admin API; a job without
``result_ttl`` never reaches this file. The record's format (JSON, ``status`` first)
belongs to ``kiq.results``; this file only moves bytes:

  * ``store_result``: a final record (succeeded, failed, dead) is SET with its TTL,
    PUBLISHed to ``kiq|result-ready|<jid>`` and counted in ``kiq|results``, in one Lua
    step (``result_store.lua``), before the job is acknowledged;
  * ``mark_result``: a record on the way (running, retrying) is one SET with the TTL,
    nothing published: no waiter wakes for it;
  * ``read_results``: one MGET for any number of jids;
  * ``result_listener``: the process's pub/sub dispatcher that every waiter shares
    (``kiq.store.result_wait``, where the cost of a wait is stated).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from redis.exceptions import NoScriptError

from kiq.store.connection import Connection

if TYPE_CHECKING:
    from kiq.store.result_wait import Listener


class Results(Connection):
    """The results half of ``Store`` (see the module docstring)."""

    _listener: Listener | None = None
    _listener_lock = threading.Lock()

    def store_result(self, jid: str, record: bytes, ttl: int, status: str) -> int:
        """Store a final record, wake its waiters, count ``status``; subscribers reached."""
        keys = [self.keys.result(jid), self.keys.result_counts]
        args: list[bytes | str | int] = [record, ttl, self.keys.result_channel(jid), status]
        # EVALSHA on the lane (one packed write), as push_unique: redis-py's Script path
        # costs several times more. NOSCRIPT (a fresh or flushed server): load and run.
        script = self._script("result_store")
        try:
            (reply,) = self._call([("EVALSHA", script.sha, len(keys), *keys, *args)])
        except NoScriptError:
            reply = script(keys=keys, args=args)
        return int(reply)

    def mark_result(self, jid: str, record: bytes, ttl: int) -> None:
        """SET a record that ends no wait (running, retrying), with its TTL."""
        self._call([("SET", self.keys.result(jid), record, "EX", ttl)])

    def read_results(self, jids: Sequence[str]) -> list[bytes | None]:
        """The records of ``jids`` (None where there is none), in one MGET."""
        if not jids:
            return []
        records: list[bytes | None] = self._r.mget([self.keys.result(jid) for jid in jids])
        return records

    def result_counts(self) -> dict[str, int]:
        """Final records stored so far, by status (``kiq|results``)."""
        raw = self._r.hgetall(self.keys.result_counts)
        return {key.decode(): int(value) for key, value in raw.items()}

    @property
    def result_listener(self) -> Listener:
        """This Store's waiter dispatcher, made at the first wait (one per Store)."""
        listener = self._listener
        if listener is None:
            with self._listener_lock:
                listener = self._listener
                if listener is None:
                    # imported here: ``import kiq`` loads no engine part (supervise)
                    from kiq.store.result_wait import Listener

                    pool = self._blocking.connection_pool
                    listener = self._listener = Listener(pool, self.keys, self.read_results)
        return listener

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        super().close()
