"""``kiq web`` as a user starts it (a real subprocess): the port and Redis are checked
before it says where it serves, a missing web extra is one line with the pip command,
and SIGTERM leaves no embedded valkey-server behind (issue 12, defects 7, 8 and 9)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiq import embedded
from tests.support.servers import ROOT, free_port
from tests.support.wait import wait_until
from tests.test_cli import run_kiq
from tests.test_cli_errors import one_line

pytestmark = pytest.mark.timeout(90)


def gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


@pytest.fixture
def embedded_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A KIQ_EMBEDDED_DIR of the test's own; whatever server it holds is stopped after."""
    directory = tmp_path_factory.mktemp("emb")
    yield directory
    embedded.stop(directory)


def kiq_process(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kiq.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KIQ_", "REDIS_"))}
    return {**env, **extra}


def test_web_without_its_extra_says_how_to_install_it(tmp_path: Path) -> None:
    """No uvicorn: one line with ``pip install 'kiq[web]'``, not an ImportError traceback."""
    code = (
        "import sys; sys.modules['uvicorn'] = None\n"
        "from kiq.cli import main\n"
        "raise SystemExit(main(['web']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )

    line = one_line(result.stderr)
    assert result.returncode == 2
    assert "the Web UI needs the web extra (uvicorn is missing)" in line
    assert "pip install 'kiq[web]'" in line


def test_web_on_a_busy_port_says_so_before_anything_else(tmp_path: Path, redis_url: str) -> None:
    """A taken port is one line, and "kiq web on http://..." is never printed."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]

        result = run_kiq("web", "--port", str(port), cwd=tmp_path, redis_url=redis_url)

    line = one_line(result.stderr)
    assert result.returncode == 2
    assert result.stdout == ""
    assert line == (
        f"kiq: --port {port}: 127.0.0.1:{port} is already in use by another program; "
        f"stop it, or choose another port with --port"
    )


def test_web_with_an_unreachable_redis_says_so_at_start(tmp_path: Path) -> None:
    """Redis is checked at start: one line naming the URL, nothing served."""
    url = f"redis://127.0.0.1:{free_port()}/0"

    result = run_kiq("web", "--port", str(free_port()), cwd=tmp_path, redis_url=url)

    line = one_line(result.stderr)
    assert result.returncode == 2
    assert result.stdout == ""
    assert line.startswith(f"kiq: cannot reach Redis at {url}: ")


@pytest.mark.slow
def test_sigterm_to_web_stops_the_embedded_server(tmp_path: Path, embedded_dir: Path) -> None:
    """``kiq web`` on the embedded default, then SIGTERM: its valkey-server goes too
    (it used to stay, orphaned: uvicorn re-raised TERM, so atexit never ran)."""
    proc = kiq_process(
        "web",
        "--port",
        str(free_port()),
        cwd=tmp_path,
        env=clean_env(KIQ_EMBEDDED_DIR=str(embedded_dir)),
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("kiq web on http://127.0.0.1:")
        server = embedded.status(embedded_dir)
        assert server.running
        assert server.pid is not None

        proc.send_signal(signal.SIGTERM)

        assert proc.wait(30) == 0
        wait_until(lambda: gone(server.pid), timeout=15)
    finally:
        proc.kill()
        proc.communicate(timeout=10)  # reaps it and closes the pipes
    assert not embedded.status(embedded_dir).running


def test_status_help_names_every_place_it_looks_for_redis(tmp_path: Path) -> None:
    """``kiq status --help``: the flag, both variables and the embedded server."""
    result = run_kiq("status", "--help", cwd=tmp_path)

    text = " ".join(result.stdout.split())
    assert "Redis URL (else KIQ_REDIS_URL, REDIS_URL, the embedded server if it runs)" in text


def test_demo_extra_brings_the_web_extra() -> None:
    """The ``kiq web`` command that ``kiq demo`` prints works after ``pip install ".[demo]"``."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]

    assert set(extras["web"]) <= set(extras["demo"])


def get(port: int, host: str) -> int:
    """The status of ``GET /`` on 127.0.0.1:``port`` sent with ``Host: host``."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.mark.slow
def test_allowed_host_flag_lets_the_ui_answer_to_that_name(tmp_path: Path, redis_url: str) -> None:
    """``--allowed-host kiq.example.test``: that Host is served, another still refused
    (the refusal tells users to pass this flag)."""
    port = free_port()
    proc = kiq_process(
        "web",
        "--port",
        str(port),
        "--allowed-host",
        "kiq.example.test",
        cwd=tmp_path,
        env=clean_env(KIQ_REDIS_URL=redis_url),
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("kiq web on http://")

        assert get(port, f"kiq.example.test:{port}") == 200
        assert get(port, f"other.example.test:{port}") == 400
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
