"""Call the user's error and death handlers: each one, whatever the others do.

Sidekiq's rule: a handler that raises is logged and the next one still runs; nothing a
handler does changes what happens to the job. Three places call handlers (the retry
decision, the door's burial of a job it cannot read, the admin API's kill), and they
call them through this one loop (issue 13), so the rule has one home::

    call_each(config.error_handlers, "error handler", exc, {"context": ..., "job": payload})
    call_each(config.death_handlers, "death handler", payload, exc)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)


def call_each(handlers: Iterable[Callable[..., Any]], kind: str, *args: Any) -> None:
    """Call every handler with ``args``; log one that raises (with its traceback), go on."""
    for handler in handlers:
        try:
            handler(*args)
        except Exception:
            log.exception("%s %r failed", kind, handler)
