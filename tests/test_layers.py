"""The import layering of STYLE.md C.2, checked from the source with ``ast``.

Core modules are in one order, lowest first, and each may import only modules listed
before it, so the engine cannot leak into the client side and there are no cycles.
Side branches (the admin API, the test modes, the web UI, framework integrations) have
their own short lists and no core module imports them. Imports under
``if TYPE_CHECKING:`` are for types only and are not counted. A new module must be
given a place here.

The Redis seam is checked here too, with no exceptions list: only the ``store``
package imports ``redis`` (and ``embedded``, whose lease connection belongs to the
server's lifecycle, before any Config or Store exists), no module outside it touches a
redis-py object, and every key name is built in ``keys.py``.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

import kiq

PACKAGE = Path(kiq.__file__).parent

# Lowest first; a module may import only modules above it in this list.
CORE: tuple[str, ...] = (
    # 0 leaves: stdlib (and their own third-party parser) only
    "errors",
    "supervise",  # every engine thread starts through it (issue 12); imports errors only
    "handlers",  # calls the user's error/death handlers, logging one that raises
    "embedded",  # side branch too: imports errors only; config starts it lazily
    "keys",
    "batch_context",  # the open Batch.jobs() block (a ContextVar), read by the client
    "payload",
    "log",
    "outage",
    "sdnotify",  # systemd's notify protocol over a datagram socket (issue 8)
    "cron",
    "capsule",  # capsules' settings and their three spellings (issue 14); errors only
    "queue_limits",  # a queue's concurrency and rate across processes (issue 16 point 3)
    # 1 Redis and chains
    "store",  # the package that alone talks to Redis through redis-py (see below)
    "middleware",
    # 2 container
    "config",
    "peers",  # the Sidekiq versions sharing the Redis: which formats to write (issue 15)
    # 3 client side: everything ``import kiq`` loads
    "unique",  # unique jobs' digest and release (issue 16); the client takes the lock
    "results",  # kiq.Result and the records the worker stores (issue 17 point 3)
    "limiter",  # limiters shared by every process (issue 16): kiq.Limiter, kiq.OverLimit
    "client",
    "batch",  # batches (issue 17): Batch, the backend, the worker's admit/record
    "batch_status",  # BatchStatus: one batch read at once
    "cancel",  # cancel by jid, jobs' fates (issue 18); Job.cancel calls it; settles batches
    "job",
    "iter",  # enumerators for iterable jobs (issue 18); stdlib only
    "iterable",  # IterableJob (issue 18)
    "workflow",  # chain, group, chord, DAG on top of batches (issue 17)
    "activejob",  # ActiveJob envelopes both ways (issue 15): the wrapper Job, enqueue
    "crontab",  # recurring jobs as stored: read by the API, fired by the cron poller
    "__init__",
    # 3 server parts
    "retry",
    "order",  # a fetch's queue order, paused and broken queues (split from fetch)
    "fetch",
    "idle",  # the waiters and the idle fast path (issue 13 point 4)
    "scheduler",
    "recurring",
    "recover",
    "metrics",
    # 4 execution
    "processor",
    "aio",
    # 5 pool
    "manager",
    # 6 process
    "launcher",
    "supervisor",
    "demo",
    "generator",
    "migrate",  # kiq cluster-migrate: a single Redis's jobs into a cluster (issue 19)
    # 7 entry point
    "cli",
    "__main__",  # python -m kiq: the CLI by a name Sidekiq 8.1.2+'s own `kiq` cannot shadow
)

# Side branches: what each may import. No core module imports them, except that the
# entry point (cli) may start the web UI.
CLIENT_SIDE = frozenset(
    {
        "errors",
        "keys",
        "payload",
        "middleware",
        "config",
        "peers",
        "unique",
        "limiter",
        "client",
        "batch_context",
        "batch",
        "batch_status",
        "job",
        "workflow",
        "activejob",
        "results",
        "cancel",
        "iter",
        "iterable",
    }
)
SIDE: dict[str, frozenset[str]] = {
    # crontab: api.cron_set() hands out its CronSet, a read model like the API's own
    "api": frozenset(
        {"config", "keys", "payload", "client", "errors", "crontab", "handlers", "unique"}
        | {"results"}  # api.result reads kiq.results' records (issue 17)
        | {"cancel"}  # api.cancel, api.fate (issue 18)
        | {"batch", "batch_status", "workflow"}  # BatchSet, WorkflowSet (issue 17)
    ),
    "testing": CLIENT_SIDE | {"__init__", "testing_batches"},
    "testing_batches": CLIENT_SIDE,  # batches in memory for the test modes (issue 17)
    "pytest_plugin": frozenset({"testing", "config", "errors", "__init__"}),
    # web serves the Prometheus scrape at /metrics when a scraper asks (issue 8)
    # and asks store.is_transient whether an error means "Redis is away" (its 503 page)
    "web": frozenset({"api", "config", "errors", "__init__", "prometheus", "store"}),  # + own
    # issue 8: the exporter reads api (and the histogram's buckets in keys), the CLI's
    # status / ping / quiet / stop read api, the OpenTelemetry middleware sits on the chains
    "prometheus": frozenset({"api", "config", "keys", "store"}),
    "status": frozenset({"api", "config", "errors", "payload", "embedded"}),
    "otel": frozenset({"payload", "config", "__init__"}),
    "integrations": CLIENT_SIDE | {"__init__"},  # framework glue (enqueue after commit)
}
SIDE_IMPORTERS: dict[str, frozenset[str]] = {
    "web": frozenset({"cli"}),
    "status": frozenset({"cli"}),
}
# Other entry points wrap the CLI: ``manage.py kiq`` is ``kiq worker`` inside Django,
# ``flask kiq`` inside Flask; the Starlette lifespan mounts the Web UI if it is there.
ENTRY_POINTS: dict[str, frozenset[str]] = {
    "integrations.django.management": frozenset({"cli"}),
    "integrations.flask": frozenset({"cli"}),
    "integrations.starlette": frozenset({"web"}),
}

# Third-party packages that only some modules may import.
THIRD_PARTY: dict[str, frozenset[str]] = {
    # store is the Redis seam; embedded holds a lease connection to the server it
    # starts, which is the server's lifecycle, not a use of Redis: it exists before any
    # Config or Store (shared/embedded-redis.md) and issues no kiq command.
    "redis": frozenset({"store", "embedded"}),
    "starlette": frozenset({"web", "integrations"}),  # integrations.starlette: the lifespan
    "jinja2": frozenset({"web"}),
    "uvicorn": frozenset({"web", "cli"}),
    "pytest": frozenset({"pytest_plugin"}),
    "django": frozenset({"integrations"}),
    "sqlalchemy": frozenset({"integrations"}),
    "flask": frozenset({"integrations"}),
    "prometheus_client": frozenset({"prometheus"}),
    "opentelemetry": frozenset({"otel"}),
}

# What ``import kiq`` may load: the client side, the leaves it needs and the store.
IMPORT_KIQ_LOADS = CLIENT_SIDE | {"cron", "store", "capsule", "queue_limits"}


@dataclass(frozen=True)
class Imports:
    kiq: frozenset[str]  # kiq modules imported at run time (lazy imports included)
    typing_only: frozenset[str]  # kiq modules imported under TYPE_CHECKING
    third_party: frozenset[str]  # top-level names of other packages
    relative: frozenset[str]  # relative imports, which the house style forbids


def module_name(path: Path) -> str:
    """``errors``, ``web.app``; the package itself is ``__init__``, ``web/__init__`` is ``web``."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def branch(name: str) -> str:
    """The layering slot of a module: ``web.app`` belongs to ``web``."""
    return name.split(".")[0]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Collector(ast.NodeVisitor):
    def __init__(self, name: str) -> None:
        self.name = name
        self.kiq: set[str] = set()
        self.typing_only: set[str] = set()
        self.third_party: set[str] = set()
        self.relative: set[str] = set()
        self._typing = False

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        self._typing, was = True, self._typing
        for child in node.body:
            self.visit(child)
        self._typing = was
        for child in node.orelse:
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._absolute(alias.name, [])

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:  # STYLE D.1: imports are absolute; test_imports_are_absolute says so
            self.relative.add(f"{'.' * node.level}{node.module or ''}")
            return
        self._absolute(node.module or "", [alias.name for alias in node.names])

    def _absolute(self, module: str, names: list[str]) -> None:
        top = module.split(".")[0]
        if top != "kiq":
            if top and top not in sys.stdlib_module_names and top != "__future__":
                self.third_party.add(top)
            return
        inner = module.removeprefix("kiq").removeprefix(".")
        targets = {inner or "__init__"}
        if names:  # from kiq[.x] import a, b: a submodule if one exists by that name
            targets = {_submodule_or(inner, name) for name in names}
        (self.typing_only if self._typing else self.kiq).update(targets)


def _submodule_or(package: str, name: str) -> str:
    candidate = f"{package}.{name}" if package else name
    return candidate if candidate in modules() else (package or "__init__")


@cache
def imports_of(name: str) -> Imports:
    collector = _Collector(name)
    collector.visit(ast.parse(modules()[name].read_text(), filename=str(modules()[name])))
    own = {name}
    return Imports(
        frozenset(collector.kiq - own),
        frozenset(collector.typing_only - own),
        frozenset(collector.third_party),
        frozenset(collector.relative),
    )


CORE_MODULES = [name for name in modules() if branch(name) in CORE]
SIDE_MODULES = [name for name in modules() if branch(name) in SIDE]


def test_every_module_has_a_place_in_the_layering() -> None:
    """A module missing from CORE or SIDE would escape every other check here."""
    unplaced = [name for name in modules() if branch(name) not in CORE and branch(name) not in SIDE]

    assert unplaced == [], f"add {unplaced} to CORE or SIDE in tests/test_layers.py"


@pytest.mark.parametrize("name", CORE_MODULES)
def test_core_module_imports_only_lower_layers(name: str) -> None:
    """A core module imports only modules below it; lazy imports count, TYPE_CHECKING not."""
    below = set(CORE[: CORE.index(branch(name))])
    side_ok = {side for side, importers in SIDE_IMPORTERS.items() if name in importers}

    upward = sorted(
        target
        for target in imports_of(name).kiq
        if branch(target) not in below
        and branch(target) not in side_ok
        and branch(target) != branch(name)  # within a package (store.queues -> .connection)
    )

    assert upward == [], f"kiq.{name} imports {upward}, which are not below it in the layering"


@pytest.mark.parametrize("name", SIDE_MODULES)
def test_side_branch_imports_only_its_allowed_modules(name: str) -> None:
    """api, testing, pytest_plugin and web each reach only a short list of modules."""
    allowed = SIDE[branch(name)].union(
        *(extra for prefix, extra in ENTRY_POINTS.items() if name.startswith(prefix))
    )

    extra = sorted(
        target
        for target in imports_of(name).kiq
        if target not in allowed and branch(target) != branch(name)
    )

    assert extra == [], f"kiq.{name} may import only {sorted(allowed)}, also imports {extra}"


@pytest.mark.parametrize("package", sorted(THIRD_PARTY))
def test_restricted_third_party_packages_stay_in_their_modules(package: str) -> None:
    """redis only in store (and embedded); web frameworks only in web; pytest only in the plugin."""
    users = sorted(name for name in modules() if package in imports_of(name).third_party)

    outside = [name for name in users if branch(name) not in THIRD_PARTY[package]]
    assert outside == [], f"{package} is imported by {outside}; only {THIRD_PARTY[package]} may"


# -- the Redis seam ----------------------------------------------------------------------

# Attributes that only a redis-py client, pipeline or connection has (the store's private
# clients included), and redis-py command methods whose names no other kiq object uses.
# Touching one outside the store package means a Redis command outside the seam.
REDIS_ATTRIBUTES = frozenset(
    {"redis", "blocking", "_redis", "_blocking", "_r", "_pipeline", "_script", "_call"}
    | {"pipeline", "connection_pool", "register_script", "execute_command", "send_packed_command"}
)
_COMMAND_NAMES = (
    "hset hget hgetall hmget hincrby hdel hexists hsetnx hkeys hlen "
    "zadd zrem zrange zrangebyscore zrevrange zcard zscore zpopmin zscan_iter "
    "zremrangebyscore zremrangebyrank lpush rpush lrange lrem llen lindex ltrim rpop lpop "
    "blmove lmove brpoplpush sadd srem smembers scard sismember sscan_iter scan_iter "
    "incrby mget mset expire ttl bitfield bitfield_ro evalsha script_load"
)
REDIS_COMMANDS = frozenset(_COMMAND_NAMES.split())
# Every Redis key is built by kiq.keys.Keys: no other module prepends the key prefix or
# writes a piece of a key name (Sidekiq's, sidekiq-cron's, Sidekiq 7 metrics', kiq's).
# Text with a space in it is prose (a help string, a log line), never a key.
KEY_PIECES = re.compile(
    r"^\S*(queue:|stat:|cron_job:|\bj\||kiq\||deploylock|-marks\b|-signals\b"
    r"|:work(ers)?\b|:enqueued\b|:jid_history\b|dear-leader)\S*$"
)
SEAM = "store"
KEYS_MODULES = frozenset({"keys", "config"})  # config holds key_prefix and builds Keys


def _outside_seam() -> list[str]:
    return [name for name in modules() if branch(name) not in {SEAM, "embedded"}]


def _attribute_uses(name: str) -> list[tuple[int, str]]:
    return _attribute_uses_in(modules()[name].read_text())


def _attribute_uses_in(source: str) -> list[tuple[int, str]]:
    tree = ast.parse(source)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and (
            node.attr in REDIS_ATTRIBUTES
            or (node.attr in REDIS_COMMANDS and not _is_module_call(node))
        ):
            found.append((node.lineno, node.attr))
    return found


def _is_module_call(node: ast.Attribute) -> bool:
    # ``os.unlink(path)``, ``os.scandir``: a stdlib module's function, not a command.
    return isinstance(node.value, ast.Name) and node.value.id in {"os", "shutil", "Path"}


@pytest.mark.parametrize("name", _outside_seam())
def test_only_the_store_touches_redis_py_objects(name: str) -> None:
    """Outside kiq.store, nothing reads a client off the store or calls a redis-py method."""
    assert _attribute_uses(name) == [], (
        f"kiq.{name} touches redis-py objects at {_attribute_uses(name)}; add a Store "
        f"method in src/kiq/store/ and call that"
    )


def _key_strings(name: str) -> list[tuple[int, str]]:
    return _key_strings_in(modules()[name].read_text())


def _key_strings_in(source: str) -> list[tuple[int, str]]:
    tree = ast.parse(source)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "key_prefix":
            found.append((node.lineno, f".{node.attr}"))
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and not _is_docstring(tree, node)
            and KEY_PIECES.search(node.value)
        ):
            found.append((node.lineno, node.value))
    return found


@cache
def _docstrings(tree: ast.Module) -> frozenset[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return frozenset(ids)


def _is_docstring(tree: ast.Module, node: ast.Constant) -> bool:
    return id(node) in _docstrings(tree)


@pytest.mark.parametrize("name", [n for n in modules() if branch(n) not in KEYS_MODULES])
def test_key_names_are_built_only_in_keys(name: str) -> None:
    """No module but kiq.keys prepends the key prefix or spells a piece of a key name."""
    assert _key_strings(name) == [], (
        f"kiq.{name} builds Redis key names itself at {_key_strings(name)}; add a builder "
        f"to kiq.keys.Keys and use config.keys"
    )


def test_seam_checks_catch_raw_calls_and_hand_built_keys() -> None:
    """The two checks above on a sample of what they forbid, and of what they allow."""
    source = (
        '"""A docstring may say queue:default."""\n'
        "def f(config, path):\n"
        "    pipe = config.store.redis.pipeline()\n"
        "    pipe.hset(f'{config.key_prefix}cron_job:{name}', 'a', 1)\n"
        "    config.store.queue_size('default')\n"
        "    os.unlink(path)\n"
        "    help = 'Jobs processed (stat:processed)'\n"
        "    return 'deploylock-' + config.keys.queue('q')\n"
    )

    assert sorted(_attribute_uses_in(source)) == [(3, "pipeline"), (3, "redis"), (4, "hset")]
    assert sorted(_key_strings_in(source)) == [
        (4, ".key_prefix"),
        (4, "cron_job:"),
        (8, "deploylock-"),
    ]


def test_imports_are_absolute() -> None:
    """``from kiq import keys``, never ``from . import keys`` (STYLE D.1)."""
    relative = {name: sorted(imports_of(name).relative) for name in modules()}

    assert {name: found for name, found in relative.items() if found} == {}


def test_layer_table_names_only_real_modules() -> None:
    """Typing-only imports, which the layering skips, at least name modules that exist."""
    missing = sorted(
        {target for name in modules() for target in imports_of(name).typing_only} - set(modules())
    )

    assert missing == []


def test_collector_sees_lazy_from_and_typing_only_imports() -> None:
    """The parser itself: a lazy import inside a function counts, TYPE_CHECKING does not."""
    assert "embedded" in imports_of("config").kiq  # imported inside Config.store
    assert "job" in imports_of("client").typing_only
    assert "job" not in imports_of("client").kiq
    assert "__init__" in imports_of("launcher").kiq  # from kiq import __version__


def test_import_kiq_loads_only_the_client_side() -> None:
    """``import kiq`` in a fresh interpreter loads no engine module, thread pool or web code."""
    code = (
        "import sys, kiq; "
        "print(' '.join(sorted(m for m in sys.modules if m == 'kiq' or m.startswith('kiq.'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = {branch(name.removeprefix("kiq.")) for name in result.stdout.split()} - {"kiq"}

    assert loaded <= IMPORT_KIQ_LOADS, f"import kiq also loads {sorted(loaded - IMPORT_KIQ_LOADS)}"
    assert {"client", "config", "job"} <= loaded
