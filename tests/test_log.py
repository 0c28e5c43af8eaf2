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
