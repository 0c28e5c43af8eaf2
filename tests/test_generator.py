"""``kiq new job``: the files it writes, the names it derives, and that its output passes its
own tests (issue 7 §4: "the generator's output passes its own tests")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import kiq
from kiq.cli import main
from kiq.generator import JobName, generate_job


def run_generated_tests(project: Path) -> subprocess.CompletedProcess[str]:
    """pytest on the project's generated tests, in a fresh interpreter with it on the path."""
    env = dict(os.environ, PYTHONPATH=str(project))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/jobs"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def run_plain_pytest(project: Path) -> subprocess.CompletedProcess[str]:
    """The ``pytest`` command itself, which (unlike ``python -m pytest``) does not put
    the working directory on sys.path; only kiq's own source is on PYTHONPATH."""
    script = Path(sys.executable).with_name("pytest")
    if not script.is_file():
        pytest.skip(f"no pytest script next to {sys.executable}")
    kiq_src = str(Path(kiq.__file__).resolve().parents[1])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": kiq_src}
    return subprocess.run(
        [str(script), "-q", "-p", "no:cacheprovider", "tests/jobs"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
def test_generated_sync_job_passes_its_own_tests(tmp_path: Path) -> None:
    """A default job (queue default, retry 25) and its five tests pass as written."""
    assert main(["new", "job", "CalculateMetrics", "--dir", str(tmp_path)]) == 0

    result = run_generated_tests(tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 passed" in result.stdout


@pytest.mark.slow
def test_generated_async_job_with_options_passes_its_own_tests(tmp_path: Path) -> None:
    """--async --queue --retry false: an async perform whose tests check those options."""
    argv = ["new", "job", "SendDigest", "--async", "--queue", "mailers", "--retry", "false"]
    assert main([*argv, "--dir", str(tmp_path)]) == 0

    result = run_generated_tests(tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 passed" in result.stdout


@pytest.mark.slow
def test_generated_tests_pass_under_plain_pytest(tmp_path: Path) -> None:
    """``pytest`` (not ``python -m pytest``) finds the ``jobs`` package: it used to fail
    with ModuleNotFoundError: No module named 'jobs'."""
    assert main(["new", "job", "CalculateMetrics", "--dir", str(tmp_path)]) == 0

    result = run_plain_pytest(tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 passed" in result.stdout


def test_existing_root_conftest_is_kept(tmp_path: Path) -> None:
    """A project's own conftest.py is left as it is (it puts the root on sys.path too)."""
    (tmp_path / "conftest.py").write_text("# ours\n")

    written = generate_job("CalculateMetrics", base=tmp_path)

    assert tmp_path / "conftest.py" not in written
    assert (tmp_path / "conftest.py").read_text() == "# ours\n"


def test_writes_the_job_its_test_and_the_package(tmp_path: Path) -> None:
    """The job goes to jobs/, its test to tests/jobs/, and jobs/ becomes a package."""
    written = generate_job("CalculateMetrics", base=tmp_path)

    assert [p.relative_to(tmp_path).as_posix() for p in written] == [
        "jobs/__init__.py",
        "conftest.py",
        "jobs/calculate_metrics_job.py",
        "tests/jobs/test_calculate_metrics_job.py",
    ]
    assert not (tmp_path / "tests" / "jobs" / "__init__.py").exists()


def test_options_become_class_keywords(tmp_path: Path) -> None:
    """--queue and --retry are written as the job's class keywords."""
    generate_job("Export", base=tmp_path, queue="exports", retry=3)

    source = (tmp_path / "jobs" / "export_job.py").read_text()
    assert 'class ExportJob(kiq.Job, queue="exports", retry=3):' in source


def test_async_option_writes_async_perform(tmp_path: Path) -> None:
    """--async writes ``async def perform`` and awaits the lookup."""
    generate_job("Export", base=tmp_path, is_async=True)

    source = (tmp_path / "jobs" / "export_job.py").read_text()
    assert "async def perform(self, record_id: int) -> None:" in source
    assert "record = await self.find(record_id)" in source


def test_existing_package_init_is_kept(tmp_path: Path) -> None:
    """A second job leaves the jobs/__init__.py already there untouched."""
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "__init__.py").write_text("MINE = 1\n")
    (tmp_path / "conftest.py").write_text("")  # written with the first job

    written = generate_job("Cleanup", base=tmp_path)

    assert (tmp_path / "jobs" / "__init__.py").read_text() == "MINE = 1\n"
    assert len(written) == 2


def test_refuses_to_overwrite_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An existing test file stops the generator: exit 2, the file named, nothing written."""
    test_file = tmp_path / "tests" / "jobs" / "test_calculate_metrics_job.py"
    test_file.parent.mkdir(parents=True)
    test_file.write_text("# mine\n")

    code = main(["new", "job", "CalculateMetrics", "--dir", str(tmp_path)])

    assert code == 2
    err = capsys.readouterr().err
    assert str(test_file) in err
    assert "never overwrites" in err
    assert test_file.read_text() == "# mine\n"
    assert not (tmp_path / "jobs").exists()


@pytest.mark.parametrize(
    "raw",
    ["CalculateMetrics", "CalculateMetricsJob", "calculate_metrics", "calculate_metrics_job"],
)
def test_name_forms_give_one_job(raw: str) -> None:
    """CamelCase or snake_case, with or without the Job suffix, name the same job."""
    assert JobName.parse(raw) == JobName(
        class_name="CalculateMetricsJob",
        module="calculate_metrics_job",
        phrase="calculate metrics",
    )


def test_acronyms_split_into_words() -> None:
    """Runs of capitals are one word: HTTPSync -> http_sync_job, HTTPSyncJob."""
    assert JobName.parse("HTTPSync") == JobName("HTTPSyncJob", "http_sync_job", "http sync")


@pytest.mark.parametrize("raw", ["", "9Lives", "send-digest", "jobs.Send", "Job"])
def test_unusable_names_exit_2(
    raw: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A name that cannot be a class name is refused with an example of one that can."""
    assert main(["new", "job", raw, "--dir", str(tmp_path)]) == 2

    assert "e.g." in capsys.readouterr().err
    assert not (tmp_path / "jobs").exists()


def test_bad_retry_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--retry takes a count, true or false; anything else is an argparse error (exit 2)."""
    with pytest.raises(SystemExit) as exc_info:
        main(["new", "job", "X", "--retry", "often", "--dir", str(tmp_path)])

    assert exc_info.value.code == 2
    assert "--retry 'often'" in capsys.readouterr().err


def test_prints_each_file_created(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The command lists what it wrote, one ``created <path>`` per file."""
    main(["new", "job", "Cleanup", "--dir", str(tmp_path)])

    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"created {tmp_path / 'jobs' / '__init__.py'}",
        f"created {tmp_path / 'conftest.py'}",
        f"created {tmp_path / 'jobs' / 'cleanup_job.py'}",
        f"created {tmp_path / 'tests' / 'jobs' / 'test_cleanup_job.py'}",
    ]
