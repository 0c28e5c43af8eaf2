"""The ``kiq`` command: ``kiq worker``, ``kiq demo``, ``kiq web``, ``kiq embedded``, ``kiq new``,
and the operator's ``kiq status``, ``kiq ping``, ``kiq quiet``, ``kiq stop``, ``kiq mark``
(kiq.status).

``kiq worker`` takes Sidekiq's flags (``-r -q -c -C -e -t -g -v``), builds one Config
(flags > env > file > defaults, see kiq.config), starts the embedded server if no URL
is set, waits for Redis (``--redis-wait``: a deploy or a failover must not need a
supervisor's restart loop), imports the app so its jobs register, installs the
signal table (TERM/INT stop, TSTP quiet, TTIN thread dump) and runs a Launcher on
the main thread. This is the only module that configures logging.

Errors: every command ends a failure with one line on stderr, naming what, the value
(URLs with their password as ``***``) and the fix; ``--verbose`` adds the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import re
import runpy
import signal
import sys
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Final

from kiq import __version__, generator
from kiq import log as kiq_log
from kiq.capsule import FLAG_EXAMPLE, FLAG_SPELLING, Capsule
from kiq.capsule import parse_flag as parse_capsule_flag
from kiq.config import Config, find_file, parse_queue, set_default, wait_for_redis
from kiq.errors import ConfigError, KiqError
from kiq.store import redact

log = logging.getLogger("kiq")

SIGNALS = {"SIGTERM": "TERM", "SIGINT": "INT", "SIGTSTP": "TSTP", "SIGTTIN": "TTIN"}
WEB_PACKAGES = frozenset({"starlette", "jinja2", "uvicorn", "multipart", "python_multipart"})
REDIS_SOURCES = "else KIQ_REDIS_URL, REDIS_URL, the embedded server"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiq", description="Sidekiq for Python")
    parser.add_argument("-V", "--version", action="version", version=f"kiq {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker", help="run a worker process")
    add_worker_options(worker)
    demo = sub.add_parser("demo", help="run the example app end to end on the embedded Redis")
    demo.add_argument("--jobs", type=int, default=200, help="how many example jobs to enqueue")
    demo.add_argument("--keep", action="store_true", help="keep serving after the jobs are done")
    emb = sub.add_parser("embedded", help="status or stop of the embedded Redis")
    emb.add_argument("action", choices=["status", "stop"])
    new = sub.add_parser("new", help="generate a job and its tests: kiq new job NAME")
    generator.add_options(new)
    web = sub.add_parser("web", help="serve the Web UI (needs the kiq[web] extra)")
    web.add_argument("--host", default="127.0.0.1", help="address to bind, default 127.0.0.1")
    web.add_argument("--port", type=int, default=7433, help="port, default 7433")
    web.add_argument(
        "--basic-auth",
        metavar="USER:PASSWORD",
        help="require HTTP basic auth (default: KIQ_WEB_USER and KIQ_WEB_PASSWORD, if set)",
    )
    web.add_argument("--prefix", default="", help="serve under this path, e.g. /kiq")
    web.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name the UI answers to besides the loopback ones (kiq.example.com, "
        "*.example.com, * for any); repeatable",
    )
    web.add_argument("-C", "--config", help="YAML config (Redis URL, key prefix)")
    web.add_argument("-e", "--environment", help="section of the config file to apply")
    web.add_argument("--redis-url", help=f"Redis URL ({REDIS_SOURCES})")
    add_ops_commands(sub)
    add_migrate_command(sub)
    for name, command in sub.choices.items():
        if name != "worker":  # the worker's -v/--verbose also turns on debug logging
            command.add_argument(
                "--verbose", action="store_true", help="print the traceback of an error"
            )
    return parser


def add_ops_commands(sub: Any) -> None:
    """``kiq status|ping|quiet|stop|mark`` (issue 8 §5, §7); exit codes in kiq.status."""
    status = sub.add_parser("status", help="processes, queues, latency; exit 1 over a limit")
    status.add_argument(
        "--max-latency",
        action="append",
        default=[],
        metavar="QUEUE=SECONDS",
        help="exit 1 when the queue's oldest job has waited longer; repeatable",
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    ping = sub.add_parser("ping", help="liveness: exit 0 if Redis (and the process) answer")
    who = ping.add_mutually_exclusive_group()
    who.add_argument("--identity", help="the process identity (kiq status lists them)")
    who.add_argument("--pidfile", help="the process whose pid kiq worker --pidfile wrote")
    who.add_argument("--local", action="store_true", help="any kiq process on this host")
    ping.add_argument(
        "--max-age", type=float, default=30.0, help="seconds a heartbeat stays fresh, default 30"
    )
    for name, verb in (("quiet", "stop taking jobs"), ("stop", "shut down")):
        cmd = sub.add_parser(name, help=f"ask processes to {verb} (at their next heartbeat)")
        cmd.add_argument("identity", nargs="*", help="process identities (kiq status)")
        cmd.add_argument("--all", action="store_true", help="every live process")
        cmd.add_argument("--local", action="store_true", help="every process on this host")
        cmd.add_argument("--wait", type=float, metavar="SECONDS", help="wait until they have acted")
    mark = sub.add_parser("mark", help="record a deploy mark on the Web UI's metrics graphs")
    mark.add_argument("label", help="what was deployed, e.g. v1.2 or a git sha")
    cancel = sub.add_parser(
        "cancel", help="cancel jobs by jid: removed if waiting, stopped if running"
    )
    cancel.add_argument("jid", nargs="+", help="the jids (kiq exits 1 if one is not found)")
    for cmd in (status, ping, *(sub.choices[n] for n in ("quiet", "stop")), mark, cancel):
        cmd.add_argument("-C", "--config", help="YAML config (Redis URL, key prefix)")
        cmd.add_argument("-e", "--environment", help="section of the config file to apply")
        cmd.add_argument(
            "--redis-url",
            help="Redis URL (else KIQ_REDIS_URL, REDIS_URL, the embedded server if it runs)",
        )


def add_migrate_command(sub: Any) -> None:
    """``kiq cluster-migrate`` (issue 19; kiq.migrate, docs/cluster.md)."""
    cmd = sub.add_parser(
        "cluster-migrate", help="move a single Redis's queues and sets into a Redis Cluster"
    )
    cmd.add_argument("--from", dest="source", required=True, help="the single Redis URL")
    cmd.add_argument("--to", dest="target", required=True, help="redis+cluster://host:port,.../")
    cmd.add_argument("-C", "--config", help="YAML config of the cluster side (partitions...)")
    cmd.add_argument("-e", "--environment", help="section of the config file to apply")
    cmd.add_argument("--force", action="store_true", help="migrate while processes are live")


def run_migrate(args: argparse.Namespace) -> int:
    from kiq import migrate

    target = Config.load(
        find_file(args.config), environment=args.environment, redis_url=args.target
    )
    # The same settings (key prefix...) on the single Redis, without the cluster ones.
    source = dataclasses.replace(
        target, redis_url=args.source, cluster=False, partitions={}, wait_replicas=0
    )
    try:
        migrate.render(migrate.migrate(source, target, force=args.force))
    finally:
        source.close()
        target.close()
    return 0


def run_ops(args: argparse.Namespace) -> int:
    from kiq import status

    config = Config.load(
        find_file(args.config), environment=args.environment, redis_url=args.redis_url
    )
    try:
        if args.command == "status":
            return status.status(
                config, status.parse_thresholds(args.max_latency), as_json=args.json
            )
        if args.command == "ping":
            pid = status.read_pid(args.pidfile) if args.pidfile else None
            return status.ping(
                config, identity=args.identity, pid=pid, local=args.local, max_age=args.max_age
            )
        if args.command == "mark":
            return status.mark(config, args.label)
        if args.command == "cancel":
            return status.cancel(config, args.jid)
        if not (args.identity or args.all or args.local):
            raise ConfigError(f"kiq {args.command}: name processes, or use --all or --local")
        return status.signal(
            config, args.command, args.identity, every=args.all, local=args.local, wait=args.wait
        )
    finally:
        config.close()


def add_worker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-r",
        "--require",
        action="append",
        default=[],
        help="module (app.jobs) or file (app/jobs.py) defining jobs; repeatable",
    )
    parser.add_argument(
        "-q",
        "--queue",
        action="append",
        default=[],
        metavar="NAME[,WEIGHT]",
        help="queue to process, with an optional weight; repeatable",
    )
    parser.add_argument("-c", "--concurrency", type=int, help="job slots (threads), default 10")
    parser.add_argument("-C", "--config", help="YAML config (Sidekiq's format works unchanged)")
    parser.add_argument("-e", "--environment", help="section of the config file to apply")
    parser.add_argument("-t", "--timeout", type=float, help="shutdown grace in seconds, default 25")
    parser.add_argument(
        "-g",
        dest="g",
        action="append",
        default=[],
        metavar="NAME:QUEUES:CONCURRENCY[:MODE[:PROCESSES]]",
        help="a capsule, e.g. -g io:io,webhooks=2:1000:async (docs/capsules.md); "
        "PROCESSES runs it in that many processes of its own. Repeatable. Without ':' it "
        "is Sidekiq's -g TAG",
    )
    parser.add_argument("--tag", help="process tag shown in the Web UI")
    parser.add_argument("-v", "--verbose", action="store_true", default=None, help="debug logging")
    parser.add_argument("--log-format", choices=["plain", "json"], help="job log format")
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="root log level (default info, debug with -v)",
    )
    parser.add_argument("--pidfile", help="write the process id here (for kiq ping --pidfile)")
    parser.add_argument("--processes", type=int, help="fork this many worker processes")
    parser.add_argument(
        "--max-memory-mb",
        type=float,
        help="with --processes: restart a worker whose RSS passes this",
    )
    parser.add_argument("--redis-url", help=f"Redis URL ({REDIS_SOURCES})")
    parser.add_argument(
        "--redis-wait",
        type=float,
        metavar="SECONDS",
        help="wait this long for an unreachable Redis at start-up, then exit 2 (default 60)",
    )


def load_config(args: argparse.Namespace, base: Mapping[str, Any] | None = None) -> Config:
    """Flags > env > file > defaults (kiq.config). ``base``, a host framework's settings
    (Django's ``KIQ``, see kiq.integrations.django), sits between the flags and the env."""
    path = find_file(args.config)
    queues = [parse_queue(spec) for spec in args.queue] or None
    if queues is not None:
        names = [name for name, _ in queues]
        if len(set(names)) != len(names):
            raise ConfigError(f"-q: a queue is listed twice in {args.queue}; list each queue once")
    tag, named = _capsule_flags(args)
    flags = {
        "concurrency": args.concurrency,
        "queues": queues,
        "timeout": args.timeout,
        "tag": tag,
        "capsules": named,
        "verbose": args.verbose,
        "log_format": args.log_format,
        "processes": args.processes,
        "redis_url": args.redis_url,
        "redis_wait": getattr(args, "redis_wait", None),
    }
    overrides = dict(base or {})
    environment = args.environment or overrides.pop("environment", None)
    overrides.update({key: value for key, value in flags.items() if value is not None})
    return Config.load(path, environment=environment, **overrides)


def _capsule_flags(args: argparse.Namespace) -> tuple[str | None, list[Capsule] | None]:
    """``-g`` values: capsules (NAME:QUEUES:CONCURRENCY[:MODE[:PROCESSES]]) and Sidekiq's
    ``-g TAG``.

    A value with a ':' is a capsule, checked here (one line naming the spelling); a
    plain word is the process tag, as in Sidekiq (``--tag`` is always the tag).
    """
    tag: str | None = getattr(args, "tag", None)
    named: list[Capsule] = []
    for value in getattr(args, "g", None) or []:
        if ":" in value:
            named.append(parse_capsule_flag(value))
        elif tag is None:
            tag = value
        else:
            raise ConfigError(
                f"-g {value!r}: a tag is already given ({tag!r}); a capsule is "
                f"{FLAG_SPELLING}, e.g. {FLAG_EXAMPLE}"
            )
    return tag, named or None


def require(targets: Sequence[str]) -> None:
    """Import each -r target: a dotted module, or a .py file / package directory."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for target in targets:
        path = Path(target)
        try:
            if path.suffix == ".py" and path.is_file():
                runpy.run_path(str(path), run_name=path.stem)
            elif path.is_dir() and (path / "__init__.py").is_file():
                sys.path.insert(0, str(path.resolve().parent))
                importlib.import_module(path.resolve().name)
            else:
                importlib.import_module(target)
        except ImportError as exc:
            raise ConfigError(
                f"-r {target}: cannot import it ({exc}); give a module on sys.path "
                f"(app.jobs) or a file path (app/jobs.py)"
            ) from exc


def install_signals(handler: object) -> None:
    def on_signal(signum: int, _frame: FrameType | None) -> None:
        handler.signal(SIGNALS[signal.Signals(signum).name])  # type: ignore[attr-defined]

    for name in SIGNALS:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), on_signal)


def run_worker(args: argparse.Namespace, base: Mapping[str, Any] | None = None) -> int:
    config = load_config(args, base)
    level = getattr(args, "log_level", None)
    kiq_log.setup(config.log_format, config.verbose, level=kiq_log.parse_level(level))
    set_default(config)
    config.ensure_redis()
    wait_for_redis(config, config.redis_wait)
    if len(config.process_groups()) > 1:
        config.close()  # the supervisor forks: each child opens connections of its own
    require([*config.require, *args.require])
    from kiq.manager import check_kinds  # local: kiq web & co never load the engine

    check_kinds(config)  # a job of the wrong kind for its capsule: one line, exit 2
    pidfile = getattr(args, "pidfile", None)
    if pidfile is None:
        return _run_processes(config, args)
    Path(pidfile).write_text(f"{os.getpid()}\n")
    try:
        return _run_processes(config, args)
    finally:
        Path(pidfile).unlink(missing_ok=True)


def _run_processes(config: Config, args: argparse.Namespace) -> int:
    # A parent for more than one process (--processes N, or a capsule with processes of
    # its own next to the shared one), or for a memory limit.
    if len(config.process_groups()) > 1 or args.max_memory_mb is not None:
        from kiq.supervisor import Supervisor

        supervisor = Supervisor(config, args.max_memory_mb, install_signals=install_signals)
        install_signals(supervisor)
        return supervisor.run()
    from kiq.launcher import Launcher

    launcher = Launcher(config)
    install_signals(launcher)
    launcher.run()
    return 0


def run_embedded(action: str) -> int:
    from kiq import embedded

    if action == "stop":
        print("stopped" if embedded.stop() else "not running")
        return 0
    status = embedded.status()
    print(
        f"running: {status.running}\nurl: {status.url}\npid: {status.pid}\ndir: {status.data_dir}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. An error is one line on stderr naming what, the value and the
    fix (exit 2 for a KiqError, 1 for anything else); ``--verbose`` adds the traceback."""
    args = build_parser().parse_args(argv)
    try:
        return run_command(args)
    except KeyboardInterrupt:
        return 130
    except KiqError as exc:
        _report(exc, args)
        return 2
    except Exception as exc:
        _report(exc, args, unexpected=True)
        return 1


def run_command(args: argparse.Namespace) -> int:
    if args.command == "worker":
        return run_worker(args)
    if args.command == "embedded":
        return run_embedded(args.action)
    if args.command == "demo":
        return run_demo(args)
    if args.command == "new":
        return generator.run(args)
    if args.command == "web":
        try:
            from kiq.web.serve import run_web
        except ImportError as exc:
            if (exc.name or "").split(".")[0] not in WEB_PACKAGES:
                raise
            raise ConfigError(
                f"the Web UI needs the web extra ({exc.name} is missing): "
                f"pip install 'kiq[web]' (in a checkout: pip install -e \".[web]\")"
            ) from exc
        return run_web(args)
    if args.command in ("status", "ping", "quiet", "stop", "mark", "cancel"):
        return run_ops(args)
    if args.command == "cluster-migrate":
        return run_migrate(args)
    return 1


def run_demo(args: argparse.Namespace) -> int:
    """``kiq demo``: the runner lives with the example app (examples/brief_app/demo.py)."""
    examples = next(
        (
            root / "examples"
            for root in (Path(__file__).resolve().parents[2], Path.cwd())
            if (root / "examples" / "brief_app" / "demo.py").is_file()
        ),
        None,
    )
    if examples is None:
        raise ConfigError(
            "kiq demo runs the example app examples/brief_app of a kiq checkout, and this "
            f"kiq ({Path(__file__).parent}) has none next to it: clone kiq's repository, "
            'then run there: pip install -e ".[demo]" && kiq demo'
        )
    if str(examples) not in sys.path:
        sys.path.insert(0, str(examples))
    try:
        runner = importlib.import_module("brief_app.demo")
    except ImportError as exc:
        if (exc.name or "brief_app").split(".")[0] in ("brief_app", "kiq"):
            raise
        raise ConfigError(
            f"kiq demo runs the example app, which needs {exc.name}: install it with "
            f'pip install -e ".[demo]"'
        ) from exc
    code: int = runner.run_demo(args)
    return code


def _report(exc: BaseException, args: argparse.Namespace, *, unexpected: bool = False) -> None:
    """One line on stderr (passwords in URLs hidden), the traceback only with --verbose."""
    if getattr(args, "verbose", False):
        traceback.print_exception(exc)
    message = " ".join(str(exc).split()) or type(exc).__name__
    message = _URL.sub(lambda found: redact(found.group()), message)
    if unexpected:
        hint = "" if getattr(args, "verbose", False) else "; --verbose shows the traceback"
        message = f"unexpected {type(exc).__name__}: {message}{hint}"
    print(f"kiq: {message}", file=sys.stderr)


_URL: Final = re.compile(r"[a-z][a-z0-9+.-]*://\S+")


if __name__ == "__main__":
    sys.exit(main())
