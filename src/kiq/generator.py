"""``kiq new job NAME``: write a job and its tests in the project's conventions (issue 7 §4).

``kiq new job CalculateMetrics`` writes two files under ``--dir`` (default: here)::

    jobs/calculate_metrics_job.py              CalculateMetricsJob(kiq.Job, queue=..., retry=...)
    tests/jobs/test_calculate_metrics_job.py   a fake-mode enqueue test and perform tests

The job is the brief's pattern 1 as a skeleton: ids not objects, an early return
when the record is gone (idempotent), logging through ``self.logger``, options as
class keywords. Its tests pass as generated, so a new job starts green and the
author replaces the placeholders test by test (Rails' generators do the same).

An existing file is never overwritten: the generator writes nothing and exits 2,
naming the file (Rails: ``skip``/``force`` are explicit choices; we only refuse).
``jobs/__init__.py`` is created when missing so ``jobs`` is a regular package;
``tests/jobs/`` gets no ``__init__.py``, since pytest would then import the test as
``jobs.test_...`` and shadow the ``jobs`` package. A root ``conftest.py`` is created
when missing: pytest puts its folder on ``sys.path``, so ``from jobs... import`` works
under plain ``pytest`` too, not only under ``python -m pytest`` (which adds the
working directory itself).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Final

_WORD_BREAK: Final = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_NAME: Final = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
DEFAULT_RETRY: Final = 25  # Sidekiq's default count, written out: the brief wants it explicit


@dataclass(frozen=True, slots=True)
class JobName:
    """The names one job NAME gives: class, module, file stem and a phrase for logs."""

    class_name: str  # CalculateMetricsJob
    module: str  # calculate_metrics_job
    phrase: str  # calculate metrics

    @classmethod
    def parse(cls, raw: str) -> JobName:
        """``CalculateMetrics``, ``CalculateMetricsJob`` and ``calculate_metrics`` are one job."""
        name = raw.strip()
        if not _NAME.fullmatch(name):
            raise ValueError(
                f"job name {raw!r} is not allowed; use CamelCase letters and digits, "
                f"e.g. kiq new job CalculateMetrics"
            )
        words = [w for w in _WORD_BREAK.sub("_", name).split("_") if w]  # case kept: HTTPSync
        if words[-1].lower() == "job":
            words.pop()
        if not words:
            raise ValueError(f"job name {raw!r} is only 'Job'; name what it does, e.g. SendDigest")
        camel = "".join(w[:1].upper() + w[1:] for w in words)
        lower = [w.lower() for w in words]
        return cls(
            class_name=f"{camel}Job", module="_".join([*lower, "job"]), phrase=" ".join(lower)
        )


def parse_retry(raw: str) -> bool | int:
    """``--retry``: a count >= 0, or true / false (Sidekiq's ``retry: true|false|N``)."""
    lowered = raw.strip().lower()
    if lowered in ("true", "yes"):
        return True
    if lowered in ("false", "no"):
        return False
    if lowered.isdigit():
        return int(lowered)
    raise argparse.ArgumentTypeError(
        f"--retry {raw!r}: use a count >= 0 (e.g. --retry 5), true or false"
    )


def generate_job(
    name: str,
    *,
    base: Path | str = ".",
    queue: str = "default",
    retry: bool | int = DEFAULT_RETRY,
    is_async: bool = False,
) -> list[Path]:
    """Write the job and its test under ``base``; return the paths written.

    Raises FileExistsError (and writes nothing) when either file exists, and
    ValueError for a name or queue that cannot be used.

    Example::

        generate_job("CalculateMetrics", queue="metrics", retry=5)
    """
    job = JobName.parse(name)
    if not queue or not queue.strip() or any(c.isspace() for c in queue):
        raise ValueError(f"--queue {queue!r}: give a queue name without spaces, e.g. default")
    root = Path(base)
    job_file = root / "jobs" / f"{job.module}.py"
    test_file = root / "tests" / "jobs" / f"test_{job.module}.py"
    existing = [path for path in (job_file, test_file) if path.exists()]
    if existing:
        listed = ", ".join(str(path) for path in existing)
        raise FileExistsError(
            f"{listed} already exists; kiq new never overwrites. Delete it, or choose "
            f"another job name."
        )
    values = _template_values(job, queue, retry, is_async)
    written: list[Path] = []
    package = job_file.parent / "__init__.py"
    if not package.exists():
        written.append(_write(package, '"""Background jobs (kiq)."""\n'))
    conftest = root / "conftest.py"
    if not conftest.exists():
        written.append(_write(conftest, CONFTEST))
    written.append(_write(job_file, JOB_TEMPLATE.substitute(values)))
    written.append(_write(test_file, TEST_TEMPLATE.substitute(values)))
    return written


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("x", encoding="utf-8") as file:  # "x": never clobber, even in a race
        file.write(text)
    return path


def _template_values(job: JobName, queue: str, retry: bool | int, is_async: bool) -> dict[str, str]:
    return {
        "cls": job.class_name,
        "module": job.module,
        "phrase": job.phrase,
        "queue": json.dumps(queue, ensure_ascii=False),  # a str literal in double quotes
        "retry": repr(retry),
        "retry_check": f"is {retry!r}" if isinstance(retry, bool) else f"== {retry!r}",
        "def_": "async def" if is_async else "def",
        "await_": "await " if is_async else "",
        "run": "asyncio.run(" if is_async else "",
        "run_end": ")" if is_async else "",
        "test_imports": "import asyncio\nimport logging" if is_async else "import logging",
        "gone": (
            "\n    async def gone(self: object, record_id: int) -> None:\n        return None\n\n"
            if is_async
            else ""
        ),
        "gone_fn": "gone" if is_async else "lambda self, record_id: None",
    }


CONFTEST: Final = '''"""pytest's root conftest, written by ``kiq new job``.

pytest puts the folder of this file on sys.path, so the tests import the project's
packages (``from jobs.send_digest_job import SendDigestJob``) under plain ``pytest``
as under ``python -m pytest``. Shared fixtures can go here too.
"""
'''

JOB_TEMPLATE: Final = Template('''\
"""$cls: say here what it does, and why it runs in the background.

Enqueue it with ids, never objects: a job runs later, in another process, maybe
more than once::

    $cls.perform_async(record.id)
"""

from __future__ import annotations

import kiq


class $cls(kiq.Job, queue=$queue, retry=$retry):
    """Idempotent: kiq delivers at least once, so this may run twice for one id, or
    after the record is gone. Both must be harmless: set values rather than add to
    them, and check before sending anything.
    """

    $def_ perform(self, record_id: int) -> None:
        record = ${await_}self.find(record_id)
        if record is None:
            # Deleted since it was enqueued: nothing to do, and no reason to retry.
            self.logger.info("$phrase: #%s is gone, nothing to do", record_id)
            return
        self.logger.info("$phrase: #%s", record_id)
        # The work goes here. Let unexpected errors raise (kiq retries them); catch
        # only those a retry cannot fix, log them and return.
        self.logger.info("$phrase: #%s done", record_id)

    $def_ find(self, record_id: int) -> object | None:
        """Load what this job works on (``session.get(Model, id)``); None if gone."""
        return record_id
''')

TEST_TEMPLATE: Final = Template('''\
"""Tests for $cls, written by ``kiq new job``.

Enqueueing is checked in fake mode (the kiq_fake fixture); perform is called directly.
"""

from __future__ import annotations

$test_imports
from types import ModuleType

import pytest

from jobs.$module import $cls


def test_perform_async_enqueues_one_job_with_the_id(kiq_fake: ModuleType) -> None:
    """perform_async pushes one job carrying the id, with the job's queue and retry."""
    $cls.perform_async(42)

    (job,) = $cls.jobs
    assert job["args"] == [42]
    assert job["queue"] == $queue
    assert job["retry"] $retry_check


def test_enqueued_job_runs_when_drained(kiq_fake: ModuleType) -> None:
    """A job enqueued in fake mode runs when drained, and leaves the queue empty."""
    $cls.perform_async(42)

    assert $cls.drain() == 1
    assert $cls.jobs == []


def test_perform_logs_its_work(caplog: pytest.LogCaptureFixture) -> None:
    """perform logs the record it works on through self.logger."""
    with caplog.at_level(logging.INFO):
        ${run}$cls().perform(42)$run_end

    assert "#42 done" in caplog.text


def test_perform_twice_is_harmless() -> None:
    """Idempotent: running the job twice for the same id does not fail."""
    ${run}$cls().perform(42)$run_end
    ${run}$cls().perform(42)$run_end


def test_perform_for_a_gone_record_does_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A record deleted before the job ran is not an error: nothing to retry."""
${gone}    monkeypatch.setattr($cls, "find", $gone_fn)

    with caplog.at_level(logging.INFO):
        ${run}$cls().perform(42)$run_end

    assert "#42 is gone" in caplog.text
''')


def add_options(parser: argparse.ArgumentParser) -> None:
    """The ``kiq new`` subcommand's arguments."""
    parser.add_argument("kind", choices=["job"], help="what to generate")
    parser.add_argument("name", help="the job's name in CamelCase, e.g. CalculateMetrics")
    parser.add_argument("--queue", default="default", help="the job's queue (default: default)")
    parser.add_argument(
        "--retry",
        type=parse_retry,
        default=DEFAULT_RETRY,
        help=f"retries before the dead set, or true/false (default: {DEFAULT_RETRY})",
    )
    parser.add_argument(
        "--async", dest="is_async", action="store_true", help="write async def perform"
    )
    parser.add_argument("--dir", default=".", help="project directory to write into")


def run(args: argparse.Namespace) -> int:
    """``kiq new``: print each file written; exit 2 with the reason if nothing was."""
    try:
        written = generate_job(
            args.name, base=args.dir, queue=args.queue, retry=args.retry, is_async=args.is_async
        )
    except (FileExistsError, ValueError) as exc:
        print(f"kiq new: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"created {path}")
    return 0
