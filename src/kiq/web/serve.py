"""``kiq web``: serve the Web UI with uvicorn (bound to 127.0.0.1 unless told otherwise).

Before it says where it serves, it checks what would otherwise fail later: the
address must be free (the socket is bound here and handed to uvicorn, so there is no
window in which another program could take it) and Redis must answer; either
problem is one line and exit status 2. On SIGTERM it stops as on Ctrl-C, so that
the process exits normally and gives up its lease on the embedded server
(kiq.embedded stops the server when the last lease goes).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
from types import FrameType

import uvicorn

from kiq.config import Config, find_file, set_default, wait_for_redis
from kiq.errors import ConfigError
from kiq.web.app import create_app
from kiq.web.security import basic_auth

log = logging.getLogger("kiq.web")

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
BACKLOG = 2048  # uvicorn's default


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


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``; ConfigError naming the address if it is taken."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (socket.gaierror, OverflowError) as exc:
        raise ConfigError(
            f"--host {host} --port {port}: not an address to listen on ({exc}); "
            f"use e.g. --host 127.0.0.1 --port 7433"
        ) from exc
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
    try:
        sock.bind(address)
        sock.listen(BACKLOG)  # from now on connections wait in the backlog for uvicorn
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"--port {port}: {host}:{port} is already in use by another program; stop "
                f"it, or choose another port with --port"
            ) from exc
        raise ConfigError(
            f"--host {host} --port {port}: cannot listen there ({exc.strerror}); choose another "
            f"address with --host and --port"
        ) from exc
    return sock


def _stop_on_term(signum: int, frame: FrameType | None) -> None:
    # uvicorn shuts down gracefully on TERM, then raises the signal again under the
    # handler it found: this one, so the process exits and atexit still runs.
    raise SystemExit(0)


def run_web(args: argparse.Namespace) -> int:
    """Build the Config (file < env < flags), check the port and Redis, serve until stopped."""
    pair = credentials(args.basic_auth)
    if pair is None and args.host not in LOCAL_HOSTS:
        log.warning("kiq web listens on %s with no authentication; use --basic-auth", args.host)
    config = Config.load(
        find_file(args.config), environment=args.environment, redis_url=args.redis_url
    )
    sock = listen(args.host, args.port)
    try:
        config.ensure_redis()
        wait_for_redis(config, 0)
        set_default(config)
        app = create_app(
            config,
            auth=basic_auth(*pair) if pair else None,
            prefix=args.prefix,
            allowed_hosts=getattr(args, "allowed_host", None) or None,
        )
        signal.signal(signal.SIGTERM, _stop_on_term)
        print(
            f"kiq web on http://{args.host}:{args.port}{args.prefix}/ "
            f"(Redis {config.store.safe_url})",
            flush=True,
        )
        server = uvicorn.Server(
            uvicorn.Config(app, host=args.host, port=args.port, log_level="warning")
        )
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0
