"""Logging: per-job context on every record, and the two formats the CLI installs.

The processor sets the job context (jid, class, queue, then elapsed) in a
ContextVar; ``ContextFilter`` copies it onto each record, so any line logged inside a
job, by kiq or by user code through stdlib ``logging``, carries it (Sidekiq's
JobLogger / Context.with). The library never configures logging; only ``setup``,
called by the CLI, installs a handler.

Plain format (Sidekiq 6.4's pretty formatter)::

    2026-01-01T10:00:00.123Z pid=123 tid=2bz class=HardJob jid=b4a5… elapsed=0.002 INFO: done

JSON format: one object per line with ``ts``, ``pid``, ``tid``, ``lvl``, ``msg`` and
``ctx`` (Sidekiq's JSON formatter), plus ``exc`` when there is a traceback.
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

import orjson

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "kiq_job_context", default=None
)


def current_context() -> dict[str, Any] | None:
    return _context.get()


@contextmanager
def job_context(**fields: Any) -> Iterator[dict[str, Any]]:
    """Set the job context for the duration of a job; yields it so elapsed can be added."""
    ctx = dict(fields)
    token = _context.set(ctx)
    try:
        yield ctx
    finally:
        _context.reset(token)


def set_context(ctx: dict[str, Any] | None) -> contextvars.Token[dict[str, Any] | None]:
    return _context.set(ctx)


def reset_context(token: contextvars.Token[dict[str, Any] | None]) -> None:
    _context.reset(token)


def _b36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while number:
        number, rem = divmod(number, 36)
        out = digits[rem] + out
    return out or "0"


def tid() -> str:
    """A short thread id like Sidekiq's (base 36 of thread ident XOR pid)."""
    return _b36(threading.get_ident() ^ os.getpid())


class ContextFilter(logging.Filter):
    """Attach the current job context (or None) as ``record.kiq_ctx``."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.kiq_ctx = _context.get()
        return True


def _ts(record: logging.LogRecord) -> str:
    secs = time.gmtime(record.created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", secs) + f".{int(record.msecs):03d}Z"


class PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ctx: dict[str, Any] | None = getattr(record, "kiq_ctx", None)
        parts = [_ts(record), f"pid={os.getpid()}", f"tid={tid()}"]
        if ctx:
            parts.extend(f"{k}={v}" for k, v in ctx.items())
        line = " ".join(parts) + f" {record.levelname}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _ts(record),
            "pid": os.getpid(),
            "tid": tid(),
            "lvl": record.levelname,
            "msg": record.getMessage(),
        }
        ctx = getattr(record, "kiq_ctx", None)
        if ctx:
            out["ctx"] = ctx
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def setup(fmt: str = "plain", verbose: bool = False, stream: TextIO | None = None) -> None:
    """Install one stream handler on the root logger (CLI only)."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else PlainFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
