"""``kiq web``: serve the Web UI with uvicorn (bound to 127.0.0.1 unless told otherwise)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import uvicorn

from kiq.config import Config, set_default
from kiq.errors import ConfigError
from kiq.web.app import create_app
from kiq.web.security import basic_auth

log = logging.getLogger("kiq.web")

DEFAULT_FILES = ("config/kiq.yml", "config/sidekiq.yml")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def credentials(flag: str | None, env: dict[str, str] | None = None) -> tuple[str, str] | None:
    """(user, password) from ``--basic-auth USER:PASSWORD``, else KIQ_WEB_USER/PASSWORD."""
    env = dict(os.environ) if env is None else env
    if flag is None and not env.get("KIQ_WEB_USER"):
        return None
    if flag is None:
        user, password = env["KIQ_WEB_USER"], env.get("KIQ_WEB_PASSWORD", "")
    else:
        user, _, password = flag.partition(":")
    if not user or not password:
        raise ConfigError(
            "basic auth needs a user and a password, both non-empty: --basic-auth USER:PASSWORD "
            "or KIQ_WEB_USER and KIQ_WEB_PASSWORD"
        )
    return user, password


def run_web(args: argparse.Namespace) -> int:
    """Build the Config (file < env < flags), the app, and run uvicorn until stopped."""
    pair = credentials(args.basic_auth)
    if pair is None and args.host not in LOCAL_HOSTS:
        log.warning("kiq web listens on %s with no authentication; use --basic-auth", args.host)
    path = args.config or next((p for p in DEFAULT_FILES if Path(p).is_file()), None)
    config = Config.load(path, environment=args.environment, redis_url=args.redis_url)
    set_default(config)
    app = create_app(config, auth=basic_auth(*pair) if pair else None, prefix=args.prefix)
    print(
        f"kiq web on http://{args.host}:{args.port}{args.prefix}/ (Redis {config.store.safe_url})"
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
