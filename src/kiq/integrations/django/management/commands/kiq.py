"""``manage.py kiq worker [kiq worker's flags]``: a kiq worker process with Django set up.

Django has run ``setup()`` (settings, app registry, ready() hooks) before ``handle``,
so jobs use the ORM as views do. The worker is ``kiq worker`` itself
(``kiq.cli.run_worker``) with:

1. every installed app's ``jobs`` module added to ``-r``, so jobs register;
2. ``settings.KIQ`` under the flags (flags > KIQ > ``KIQ_*`` env > file > defaults);
3. what app code set on the default Config in ready(): middleware, error and death
   handlers, lifecycle hooks and recurring jobs;
4. ``CloseOldConnections`` around each job, as Django does around each request.
"""

from __future__ import annotations

import argparse
from typing import Any, Final

from django.apps import apps  # type: ignore[import-untyped]  # Django ships no hints
from django.conf import settings  # type: ignore[import-untyped]
from django.core.management.base import (  # type: ignore[import-untyped]
    BaseCommand,
    CommandError,
)
from django.utils.module_loading import module_has_submodule  # type: ignore[import-untyped]

from kiq.cli import add_worker_options, run_worker
from kiq.config import Config, get_default
from kiq.errors import KiqError
from kiq.integrations.django import SETTING, CloseOldConnections, settings_values
from kiq.integrations.settings import worker_base

JOBS_MODULE: Final = "jobs"  # <app>/jobs.py, as Celery's autodiscover finds tasks.py


class Command(BaseCommand):  # type: ignore[misc]  # BaseCommand is Any without hints
    help = "Run kiq with Django set up: manage.py kiq worker [-q QUEUE] [-c N] [-t SECONDS] ..."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="kiq_command", required=True, metavar="worker")
        worker = sub.add_parser("worker", help="run a worker process (kiq worker's flags)")
        add_worker_options(worker)
        # Django reads these anywhere on the command line before the command runs; accept
        # them after "worker" too instead of failing with "unrecognized arguments".
        for flag in ("--settings", "--pythonpath"):
            worker.add_argument(flag, default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    def handle(self, *args: Any, **options: Any) -> None:
        namespace = argparse.Namespace(**options)
        namespace.require = [*app_job_modules(), *namespace.require]
        try:
            code = run_worker(namespace, django_worker_base(get_default()))
        except KiqError as exc:
            raise CommandError(f"kiq: {exc}", returncode=2) from exc
        if code:
            raise CommandError(f"kiq worker exited with status {code}", returncode=code)


def app_job_modules() -> list[str]:
    """``<app>.jobs`` for every installed app that has one."""
    return [
        f"{app.name}.{JOBS_MODULE}"
        for app in apps.get_app_configs()
        if module_has_submodule(app.module, JOBS_MODULE)
    ]


def django_worker_base(default: Config) -> dict[str, Any]:
    """settings.KIQ plus the code-set parts of the default Config, for run_worker's base."""
    base = worker_base(settings_values(getattr(settings, SETTING, {})), default)
    base["server_middleware"].prepend(CloseOldConnections())
    return base
