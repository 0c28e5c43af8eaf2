"""Cancel a job by jid and read how cancelled or expired jobs ended (issue 18).

Example::

    result = kiq.api.cancel(jid)        # CancelResult: removed / cancelling / not_found
    kiq.api.fate(jid)                   # {"fate": "cancelled", "at": ..., "where": ...}
    kiq.api.fate_counts()               # {"cancelled": 3, "expired": 12}

The work is kiq.cancel's (the module the Job class calls too, for ``Job.cancel``); the
Web UI's Cancel button and ``kiq cancel JID`` call these.
"""

from __future__ import annotations

from typing import Final

from kiq import cancel as kiq_cancel
from kiq.api.base import config_or_default
from kiq.cancel import CancelResult
from kiq.config import Config

FATES: Final = ("cancelled", "expired")


def cancel(jid: str, config: Config | None = None) -> CancelResult:
    """Cancel the job ``jid``: removed if waiting, stopped within one beat if running."""
    return kiq_cancel.cancel(config_or_default(config), jid)


def fate(jid: str, config: Config | None = None) -> dict[str, str]:
    """``kiq|fate|<jid>``: fate, at, class, queue, where, job ({} if none is recorded)."""
    return kiq_cancel.fate(config_or_default(config), jid)


def fate_counts(config: Config | None = None) -> dict[str, int]:
    """How many jobs ended cancelled and expired (``kiq|stat|<fate>``), one MGET."""
    counts = config_or_default(config).store.fate_counts(FATES)
    return dict(zip(FATES, counts, strict=True))
