"""The deployment examples in deploy/ (issue 8 §6) say what they must: every kiq command
line in them parses with kiq's own CLI, systemd and Kubernetes give a stop more time
than kiq's ``-t``, and the unit uses ``Type=notify`` with a watchdog kiq can keep."""

from __future__ import annotations

import configparser
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from kiq.cli import build_parser
from kiq.config import Config

DEPLOY = Path(__file__).parent.parent / "deploy"


def kiq_args(command: list[str]) -> Any:
    """Parse a ``kiq ...`` command line with kiq's parser (SystemExit if a flag is wrong)."""
    assert Path(command[0]).name == "kiq", command
    return build_parser().parse_args(command[1:])


@pytest.fixture(scope="module")
def unit() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep the case
    parser.read(DEPLOY / "systemd" / "kiq.service")
    return parser["Service"]


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    docs = yaml.safe_load_all((DEPLOY / "kubernetes" / "kiq.yaml").read_text())
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def test_systemd_unit_is_type_notify_with_a_watchdog_kiq_can_keep(unit):
    """Type=notify, and WatchdogSec at least twice the default heartbeat interval."""
    assert unit["Type"] == "notify"
    assert float(unit["WatchdogSec"]) >= 2 * Config().heartbeat_interval


def test_systemd_gives_the_stop_more_time_than_kiqs_timeout(unit):
    """TimeoutStopSec exceeds ExecStart's -t, so systemd never SIGKILLs a clean stop;
    reload quiets (TSTP) as Sidekiq's unit does."""
    args = kiq_args(shlex.split(unit["ExecStart"]))

    assert args.command == "worker"
    assert float(unit["TimeoutStopSec"]) > args.timeout
    assert "-TSTP $MAINPID" in unit["ExecReload"]


def test_kubernetes_grace_period_covers_quiet_and_timeout(manifests):
    """terminationGracePeriodSeconds > preStop's `kiq quiet --wait` + the worker's -t."""
    pod = manifests["Deployment/kiq-worker"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    worker = kiq_args(container["args"])
    quiet = kiq_args(container["lifecycle"]["preStop"]["exec"]["command"])

    assert quiet.command == "quiet"
    assert quiet.local
    assert pod["terminationGracePeriodSeconds"] > quiet.wait + worker.timeout


def test_kubernetes_commands_are_kiq_commands(manifests):
    """The liveness probe and the Web UI's container run kiq commands that parse."""
    (worker,) = manifests["Deployment/kiq-worker"]["spec"]["template"]["spec"]["containers"]
    (web,) = manifests["Deployment/kiq-web"]["spec"]["template"]["spec"]["containers"]

    assert kiq_args(worker["livenessProbe"]["exec"]["command"]).command == "ping"
    assert kiq_args(web["args"]).command == "web"


def test_dockerfile_runs_kiq_as_pid_1_with_a_health_check():
    """CMD and HEALTHCHECK are exec-form kiq commands (kiq gets TERM itself)."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]
    check = json.loads(re.search(r"HEALTHCHECK .*CMD (\[.*\])$", text, re.M).group(1))  # type: ignore[union-attr]

    assert kiq_args(cmd).command == "worker"
    assert kiq_args(check).command == "ping"
    assert "STOPSIGNAL SIGTERM" in text
