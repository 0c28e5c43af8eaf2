"""Job logs in production (issue 8 §3): the job context on every line logged inside a job,
through stdlib logging and through structlog, and Sidekiq's per-job ``log_level``.

Jobs run in a real kiq process (a Launcher in this process); records are captured by a
handler with kiq's ContextFilter, as ``kiq worker`` installs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

import kiq
from kiq import api
from kiq import log as kiq_log
from kiq.config import Config
from kiq.launcher import Launcher
from tests.support.inprocess import running
from tests.support.wait import wait_until

app_log = logging.getLogger("tests.app")  # a library's logger, not kiq's
BOTH_RUNNING = threading.Barrier(2, timeout=10)


class LogJob(kiq.Job, name="LogJob"):
    def perform(self, n: int) -> None:
        self.logger.info("from the job %d", n)
        app_log.warning("from a library")


class AsyncLogJob(kiq.Job, name="AsyncLogJob"):
    async def perform(self, n: int) -> None:
        await asyncio.sleep(0)
        self.logger.info("from the async job %d", n)


class FlakyLogJob(kiq.Job, name="FlakyLogJob", retry=2):
    def perform(self) -> None:
        raise ValueError("always")


class ChattyJob(kiq.Job, name="ChattyJob", log_level="debug"):
    def perform(self, wait: bool) -> None:
        if wait:
            BOTH_RUNNING.wait()
        self.logger.debug("chatty detail")


class QuietJob(kiq.Job, name="QuietJob", log_level="warn"):
    def perform(self, wait: bool) -> None:
        if wait:
            BOTH_RUNNING.wait()
        self.logger.debug("quiet detail")
        self.logger.info("quiet info")
        self.logger.warning("quiet warning")


class PlainJob(kiq.Job, name="PlainJob"):
    def perform(self) -> None:
        self.logger.debug("plain detail")
        self.logger.info("plain info")


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(kiq_log.ContextFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self) -> list[str]:
        return [record.getMessage() for record in self.records]

    def by_message(self, text: str) -> logging.LogRecord:
        (record,) = [r for r in self.records if r.getMessage() == text]
        return record


@pytest.fixture
def captured() -> Iterator[Capture]:
    """Records of the ``kiq.job`` tree (level INFO) and of ``tests.app``."""
    handler = Capture()
    loggers = (logging.getLogger("kiq.job"), app_log)
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.INFO)  # setLevel, not .level =: it clears logging's cache
        logger.addHandler(handler)
    yield handler
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


@contextlib.contextmanager
def attached(handler: logging.Handler, name: str) -> Iterator[None]:
    """``handler`` on the logger ``name``, which logs at INFO meanwhile."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.INFO)  # setLevel, not .level =: it clears logging's cache
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
def worker(config: Config) -> Iterator[Launcher]:
    config.concurrency = 4
    with running(config) as launcher:
        yield launcher


def test_every_line_inside_a_job_carries_its_context(config, captured, worker):
    """Lines from kiq (start, done), from the job's logger and from any other library
    logger carry class, jid and queue; done adds elapsed."""
    jid = LogJob.set(queue="default").perform_async(7)
    wait_until(lambda: "done" in captured.messages())

    expected = {"class": "LogJob", "jid": jid, "queue": "default"}
    for text in ("start", "from the job 7", "from a library"):
        assert captured.by_message(text).kiq_ctx == expected
    done = captured.by_message("done").kiq_ctx
    assert done.items() >= expected.items()
    assert done["elapsed"] >= 0


def test_async_jobs_lines_carry_their_context(config, captured, worker):
    """An ``async def perform`` job's lines carry its own context too."""
    jid = AsyncLogJob.perform_async(1)
    wait_until(lambda: "done" in captured.messages())

    assert captured.by_message("from the async job 1").kiq_ctx == {
        "class": "AsyncLogJob",
        "jid": jid,
        "queue": "default",
    }


def test_a_retried_jobs_lines_carry_retry_count(config, r, captured, worker):
    """A job run from the retry set logs its retry_count (absent on the first run)."""
    FlakyLogJob.perform_async()
    wait_until(lambda: r.zcard("retry") == 1)
    (entry,) = api.RetrySet(config)
    entry.add_to_queue()  # as the poller would, unchanged (retry() lowers retry_count)
    wait_until(lambda: len([m for m in captured.messages() if m.startswith("fail")]) == 2)

    first, second = [r.kiq_ctx for r in captured.records if r.getMessage() == "start"]
    assert "retry_count" not in first
    assert second["retry_count"] == 0


def test_json_lines_have_the_context(config, worker):
    """With the CLI's JSON format, a job's line has ctx with jid, class and queue."""
    stream = io.StringIO()
    handler = kiq_log.BufferedHandler(stream)
    handler.setFormatter(kiq_log.JsonFormatter())
    handler.addFilter(kiq_log.ContextFilter())
    with attached(handler, "kiq.job.LogJob"):
        jid = LogJob.perform_async(3)
        wait_until(lambda: (handler.flush(), "from the job 3" in stream.getvalue())[1])

    line = json.loads(stream.getvalue().splitlines()[0])
    assert line["msg"] == "from the job 3"
    assert line["ctx"] == {"class": "LogJob", "jid": jid, "queue": "default"}


class FailWith(kiq.Job, name="FailWith", retry=0):
    def perform(self, message: str) -> None:
        raise RuntimeError(message)


def test_a_failed_jobs_line_carries_its_traceback(config, captured, worker):
    """The fail line is one record with the exception (handlers get exc_info), and the
    plain format writes its traceback under the line, as Sidekiq logs the backtrace."""
    FailWith.perform_async("boom 7")
    wait_until(lambda: any(m.startswith("fail") for m in captured.messages()))

    (fail,) = [r for r in captured.records if r.getMessage().startswith("fail")]
    assert fail.getMessage() == "fail: RuntimeError: boom 7"
    assert fail.exc_info is not None
    assert isinstance(fail.exc_info[1], RuntimeError)
    text = kiq_log.PlainFormatter().format(fail)
    assert text.splitlines()[0].endswith("WARNING: fail: RuntimeError: boom 7")
    assert "Traceback (most recent call last):" in text
    assert "raise RuntimeError(message)" in text


def test_a_payload_cannot_forge_or_restyle_a_plain_line(config, r, worker):
    """An error message from the payload's arguments with a newline, CR and ESC stays on
    the fail line, escaped; ``wrapped`` does not replace ``class=``."""
    stream = io.StringIO()
    handler = kiq_log.BufferedHandler(stream)
    handler.setFormatter(kiq_log.PlainFormatter())
    handler.addFilter(kiq_log.ContextFilter())
    forged = "boom\n2026-01-01T00:00:00.000Z pid=1 tid=1 class=Admin INFO: done\x1b[2J\r"
    with attached(handler, "kiq.job"):
        r.lpush(
            "queue:default",
            json.dumps({"class": "FailWith", "wrapped": "Admin::Billing", "jid": "j1",
                        "args": [forged], "queue": "default", "retry": False}),
        )  # fmt: skip
        wait_until(lambda: (handler.flush(), "fail:" in stream.getvalue())[1])

    records = [line for line in stream.getvalue().split("\n") if line[:1].isdigit()]
    assert [line.rsplit(": ", 1)[-1] for line in records[:1]] == ["start"]
    (fail,) = [line for line in records if " WARNING: fail:" in line]
    assert " class=FailWith wrapped=Admin::Billing jid=j1 queue=default " in fail
    assert fail.endswith(
        "fail: RuntimeError: boom\\n2026-01-01T00:00:00.000Z pid=1 tid=1 class=Admin "
        "INFO: done\\x1b[2J\\r"
    )
    assert "\x1b" not in stream.getvalue()
    assert "\r" not in stream.getvalue()
    assert not any(line.startswith("2026-01-01") for line in stream.getvalue().split("\n"))


# -- structlog -------------------------------------------------------------------------------


class StructlogJob(kiq.Job, name="StructlogJob"):
    def perform(self) -> None:
        structlog.get_logger().info("charged", amount=5)


@pytest.fixture
def structlog_events() -> Iterator[list[dict[str, Any]]]:
    """structlog configured as docs/operations.md shows, events captured in a list."""
    capture = structlog.testing.LogCapture()
    structlog.configure(processors=[kiq_log.structlog_processor, capture])
    yield capture.entries
    structlog.reset_defaults()


def test_structlog_events_inside_a_job_carry_its_context(config, structlog_events, worker):
    """kiq.log.structlog_processor adds jid, class and queue to a structlog event logged
    by the job; the event's own keys stay."""
    jid = StructlogJob.perform_async()
    wait_until(lambda: structlog_events)

    (event,) = structlog_events
    assert event["event"] == "charged"
    assert event["amount"] == 5
    assert (event["class"], event["jid"], event["queue"]) == ("StructlogJob", jid, "default")


def test_structlog_renders_kiqs_own_lines_with_the_context(config, worker):
    """kiq's stdlib lines through structlog's ProcessorFormatter (foreign_pre_chain with
    structlog_processor) are JSON events with the job context."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[kiq_log.structlog_processor, structlog.stdlib.add_log_level],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    handler.addFilter(kiq_log.ContextFilter())
    with attached(handler, "kiq.job"):
        jid = LogJob.perform_async(1)
        wait_until(lambda: '"done"' in stream.getvalue())

    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    done = next(e for e in events if e["event"] == "done")
    assert (done["class"], done["jid"], done["queue"], done["level"]) == (
        "LogJob",
        jid,
        "default",
        "info",
    )
    assert "elapsed" in done


# -- log_level ---------------------------------------------------------------------------


def test_log_level_debug_shows_the_jobs_debug_lines(config, captured, worker):
    """``log_level="debug"`` lets a job's debug lines through while kiq.job is at INFO;
    another job's debug lines stay hidden."""
    ChattyJob.perform_async(False)
    PlainJob.perform_async()
    wait_until(lambda: captured.messages().count("done") == 2)

    assert "chatty detail" in captured.messages()
    assert "plain detail" not in captured.messages()
    assert "plain info" in captured.messages()


def test_log_level_warn_hides_the_jobs_info_lines_and_start_done(config, captured, worker):
    """``log_level="warn"`` hides the job's info lines and kiq's start/done lines for it;
    its warnings still show."""
    QuietJob.perform_async(False)
    wait_until(lambda: "quiet warning" in captured.messages())
    PlainJob.perform_async()  # runs after: its done line means QuietJob's would be there
    wait_until(lambda: "plain info" in captured.messages())
    wait_until(lambda: "done" in captured.messages())

    quiet = [r.getMessage() for r in captured.records if r.kiq_ctx["class"] == "QuietJob"]
    assert quiet == ["quiet warning"]


def test_log_levels_of_concurrent_jobs_do_not_leak(config, captured, worker):
    """Two jobs running at the same time on two threads each keep their own level."""
    ChattyJob.perform_async(True)
    QuietJob.perform_async(True)
    wait_until(lambda: "quiet warning" in captured.messages())
    wait_until(lambda: "chatty detail" in captured.messages())

    assert "quiet detail" not in captured.messages()
    assert "quiet info" not in captured.messages()


@pytest.mark.parametrize(
    ("option", "level"),
    [("debug", 10), ("INFO", 20), ("warn", 30), ("error", 40), ("fatal", 50), (10, 10)],
)
def test_level_names_are_sidekiqs(option: object, level: int) -> None:
    """Ruby Logger's level names (Sidekiq payloads carry them) and numbers are accepted."""
    assert kiq_log.parse_level(option) == level


def test_an_unknown_level_is_ignored() -> None:
    """A value that is not a level gives None: the job runs at the loggers' own level."""
    assert kiq_log.parse_level("loud") is None
    assert kiq_log.parse_level(True) is None
