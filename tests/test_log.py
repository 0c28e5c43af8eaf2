"""Job log lines: context on every record, taken when the record is made."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable
from typing import Any

import pytest

from kiq import log as kiq_log


def emit(fmt: str) -> list[str]:
    stream = io.StringIO()
    handler = kiq_log.BufferedHandler(stream)
    handler.setFormatter(kiq_log.JsonFormatter() if fmt == "json" else kiq_log.PlainFormatter())
    handler.addFilter(kiq_log.ContextFilter())
    logger = logging.getLogger("kiq.test-log")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with kiq_log.job_context(jid="abc", **{"class": "HardJob"}) as ctx:
            logger.info("start")
            ctx["elapsed"] = 0.5
            logger.info("done")
        logger.info("outside")
        handler.flush()
    finally:
        logger.removeHandler(handler)
    return stream.getvalue().splitlines()


def test_plain_lines_carry_the_context_of_their_moment() -> None:
    """'start' has jid and class but no elapsed, 'done' has elapsed, lines outside a job none."""
    start, done, outside = emit("plain")
    assert "jid=abc class=HardJob INFO: start" in start
    assert "elapsed" not in start
    assert "elapsed=0.5 INFO: done" in done
    assert "jid=" not in outside


def test_json_lines_have_sidekiqs_fields() -> None:
    """JSON lines have ts, pid, tid, lvl, msg and ctx (Sidekiq's JSON formatter)."""
    start, done, _ = (json.loads(line) for line in emit("json"))
    assert {"ts", "pid", "tid", "lvl", "msg", "ctx"} <= set(start)
    assert start["ctx"] == {"jid": "abc", "class": "HardJob"}
    assert done["ctx"]["elapsed"] == 0.5


def test_job_lines_through_the_cli_handler_read_as_ordinary_records(monkeypatch) -> None:
    """kiq's start/done lines skip the record while the CLI's handler is their only
    destination (``job_line``'s deferred path), and still read exactly as records made
    at that moment: time, thread id, the context of the moment, the format."""
    stream = io.StringIO()
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    kiq_log.setup(stream=stream)
    handler = root.handlers[0]
    job_log = kiq_log.job_logger("kiq.job")
    try:
        with kiq_log.job_context(jid="abc", **{"class": "HardJob"}) as ctx:
            kiq_log.job_line(job_log, logging.INFO, "start")
            assert isinstance(handler._records[-1], tuple)  # deferred, not a LogRecord
            ctx["elapsed"] = 0.5
            kiq_log.job_line(job_log, logging.INFO, "done")
        job_log.info("plain record")  # an ordinary record between two deferred ones
        handler.flush()
    finally:
        kiq_log._installed[:] = [None, []]
    start, done, plain = stream.getvalue().splitlines()
    assert start.endswith(f"tid={kiq_log.tid()} jid=abc class=HardJob INFO: start")
    assert done.endswith("jid=abc class=HardJob elapsed=0.5 INFO: done")
    assert plain.endswith(f"tid={kiq_log.tid()} INFO: plain record")
    assert start[:19] == done[:19] == plain[:19]  # same second: the time of the call


def test_job_lines_reach_every_other_handler_as_records(monkeypatch) -> None:
    """With another handler on the way (an app's, pytest's caplog), job lines are
    ordinary records, so that handler sees them with their context."""
    stream = io.StringIO()
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    kiq_log.setup(stream=stream)
    seen: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    other = Collect()
    other.addFilter(kiq_log.ContextFilter())
    job_log = kiq_log.job_logger("kiq.job")
    job_log.addHandler(other)
    try:
        with kiq_log.job_context(jid="abc"):
            kiq_log.job_line(job_log, logging.INFO, "start")
        root.handlers[0].flush()
    finally:
        job_log.removeHandler(other)
        kiq_log._installed[:] = [None, []]
    assert [(r.getMessage(), r.kiq_ctx) for r in seen] == [("start", {"jid": "abc"})]
    assert stream.getvalue().rstrip().endswith("jid=abc INFO: start")


# -- hostile payloads (issue 12) -----------------------------------------------------------

FORGED = "x\n2026-01-01T00:00:00.000Z pid=1 tid=1 class=Admin INFO: done\r\x1b[2J\x85"
RECORD_START = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z pid=")


def plain(logger_call: Callable[[logging.Logger], None], **ctx: Any) -> str:
    """What PlainFormatter writes for one call on a logger, inside a job context."""
    stream = io.StringIO()
    handler = kiq_log.BufferedHandler(stream)
    handler.setFormatter(kiq_log.PlainFormatter())
    handler.addFilter(kiq_log.ContextFilter())
    logger = logging.getLogger("kiq.test-hostile")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with kiq_log.job_context(**ctx):
            logger_call(logger)
        handler.flush()
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def assert_one_record(text: str) -> None:
    """Exactly one line starts a record; the rest are indented continuations, and no
    control character but newline and tab is left."""
    lines = text.rstrip("\n").split("\n")
    assert RECORD_START.match(lines[0])
    assert all(line.startswith(kiq_log.INDENT) for line in lines[1:]), lines
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", text)


def test_a_payloads_control_characters_stay_escaped_in_the_context() -> None:
    """class, jid and queue from a payload are written with \\n, \\r, \\x1b, C1 escaped:
    a jid cannot forge a second line or restyle the terminal."""
    out = plain(lambda log: log.info("start"), **{"class": "Job", "jid": FORGED, "queue": "q\n"})
    assert out.count("\n") == 1
    assert "jid=x\\n2026-01-01T00:00:00.000Z pid=1" in out
    assert "\\r\\x1b[2J\\x85 queue=q\\n INFO: start" in out
    assert_one_record(out)


def test_arguments_of_a_one_line_message_stay_on_it() -> None:
    """A one-line format's string (or exception) arguments are escaped: the code's format
    decides the shape of the line, never the data; numbers still format as numbers."""
    out = plain(
        lambda log: log.warning("fail: %s: %s (%d, %.1f)", "E", ValueError(FORGED), 3, 0.25)
    )
    assert out.count("\n") == 1
    assert out.rstrip().endswith("WARNING: fail: E: x\\n2026-01-01T00:00:00.000Z pid=1 tid=1 "
                                 "class=Admin INFO: done\\r\\x1b[2J\\x85 (3, 0.2)")  # fmt: skip
    assert_one_record(out)


def test_a_multi_line_message_and_a_traceback_are_indented() -> None:
    """A format that has a newline (TTIN's stacks) keeps it, and a traceback keeps its
    lines, but every line after the first is indented: a newline in an exception's
    message cannot start a record."""

    def fail(log: logging.Logger) -> None:
        try:
            raise RuntimeError(FORGED)
        except RuntimeError:
            log.exception("thread %s\n%s", "main", "  File stack\n  more")

    out = plain(fail)
    assert_one_record(out)
    lines = out.rstrip("\n").split("\n")
    assert lines[0].endswith("ERROR: thread main")
    assert lines[1:3] == [f"{kiq_log.INDENT}  File stack", f"{kiq_log.INDENT}  more"]
    assert f"{kiq_log.INDENT}Traceback (most recent call last):" in lines
    assert f"{kiq_log.INDENT}RuntimeError: x" in lines
    forged = "2026-01-01T00:00:00.000Z pid=1 tid=1 class=Admin INFO: done\\r\\x1b[2J\\x85"
    assert f"{kiq_log.INDENT}{forged}" in lines


def test_printable_lines_are_unchanged() -> None:
    """Ordinary text (tabs aside, which are escaped in fields) is written as it was."""
    out = plain(lambda log: log.info("done %s", "ünïcode ok"), jid="abc", queue="default")
    assert out.rstrip().endswith("jid=abc queue=default INFO: done ünïcode ok")
    assert kiq_log.escape("a\tb") == "a\\tb"


@pytest.mark.parametrize(
    ("wrapped", "logged"),
    [
        ("ActionMailer::MailDeliveryJob", "ActionMailer::MailDeliveryJob"),
        ("app.jobs.SendInvoice", "app.jobs.SendInvoice"),
        ("Admin jid=forged", None),
        ("Evil\nclass=Admin", None),
        ("", None),
        (["Admin"], None),
        ("A" * 129, None),
    ],
)
def test_the_logged_class_is_the_payloads_own(wrapped: object, logged: str | None) -> None:
    """``class`` is the class kiq runs, never ``wrapped``; a wrapped ActiveJob class is
    its own field, kept only when it is a plain class name."""
    payload = {"class": "Sidekiq::ActiveJob::Wrapper", "wrapped": wrapped, "jid": "j"}
    ctx = kiq_log.job_fields(payload, "default")
    assert ctx["class"] == "Sidekiq::ActiveJob::Wrapper"
    assert ctx.get("wrapped") == logged
    assert list(ctx) == ["class", *(["wrapped"] if logged else []), "jid", "queue"]


@pytest.mark.parametrize(
    "ctx",
    [
        None,
        {"jid": "abc", "class": "HardJob", "elapsed": 0.5},
        {"class": FORGED},
        {"class": "Café", "100%s": "a %d %% b", "retry_count": 2},
    ],
    ids=["no-context", "job-context", "hostile-context", "percent-and-unicode-context"],
)
def test_a_deferred_job_line_is_written_as_its_record_would_be(ctx: Any) -> None:
    """The writer turns kiq's deferred start/done tuples into text without a LogRecord;
    the text is the very line PlainFormatter writes for the record they stand for
    (escaping of hostile context values included)."""
    item = ("kiq.job", logging.INFO, "done", ctx, 1_796_000_000.0421, 140_000_000_001)
    via_record = kiq_log.PlainFormatter().format(kiq_log.BufferedHandler._record(item))
    kiq_log._formats.clear()
    assert kiq_log.PlainFormatter.deferred(item) == via_record
    assert kiq_log.PlainFormatter.deferred(item) == via_record  # its format from the cache
    assert "\n" not in via_record


@pytest.mark.parametrize("msg", ["limited: again in 5.0s", "100% done: %s", "fertig, schön"])
def test_a_deferred_line_keeps_its_message_as_written(msg: str) -> None:
    """A message with ``%`` or non-ASCII text goes through the line's cached %-format
    unchanged: the very line of its record."""
    ctx = {"class": "HardJob", "jid": "abc", "queue": "default"}
    item = ("kiq.job", logging.INFO, msg, ctx, 1_796_000_000.999, 140_000_000_001)
    via_record = kiq_log.PlainFormatter().format(kiq_log.BufferedHandler._record(item))
    assert kiq_log.PlainFormatter.deferred(item) == via_record
    assert via_record.endswith(f" INFO: {msg}")


def test_a_deferred_line_with_an_unprintable_message_takes_the_record_path() -> None:
    """A message that needs escaping is left to format() (plain_message), not the fast path."""
    item = ("kiq.job", logging.INFO, "do\nne", None, 1_796_000_000.5, 1)
    assert kiq_log.PlainFormatter.deferred(item) is None
    stream = io.StringIO()
    handler = kiq_log.BufferedHandler(stream)
    handler.setFormatter(kiq_log.PlainFormatter())
    handler._records.append(item)
    handler.flush()
    expected = kiq_log.PlainFormatter().format(kiq_log.BufferedHandler._record(item))
    assert stream.getvalue() == expected + "\n"
    assert "do\nne" not in expected  # plain_message's treatment, not the raw text
