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

import atexit
import collections
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


def tid(ident: int | None = None) -> str:
    """A short thread id like Sidekiq's (base 36 of thread ident XOR pid)."""
    return _b36((threading.get_ident() if ident is None else ident) ^ os.getpid())


class ContextFilter(logging.Filter):
    """Attach the current job context (or None) as ``record.kiq_ctx``."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _context.get()
        # A copy: the writer thread formats later, after the job has added "elapsed".
        record.kiq_ctx = dict(ctx) if ctx else None
        return True


def _ts(record: logging.LogRecord) -> str:
    secs = time.gmtime(record.created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", secs) + f".{int(record.msecs):03d}Z"


class PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ctx: dict[str, Any] | None = getattr(record, "kiq_ctx", None)
        parts = [_ts(record), f"pid={record.process}", f"tid={tid(record.thread)}"]
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
            "pid": record.process,
            "tid": tid(record.thread),
            "lvl": record.levelname,
            "msg": record.getMessage(),
        }
        ctx = getattr(record, "kiq_ctx", None)
        if ctx:
            out["ctx"] = ctx
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class BufferedHandler(logging.Handler):
    """Write records from a background thread, many per write(2).

    A worker logs two lines per job from ten threads; a StreamHandler takes a lock and
    flushes per line, and that contention was half of a no-op job's wall time in the
    profile (issue 5). Here ``handle`` only appends to a deque (thread-safe, no lock);
    the writer thread formats and writes every ``INTERVAL`` seconds, and at ``flush``
    or exit, so lines appear at most 50 ms late and nothing is lost on a clean exit.
    The job context and thread id are taken when the record is made, not when written.
    """

    INTERVAL = 0.05

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self._records: collections.deque[logging.LogRecord] = collections.deque()
        self._wake = threading.Event()
        self._write_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="kiq.log-writer", daemon=True)
        self._thread.start()
        atexit.register(self.flush)

    def handle(self, record: logging.LogRecord) -> bool:
        if self.filter(record):
            self._records.append(record)
            if record.levelno >= logging.ERROR:
                self._wake.set()
            return True
        return False

    def emit(self, record: logging.LogRecord) -> None:  # pragma: no cover - handle() bypasses
        self._records.append(record)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.INTERVAL)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        with self._write_lock:
            lines: list[str] = []
            while self._records:
                record = self._records.popleft()
                try:
                    lines.append(self.format(record))
                except Exception:
                    self.handleError(record)
            if lines:
                try:
                    self.stream.write("\n".join(lines) + "\n")
                    self.stream.flush()
                except (OSError, ValueError):
                    pass  # stdout closed at exit: nothing useful left to do


def setup(fmt: str = "plain", verbose: bool = False, stream: TextIO | None = None) -> None:
    """Install one buffered stream handler on the root logger (CLI only)."""
    handler = BufferedHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else PlainFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
