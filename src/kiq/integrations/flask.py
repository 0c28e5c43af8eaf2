"""Flask: the ``Kiq`` extension, configured from ``app.config["KIQ_*"]``.

::

    app = Flask(__name__)
    app.config["KIQ_REDIS_URL"] = "redis://localhost:6379/0"
    app.config["KIQ_QUEUES"] = [["critical", 3], "default"]
    kiq_ext = Kiq(app)           # or Kiq() at import, kiq_ext.init_app(app) in a factory

    @app.post("/signup")
    def signup():
        WelcomeEmail.perform_async(user.id)

``KIQ_<FIELD>`` keys are Config fields upper-cased (``KIQ_REDIS_URL``,
``KIQ_CONCURRENCY``, ``KIQ_QUEUES``, ...); init_app applies them to the default
Config, which ``perform_async`` uses, and keeps it in ``app.extensions["kiq"]``.

It also makes jobs run inside the app: each job a worker runs is wrapped in
``app.app_context()`` (so ``current_app`` and Flask-SQLAlchemy's ``db.session``
work, and are cleaned up after it, as after a request), and ``flask kiq worker``
runs ``kiq worker`` with the app loaded, taking the same flags (``-r app.jobs -c 5``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any, Final

try:
    import click
    from flask import Flask, current_app
    from flask.cli import with_appcontext
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "kiq.integrations.flask needs Flask: pip install 'kiq[integrations]' (or flask)"
    ) from exc

from kiq.cli import add_worker_options, run_worker
from kiq.config import Config, get_default
from kiq.errors import ConfigError, KiqError
from kiq.integrations.settings import FIELDS, apply, config_values, worker_base
from kiq.payload import Payload

__all__ = ["AppContext", "Kiq"]

PREFIX: Final = "KIQ_"
EXTENSION: Final = "kiq"  # app.extensions key


class Kiq:
    """The Flask extension; see the module docstring."""

    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> Config:
        """Apply the app's ``KIQ_*`` config to the default Config and return it."""
        config = apply(get_default(), settings_values(app))
        config.server_middleware.add(AppContext(app))
        app.extensions[EXTENSION] = config
        app.cli.add_command(kiq_command)
        return config


def settings_values(app: Flask) -> dict[str, Any]:
    """``KIQ_REDIS_URL`` -> ``redis_url``: the app's kiq keys as Config values."""
    raw: dict[str, Any] = {}
    for key, value in app.config.items():
        if not key.startswith(PREFIX):
            continue
        name = key.removeprefix(PREFIX).lower()
        if name not in FIELDS:
            raise ConfigError(
                f"app.config[{key!r}] is not a kiq setting; KIQ_ keys are Config fields "
                f"upper-cased, e.g. KIQ_REDIS_URL, KIQ_CONCURRENCY, KIQ_QUEUES"
            )
        raw[name] = value
    return config_values(raw, "app.config KIQ_*")


class AppContext:
    """Server middleware: run each job inside ``app.app_context()``.

    For ``def perform`` jobs; an ``async def perform`` job runs on the worker's event
    loop after this returns, outside the context.
    """

    def __init__(self, app: Flask) -> None:
        self.app = app

    def __call__(
        self, job: Any, payload: Payload, queue: str, call_next: Callable[[], None]
    ) -> None:
        with self.app.app_context():
            call_next()


@click.command(
    "kiq",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    add_help_option=False,
)
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
@with_appcontext
def kiq_command(argv: Sequence[str]) -> None:
    """Run kiq with the app loaded: flask kiq worker [kiq worker's flags]."""
    parser = argparse.ArgumentParser(prog="flask kiq", description="kiq with the Flask app")
    sub = parser.add_subparsers(dest="command", required=True, metavar="worker")
    add_worker_options(sub.add_parser("worker", help="run a worker process"))
    args = parser.parse_args(argv)
    default = get_default()
    base = worker_base(settings_values(current_app), default)
    try:
        code = run_worker(args, base)
    except KiqError as exc:
        error = click.ClickException(f"kiq: {exc}")
        error.exit_code = 2  # as `kiq worker` exits on a configuration error
        raise error from exc
    if code:
        raise SystemExit(code)
