"""Logging: per-job context on every record, and the two formats the CLI installs.

The processor sets the job context (class, jid, queue, retry_count when the job is a
retry, then elapsed) in a ContextVar; ``ContextFilter`` copies it onto each record, so
any line logged inside a job, by kiq or by user code through stdlib ``logging``,
carries it (Sidekiq's JobLogger / Context.with). structlog users add
``structlog_processor`` to their chain for the same fields. The library never
configures logging; only ``setup``, called by the CLI, installs a handler.

A job's ``log_level`` option (Sidekiq's) is the level of the ``kiq.job`` loggers
(kiq's start/done lines and ``Job.logger``) while that job runs, and only in its own
thread or task: ``JobLogger`` asks the ContextVar set by the processor, because a
stdlib logger's level is shared by every thread.

Plain format (Sidekiq 6.4's pretty formatter)::

    2026-01-01T10:00:00.123Z pid=123 tid=2bz class=HardJob jid=b4a5… elapsed=0.002 INFO: done

JSON format: one object per line with ``ts``, ``pid``, ``tid``, ``lvl``, ``msg`` and
``ctx`` (Sidekiq's JSON formatter), plus ``exc`` when there is a traceback.

A payload cannot forge or restyle a plain line (issue 12): the context's values and
the arguments of a one-line message are written with their control characters
escaped (``\\n``, ``\\r``, ``\\x1b``, C1...); a line whose code wrote a newline in
its format (TTIN's stacks), a traceback, or a message with no arguments keeps its
newlines but every line after the first is indented, so none can pass for a record.
The context's ``class`` is the payload's own; an ActiveJob ``wrapped`` class goes in
``wrapped=``, and only when it is a plain class name.
"""

from __future__ import annotations

import atexit
import collections
import contextvars
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any, Final, TextIO

import orjson

from kiq.supervise import spawn

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "kiq_job_context", default=None
)


_level: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "kiq_job_log_level", default=None
)

# Sidekiq's level names (Ruby Logger's), as they appear in a payload's ``log_level``.
LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "critical": logging.CRITICAL,
}


def current_context() -> dict[str, Any] | None:
    return _context.get()


# Ruby (``Mailer::DeliveryJob``) or Python (``app.jobs.Send``) class names, nothing else.
_CLASS_NAME: Final = re.compile(
    r"[A-Za-z_]\w{0,127}(?:(?:::|\.)[A-Za-z_]\w{0,127}){0,15}", re.ASCII
)


def job_fields(payload: Mapping[str, Any], queue: str) -> dict[str, Any]:
    """The job context of ``payload`` for its log lines: class, wrapped, jid, queue,
    retry_count (absent on a first run, as in Sidekiq's payload).

    ``class`` is the payload's own, the one kiq runs. Sidekiq logs an ActiveJob's
    ``wrapped`` class in its place, which let any payload name itself (issue 12); here
    it is a field of its own, kept only when it is a plain class name.
    """
    ctx: dict[str, Any] = {"class": payload.get("class", "?")}
    wrapped = payload.get("wrapped")
    if wrapped is not None and isinstance(wrapped, str) and _CLASS_NAME.fullmatch(wrapped):
        ctx["wrapped"] = wrapped
    ctx["jid"] = payload.get("jid")
    ctx["queue"] = queue
    if "retry_count" in payload:
        ctx["retry_count"] = payload["retry_count"]
    return ctx


# Everything but printable text: C0 (tab included), DEL, C1, and the Unicode line and
# paragraph separators some readers split on. _BLOCK spares newline and tab.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_BLOCK: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_ESCAPES: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
INDENT: Final = "    "  # before each continuation line of a plain record


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    return _ESCAPES.get(char) or (
        f"\\x{ord(char):02x}" if ord(char) <= 0xFF else f"\\u{ord(char):04x}"
    )


def escape(value: object) -> str:
    """``str(value)`` with its control characters escaped: one line, unstyled.

    A newline becomes backslash-n, ESC becomes backslash-x1b, and so on. Printable text
    comes back as it is (``str.isprintable`` is one C loop: a log line pays ~50 ns).
    """
    text = value if isinstance(value, str) else str(value)
    return text if text.isprintable() else _CONTROL.sub(_escape_char, text)


def _block(text: str) -> str:
    """Text that may span lines: control characters but newline and tab escaped, and
    every line after the first indented, so that none can pass for a record."""
    if text.isprintable():
        return text
    return _BLOCK.sub(_escape_char, text).replace("\n", "\n" + INDENT)


def _arg(value: object) -> object:
    """A message argument made safe for one line; numbers stay numbers for %d or %.1f."""
    if isinstance(value, str | BaseException):
        text = str(value)
        return value if text.isprintable() else _CONTROL.sub(_escape_char, text)
    return value


def plain_message(record: logging.LogRecord) -> str:
    """``record.getMessage()`` for the plain format, made safe (see the module docstring).

    The shape of a line is decided by the code's format string, never by the data: an
    argument of a one-line format stays on that line.
    """
    msg = str(record.msg)
    args = record.args
    if args:
        if "\n" not in msg:
            if isinstance(args, Mapping):
                args = {key: _arg(value) for key, value in args.items()}
            else:
                args = tuple(_arg(value) for value in args)
        msg = msg % args
    return _block(msg)


def parse_level(value: object) -> int | None:
    """A ``log_level`` option ("debug", "WARN", 10...) as a logging level; None if unknown."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return LEVELS.get(value.strip().lower())
    return None


class JobLogger(logging.Logger):
    """A logger whose level is the running job's ``log_level``, when the job has one."""

    def isEnabledFor(self, level: int) -> bool:
        override = _level.get()
        if override is None:
            return super().isEnabledFor(level)
        return not self.disabled and self.manager.disable < level and level >= override


_CALLER: Final = os.path.join(os.path.dirname(__file__), "processor.py")
# The handler setup() installed and its filters as installed (see _sole_destination).
_installed: list[Any] = [None, []]


def job_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)``, made a JobLogger (the ``kiq.job`` tree uses these).

    The class of an existing plain Logger is switched in place, so loggers that code
    already holds follow the job level too; a logger of another custom class is left
    as it is.
    """
    logger = logging.getLogger(name)
    if type(logger) is logging.Logger:
        logger.__class__ = JobLogger
    return logger


def job_line(logger: logging.Logger, level: int, msg: str) -> None:
    """Log one of kiq's own job lines (start, done) without looking up the caller.

    ``Logger.info`` walks the stack to find the calling file and line (a third of its
    cost, and the start line sits between a job's arrival and its start: issue 5's
    latency); for these lines they are always kiq.processor's, so the record names that
    module, line 0. Handlers and filters see an ordinary record.
    """
    if not logger.isEnabledFor(level):
        return
    target = _sole_destination(logger, level)
    if target is not None:
        target.defer(logger.name, level, msg, _context.get())
    else:
        logger.handle(logger.makeRecord(logger.name, level, _CALLER, 0, msg, (), None, "run"))


def _sole_destination(logger: logging.Logger, level: int) -> BufferedHandler | None:
    """The CLI's BufferedHandler if it is the only place ``logger``'s records go, else None.

    Then a job line can skip the record and the logger walk entirely (``defer``): on an
    idle worker, building and handling a LogRecord was ~0.1-0.2 ms of the ~1 ms between
    a job's enqueue and its start (cold caches), against ~16 us when warm.
    """
    target = _installed[0]
    if target is None or level < target.level or target.filters != _installed[1]:
        return None
    found = False
    node: logging.Logger | None = logger
    while node is not None:
        if node.filters:
            return None
        for handler in node.handlers:
            if handler is not target:
                return None
            found = True
        if not node.propagate:
            break
        node = node.parent
    return target if found else None


def set_level(level: int | None) -> contextvars.Token[int | None]:
    """Set the running job's log level (None: the loggers' own)."""
    return _level.set(level)


def reset_level(token: contextvars.Token[int | None]) -> None:
    _level.reset(token)


def use_level(level: int | None) -> None:
    """``set_level`` for an async job's task, whose context is its own copy (no token
    to reset): set only if it changes, as most jobs have none and inherit none."""
    if level is not None or _level.get() is not None:
        _level.set(level)


def structlog_processor(
    logger: object, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor adding the job context (jid, class, queue...) to each event.

    Works for structlog's own loggers and, in a ``ProcessorFormatter``'s
    ``foreign_pre_chain``, for stdlib records (kiq's own lines), which carry the
    context they were made with (else the context of the formatting thread). Keys
    the event already has are kept. Needs no
    structlog import: it is a plain function of structlog's processor signature.

    Example::

        structlog.configure(processors=[
            kiq.log.structlog_processor,
            structlog.processors.add_log_level,
            structlog.processors.JSONRenderer(),
        ])
    """
    # A stdlib record through ContextFilter has the context of the moment it was made.
    ctx: dict[str, Any] | None = getattr(event_dict.get("_record"), "kiq_ctx", _context.get())
    for key, value in (ctx or {}).items():
        event_dict.setdefault(key, value)
    return event_dict


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


_tids: dict[tuple[int, int], str] = {}  # (ident, pid) -> tid: formatted twice per job
# This process's pid, kept current across fork: os.getpid() is a system call, and tid()
# runs for every job (its busy slot) and every written line.
_pid: list[int] = [os.getpid()]


def _forked() -> None:
    _pid[0] = os.getpid()
    _formats.clear()  # their pid and tids are the parent's


os.register_at_fork(after_in_child=_forked)


def tid(ident: int | None = None) -> str:
    """A short thread id like Sidekiq's (base 36 of thread ident XOR pid)."""
    key = (threading.get_ident() if ident is None else ident, _pid[0])
    found = _tids.get(key)
    if found is None:
        if len(_tids) > 10_000:  # threads come and go in long-lived processes
            _tids.clear()
        found = _tids[key] = _b36(key[0] ^ key[1])
    return found


class ContextFilter(logging.Filter):
    """Attach the current job context (or None) as ``record.kiq_ctx``."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _context.get()
        # A copy: the writer thread formats later, after the job has added "elapsed".
        record.kiq_ctx = dict(ctx) if ctx else None
        return True


_LEVEL_NAMES: Final = {logging.INFO: "INFO", logging.WARNING: "WARNING"}  # job lines' levels
# (whole second, its formatted prefix): strftime once a second, swapped in as one tuple
_second: list[tuple[int, str]] = [(-1, "")]
_MILLIS: Final = tuple(f".{ms:03d}Z" for ms in range(1000))  # a stamp's tail, by millisecond


def _ts(record: logging.LogRecord) -> str:
    return _stamp(record.created, int(record.msecs))


def _stamp(created: float, msecs: int) -> str:
    whole = int(created)
    second = _second[0]
    if second[0] != whole:
        second = _second[0] = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return second[1] + _MILLIS[msecs]


def _fields(ctx: dict[str, Any]) -> str:
    fields = " ".join([f"{k}={v}" for k, v in ctx.items()])
    if not fields.isprintable():  # one C check per line; escape only when needed
        fields = " ".join([f"{escape(k)}={escape(v)}" for k, v in ctx.items()])
    return fields


class PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ctx: dict[str, Any] | None = getattr(record, "kiq_ctx", None)
        parts = [_ts(record), f"pid={record.process}", f"tid={tid(record.thread)}"]
        if ctx:
            parts.append(_fields(ctx))
        msg = record.msg
        if record.args or type(msg) is not str or not msg.isprintable():
            msg = plain_message(record)
        line = " ".join(parts) + f" {record.levelname}: {msg}"
        if record.exc_info:
            line += "\n" + INDENT + _block(self.formatException(record.exc_info))
        return line

    @staticmethod
    def deferred(item: _Deferred) -> str | None:
        """The line ``format`` writes for a deferred job line, without a LogRecord.

        Building the record (``BufferedHandler._record``: LogRecord.__init__ looks up
        the process, thread and module name) was a sixth of an INFO-logging worker's
        CPU per no-op job; kiq's own start/done lines need none of it. None when the
        message needs ``plain_message`` (not printable), which takes the record path.

        Each line is one ``%`` of a format kept per (thread, level, message, context
        keys): the pid, tid, keys and message are written into it once, the stamp
        and the context's values (``%s``: ``str``) per line; a line that is not all
        printable is made again the long way, escaping its fields as ``format`` does.
        """
        _, level, msg, ctx, created, ident = item
        keys = tuple(ctx) if ctx else ()
        fmt = _formats.get((ident, level, msg, keys))
        if fmt is None:
            if len(_formats) >= _MAX_FORMATS:  # messages with a number in them: bounded
                _formats.clear()
            fmt = _formats[ident, level, msg, keys] = _line_format(ident, level, msg, keys)
        stamp = _stamp(created, int(created * 1000) % 1000)
        line = fmt % (stamp, *ctx.values()) if ctx else fmt % (stamp,)
        if line.isprintable():
            return line
        if not msg.isprintable():
            return None
        line = f"{stamp} pid={_pid[0]} tid={tid(ident)}"
        if ctx:
            line += " " + _fields(ctx)
        return f"{line} {_LEVEL_NAMES.get(level) or logging.getLevelName(level)}: {msg}"


# (thread ident, level, message, context keys) -> that deferred line's %-format; the
# writer's alone (BufferedHandler.flush holds its write lock), emptied in a forked child
_formats: dict[tuple[int, int, str, tuple[str, ...]], str] = {}
_MAX_FORMATS: Final = 1000


def _line_format(ident: int, level: int, msg: str, keys: tuple[str, ...]) -> str:
    """The %-format of a deferred job line: ``%s`` for the stamp and each context value."""
    name = _LEVEL_NAMES.get(level) or logging.getLevelName(level)
    fields = "".join([f" {key}=%s" for key in (key.replace("%", "%%") for key in keys)])
    tail = f" {name}: {msg}".replace("%", "%%")
    return f"%s pid={_pid[0]} tid={tid(ident)}{fields}{tail}"


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


_Deferred = tuple[str, int, str, dict[str, Any] | None, float, int]  # see BufferedHandler.defer


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
        self._records: collections.deque[logging.LogRecord | _Deferred] = collections.deque()
        self._wake = threading.Event()
        self._write_lock = threading.Lock()
        self._thread = spawn("log-writer", self._run)
        atexit.register(self.flush)

    def defer(self, name: str, level: int, msg: str, ctx: dict[str, Any] | None) -> None:
        """Queue a job line as a tuple; the writer thread makes its record (``_record``).

        Only for ``job_line`` when this handler is the line's sole destination and its
        one filter is the ContextFilter of ``setup`` (whose work this does: the context
        is copied now, as the job may add ``elapsed`` later).
        """
        self._records.append(
            (name, level, msg, dict(ctx) if ctx else None, time.time(), threading.get_ident())
        )

    @staticmethod
    def _record(item: _Deferred) -> logging.LogRecord:
        name, level, msg, ctx, created, ident = item
        record = logging.LogRecord(name, level, _CALLER, 0, msg, (), None, "run")
        record.relativeCreated -= (record.created - created) * 1000
        record.created = created
        record.msecs = int(created * 1000) % 1000
        record.thread = ident
        thread = threading._active.get(ident)  # type: ignore[attr-defined]
        record.threadName = thread.name if thread is not None else str(ident)
        record.kiq_ctx = ctx
        return record

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
            # kiq's deferred start/done lines straight to text when the format is plain
            plain = type(self.formatter) is PlainFormatter
            while self._records:
                item = self._records.popleft()
                if plain and type(item) is tuple:
                    line = PlainFormatter.deferred(item)
                    if line is not None:
                        lines.append(line)
                        continue
                record = item if isinstance(item, logging.LogRecord) else self._record(item)
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


def setup(
    fmt: str = "plain",
    verbose: bool = False,
    stream: TextIO | None = None,
    level: int | None = None,
) -> None:
    """Install one buffered stream handler on the root logger (CLI only).

    The root level is ``level`` if given, else DEBUG when ``verbose``, else INFO.
    """
    handler = BufferedHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else PlainFormatter())
    handler.addFilter(ContextFilter())
    _installed[:] = [handler, list(handler.filters)]
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level if level is not None else logging.DEBUG if verbose else logging.INFO)
