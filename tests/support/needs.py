"""What a test needs beyond pip: one place that checks it, and skips or fails (issue 12).

The README's test command (``pip install -e ".[web,test]" && python -m pytest``) must pass
on a machine with only Python and pip. A test that needs Ruby, a Ruby gem, Chromium, a
TLS-capable redis-server or another system package asks here first::

    needs_binary("puma", package="puma")
    needs_ruby_gem("redis-namespace", require="redis/namespace")

Where the thing is missing the test SKIPS, and the reason starts with ``PREFIX`` and says
how to install it. CI installs all of them (.ci/run), so a skip there would hide a broken
image: .ci/run exports ``KIQ_REQUIRE_SYSTEM=1``, and then the same check FAILS the test
with the same message. The check is at the source, so no output parsing can miss one, and
tests/test_needs.py checks that the test tree has no other way to skip for a missing
program.

Probes (``ruby -e 'require ...'``) run once per process and are cached.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from typing import NoReturn

import pytest

PREFIX = "missing system dependency:"
REQUIRE_ENV = "KIQ_REQUIRE_SYSTEM"  # set (non-empty, not "0"): a missing dependency fails
PROBE_TIMEOUT = 30.0  # seconds a `ruby -e` probe may take (a cold Ruby loads in ~0.2 s)


def required() -> bool:
    """True when a missing dependency must fail the test (CI), not skip it."""
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def missing(what: str, install: str) -> NoReturn:
    """Skip (or, with KIQ_REQUIRE_SYSTEM set, fail) because ``what`` is not installed."""
    message = f"{PREFIX} {what}; install it with {install}"
    if required():
        pytest.fail(f"{message}. {REQUIRE_ENV} is set, so this is a failure", pytrace=False)
    pytest.skip(message)


def apt(packages: str) -> str:
    """How to install Debian ``packages``, as the skip reasons say it."""
    return f"`apt-get install {packages}` (Debian 12; .ci/run installs it)"


def needs_binary(name: str, *, package: str | None = None) -> str:
    """The path of program ``name`` on PATH; skip/fail naming the Debian ``package``."""
    found = shutil.which(name)
    if found is None:
        missing(f"the `{name}` program is not on PATH", apt(package or name))
    return found


@functools.cache
def _ruby_probe(ruby: str, script: str) -> tuple[int, str]:
    done = subprocess.run(
        [ruby, "-e", script], capture_output=True, text=True, timeout=PROBE_TIMEOUT, check=False
    )
    return done.returncode, (done.stdout.strip() or done.stderr.strip())[:300]


def needs_ruby_gem(
    gem: str,
    *,
    require: str | None = None,
    package: str | None = None,
    version: tuple[str, str] | None = None,
) -> None:
    """Ruby can ``require`` the gem (default: its name); skip/fail otherwise.

    ``package`` is the Debian package (default ``ruby-<gem>``). ``version`` is a constant
    and the prefix its value must have, e.g. ``("Sidekiq::VERSION", "6.")``.
    """
    package = package or f"ruby-{gem}"
    ruby = needs_binary("ruby", package=f"ruby {package}")
    script = f"require {require or gem!r}"
    if version is not None:
        constant, prefix = version
        script += f"; v = {constant}.to_s; print v; exit(v.start_with?({prefix!r}) ? 0 : 3)"
    status, output = _ruby_probe(ruby, script)
    if status == 3 and version is not None:
        missing(f"Ruby gem {gem} {version[1]}x (found {output})", apt(package))
    if status != 0:
        first = output.splitlines()[0] if output else f"exit {status}"
        missing(f"Ruby gem {gem} ({first})", apt(package))


def needs_module(name: str, *, install: str) -> None:
    """Python module ``name`` imports (one pip cannot always provide, or an optional one)."""
    try:
        __import__(name)
    except ImportError as exc:
        missing(f"the Python module {name} ({exc})", install)
