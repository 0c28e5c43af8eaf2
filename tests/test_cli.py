"""The ``kiq`` command: help and version, and start-up mistakes that must end with a
clear one-line message and exit status 2 (never a traceback, never a hang). Flag
precedence is checked in-process through ``load_config``."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import kiq
from kiq import cli
from kiq.config import Config

pytestmark = pytest.mark.timeout(60)


def run_kiq(
    *args: str, cwd: Path, redis_url: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``kiq ARGS`` as a subprocess (the same code the console script calls)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KIQ_", "REDIS_"))}
    if redis_url is not None:
        env["KIQ_REDIS_URL"] = redis_url
    return subprocess.run(
        [sys.executable, "-m", "kiq.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def parse(*argv: str) -> Config:
    """What ``kiq worker ARGV`` would run with, built in this process."""
    args = cli.build_parser().parse_args(["worker", *argv])
    return cli.load_config(args)


# -- help and version ---------------------------------------------------------------------


def test_console_script_points_at_cli_main() -> None:
    """``pip install kiq`` puts a ``kiq`` command on PATH that runs kiq.cli:main."""
    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "kiq"]

    assert script.value == "kiq.cli:main"


def test_version_prints_the_package_version(tmp_path: Path) -> None:
    """``kiq --version`` prints ``kiq <version>`` and exits 0."""
    result = run_kiq("--version", cwd=tmp_path)

    assert (result.returncode, result.stdout.strip()) == (0, f"kiq {kiq.__version__}")


def test_worker_help_lists_sidekiqs_flags(tmp_path: Path) -> None:
    """``kiq worker --help`` exits 0 and documents Sidekiq's flags."""
    result = run_kiq("worker", "--help", cwd=tmp_path)

    assert result.returncode == 0
    for flag in ("-r", "-q", "-c", "-C", "-e", "-t", "-g", "-v"):
        assert f"{flag} " in result.stdout or f"{flag}," in result.stdout


def test_no_command_is_a_usage_error(tmp_path: Path) -> None:
    """Plain ``kiq`` prints usage and exits 2 (argparse's convention)."""
    result = run_kiq(cwd=tmp_path)

    assert result.returncode == 2
    assert "usage: kiq" in result.stderr


# -- start-up mistakes ---------------------------------------------------------------------


def test_bad_queue_weight_exits_2_with_the_fix(tmp_path: Path) -> None:
    """``-q default,x`` is refused before anything starts, naming the spec and the fix."""
    result = run_kiq("worker", "-q", "default,x", cwd=tmp_path)

    assert result.returncode == 2
    assert result.stderr.startswith("kiq: queue 'default,x': weight 'x'")
    assert "e.g. -q default,3" in result.stderr
    assert "Traceback" not in result.stderr


def test_queue_listed_twice_exits_2(tmp_path: Path) -> None:
    """``-q default -q default`` is refused (Sidekiq: "cannot be defined twice")."""
    result = run_kiq("worker", "-q", "default", "-q", "default,2", cwd=tmp_path)

    assert result.returncode == 2
    assert "listed twice" in result.stderr


def test_missing_config_file_exits_2_naming_it(tmp_path: Path) -> None:
    """``-C`` pointing at nothing says which file could not be read."""
    result = run_kiq("worker", "-C", "config/missing.yml", cwd=tmp_path)

    assert result.returncode == 2
    assert "kiq: config file config/missing.yml: cannot read it" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_value_in_config_file_exits_2_naming_key_and_value(tmp_path: Path) -> None:
    """A bad setting in the file is reported with its key, value and what is allowed."""
    (tmp_path / "kiq.yml").write_text(":concurrency: lots\n")

    result = run_kiq("worker", "-C", "kiq.yml", cwd=tmp_path)

    assert result.returncode == 2
    assert "concurrency: 'lots' is not allowed; use a whole number >= 1" in result.stderr


def test_unknown_require_exits_2_naming_the_module(tmp_path: Path, redis_url: str) -> None:
    """``-r`` of a module that does not exist says what it tried and what -r accepts."""
    result = run_kiq("worker", "-r", "no_such_app.jobs", cwd=tmp_path, redis_url=redis_url)

    assert result.returncode == 2
    assert result.stderr.startswith("kiq: -r no_such_app.jobs: cannot import it")
    assert "give a module on sys.path" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_concurrency_flag_is_a_usage_error(tmp_path: Path) -> None:
    """``-c many`` fails in argument parsing with exit 2."""
    result = run_kiq("worker", "-c", "many", cwd=tmp_path)

    assert result.returncode == 2
    assert "-c/--concurrency: invalid int value: 'many'" in result.stderr


# -- flags feed Config's precedence --------------------------------------------------------


def test_flags_beat_environment_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``-c`` beats KIQ_CONCURRENCY, which beats the file."""
    (tmp_path / "kiq.yml").write_text(":concurrency: 5\n:timeout: 9\n")
    monkeypatch.setenv("KIQ_CONCURRENCY", "4")

    config = parse("-C", str(tmp_path / "kiq.yml"), "-c", "3")

    assert (config.concurrency, config.timeout) == (3, 9)


def test_queue_flags_replace_the_files_queues(tmp_path: Path) -> None:
    """``-q`` flags, in order, replace the file's :queues: entirely."""
    (tmp_path / "kiq.yml").write_text(":queues:\n  - low\n")

    config = parse("-C", str(tmp_path / "kiq.yml"), "-q", "critical,3", "-q", "default")

    assert config.queues == [("critical", 3), ("default", 0)]


def test_environment_flag_selects_the_file_section(tmp_path: Path) -> None:
    """``-e production`` applies the ``production:`` section of the file."""
    (tmp_path / "kiq.yml").write_text(":concurrency: 5\nproduction:\n  :concurrency: 25\n")

    config = parse("-C", str(tmp_path / "kiq.yml"), "-e", "production")

    assert (config.environment, config.concurrency) == ("production", 25)


def test_config_sidekiq_yml_is_found_without_C(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like Sidekiq, an existing config/sidekiq.yml in the working directory is read."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "sidekiq.yml").write_text(":concurrency: 7\n")
    monkeypatch.chdir(tmp_path)

    assert parse().concurrency == 7
