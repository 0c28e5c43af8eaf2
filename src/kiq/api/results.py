"""Stored job results (kiq.results): read a job's record by jid, count what was stored.

Why in the API: the Web UI's job pages and the Prometheus exporter render only what
``kiq.api`` returns, so a result seen there is the one ``kiq.Result(jid).get()`` reads.
Reading is one MGET for any number of jids; nothing here waits (that is ``kiq.Result``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kiq.api.base import config_or_default
from kiq.config import Config
from kiq.results import decode_record


def result(jid: str, config: Config | None = None) -> dict[str, Any] | None:
    """The record of a job pushed with ``result_ttl``: ``status`` (running, retrying,
    succeeded, failed, dead), ``class``, ``at`` and ``value`` or ``error_class``,
    ``error_message``, ``traceback``; None when there is none (never run, expired)."""
    return results([jid], config).get(jid)


def results(jids: Sequence[str], config: Config | None = None) -> dict[str, dict[str, Any]]:
    """The records of ``jids`` that exist, by jid (one MGET)."""
    store = config_or_default(config).store
    found: dict[str, dict[str, Any]] = {}
    for jid, raw in zip(jids, store.read_results(list(jids)), strict=True):
        record = decode_record(raw)
        if record is not None:
            found[jid] = record
    return found


def result_counts(config: Config | None = None) -> dict[str, int]:
    """Final records stored since the counter began, by status (``kiq|results``)."""
    return config_or_default(config).store.result_counts()
