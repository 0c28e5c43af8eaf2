"""Job log lines: context on every record, taken when the record is made."""

from __future__ import annotations

import io
import json
import logging

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
