"""``python -m kiq`` runs kiq's CLI, even when another ``kiq`` comes first on the PATH.

Sidekiq 8.1.2+ ships an executable named ``kiq`` (its terminal UI, issue 15 point 4);
the fake one here stands for it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import kiq


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kiq", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_python_m_kiq_runs_worker_help() -> None:
    done = run("worker", "--help")

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: kiq worker")
    assert "--queue" in done.stdout


def test_python_m_kiq_is_not_shadowed_by_another_kiq_on_the_path(tmp_path: Path) -> None:
    fake = tmp_path / "kiq"
    fake.write_text("#!/bin/sh\necho 'Sidekiq TUI'\n")
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    shadowed = subprocess.run(["kiq", "--version"], capture_output=True, text=True, env=env)
    assert shadowed.stdout.strip() == "Sidekiq TUI"  # what a bare `kiq` would run here

    done = run("--version", env=env)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"kiq {kiq.__version__}"
