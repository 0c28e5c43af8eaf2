"""The import layering of STYLE.md C.2, checked from the source with ``ast``.

Core modules are in one order, lowest first, and each may import only modules listed
before it, so the engine cannot leak into the client side and there are no cycles.
Side branches (the admin API, the test modes, the web UI, framework integrations) have
their own short lists and no core module imports them. Imports under
``if TYPE_CHECKING:`` are for types only and are not counted. A new module must be
given a place here.
"""

from __future__ import annotations

import ast
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
    "embedded",  # side branch too: imports errors only; config starts it lazily
    "keys",
    "payload",
    "log",
    "outage",
    "sdnotify",  # systemd's notify protocol over a datagram socket (issue 8)
    "cron",
    # 1 Redis and chains
    "lane",  # the store's held connection for single pushes (its only user)
    "store",  # the only module that talks to Redis through redis-py (see below)
    "middleware",
    # 2 container
    "config",
    # 3 client side: everything ``import kiq`` loads
    "client",
    "job",
    "__init__",
    # 3 server parts
    "retry",
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
    # 7 entry point
    "cli",
)

# Side branches: what each may import. No core module imports them, except that the
# entry point (cli) may start the web UI.
CLIENT_SIDE = frozenset({"errors", "keys", "payload", "middleware", "config", "client", "job"})
SIDE: dict[str, frozenset[str]] = {
    "api": frozenset({"config", "keys", "payload", "client", "errors"}),
    "testing": CLIENT_SIDE | {"__init__"},
    "pytest_plugin": frozenset({"testing", "config", "errors", "__init__"}),
    # web serves the Prometheus scrape at /metrics when a scraper asks (issue 8)
    # and asks store.is_transient whether an error means "Redis is away" (its 503 page)
    "web": frozenset({"api", "config", "errors", "__init__", "prometheus", "store"}),  # + own
    # issue 8: the exporter reads api (and the metrics key layout), the CLI's status /
    # ping / quiet / stop read api, the OpenTelemetry middleware sits on the chains
    "prometheus": frozenset({"api", "config", "metrics", "store"}),
    "status": frozenset({"api", "config", "errors", "payload", "embedded"}),
    "otel": frozenset({"payload", "config", "__init__"}),
    "integrations": CLIENT_SIDE | {"__init__"},  # framework glue (enqueue after commit)
}
SIDE_IMPORTERS: dict[str, frozenset[str]] = {
    "web": frozenset({"cli"}),
    "status": frozenset({"cli"}),
}
# Known departures from STYLE C.2, each with its reason; remove an entry once the code
# is moved, so that the departure cannot spread unnoticed.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {
    ("api.metrics", "metrics"): "metric key builders and bucket bounds live in metrics.py",
    ("api.sets", "recurring"): "api.cron_set() hands out recurring.CronSet (imported lazily)",
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
    # store is the Redis seam (lane: its held connection for single pushes); embedded
    # holds a lease connection to the server it starts, before any Config or Store
    # exists (shared/embedded-redis.md).
    "redis": frozenset({"store", "lane", "embedded"}),
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
IMPORT_KIQ_LOADS = CLIENT_SIDE | {"cron", "store", "lane"}


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
    below = set(CORE[: CORE.index(name)])
    side_ok = {side for side, importers in SIDE_IMPORTERS.items() if name in importers}

    upward = sorted(
        target
        for target in imports_of(name).kiq
        if branch(target) not in below and branch(target) not in side_ok
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
        if target not in allowed
        and branch(target) != branch(name)
        and (name, target) not in KNOWN_EXCEPTIONS
    )

    assert extra == [], f"kiq.{name} may import only {sorted(allowed)}, also imports {extra}"


@pytest.mark.parametrize("package", sorted(THIRD_PARTY))
def test_restricted_third_party_packages_stay_in_their_modules(package: str) -> None:
    """redis only in store (and embedded); web frameworks only in web; pytest only in the plugin."""
    users = sorted(name for name in modules() if package in imports_of(name).third_party)

    outside = [name for name in users if branch(name) not in THIRD_PARTY[package]]
    assert outside == [], f"{package} is imported by {outside}; only {THIRD_PARTY[package]} may"


def test_known_exceptions_are_still_needed() -> None:
    """An exception whose import is gone must be deleted from KNOWN_EXCEPTIONS."""
    stale = [
        (name, target)
        for name, target in KNOWN_EXCEPTIONS
        if name not in modules() or target not in imports_of(name).kiq
    ]

    assert stale == []


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
    loaded = {name.removeprefix("kiq.") for name in result.stdout.split()} - {"kiq"}

    assert loaded <= IMPORT_KIQ_LOADS, f"import kiq also loads {sorted(loaded - IMPORT_KIQ_LOADS)}"
    assert {"client", "config", "job"} <= loaded
