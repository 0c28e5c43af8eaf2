"""Config: every setting of a kiq process or client, built once and passed explicitly.

Precedence, written down once: command-line flags > environment (``KIQ_*``,
``REDIS_URL``) > config file (Sidekiq's own ``config/sidekiq.yml`` format, unchanged)
> the defaults below. ``Config.load(...)`` applies it; the CLI passes its flags as
overrides.

Environment variables: ``KIQ_REDIS_URL`` or ``REDIS_URL`` (or ``REDIS_PROVIDER``
naming the variable that holds the URL, as Sidekiq), ``KIQ_CONCURRENCY``,
``KIQ_TIMEOUT``, ``KIQ_ENV`` (else ``APP_ENV``, ``RAILS_ENV``, ``RACK_ENV``, Sidekiq's
order). ``RAILS_MAX_THREADS`` is only a default for ``concurrency`` below the file, as
in Sidekiq's CLI: a Rails app sets it for Puma's web threads, and the file's
``:concurrency:`` must still win.

A Config owns the Store (the Redis seam) and both middleware chains, as Sidekiq's
Config owns ``redis_pool`` and the chains. A Config is data: building one, or reading
its ``store``, starts nothing; ``ensure_redis()`` (called by the ``kiq`` commands and
``kiq.connect()``) is the one step that starts the embedded server when no URL is set.
The process-wide default is used only by the convenience entry points
(``Job.perform_async``, ``kiq.api``)::

    kiq.configure(redis_url="redis://localhost:6379/0", concurrency=5)
    kiq.connect()   # with no URL anywhere: start (or reuse) the embedded server

    @kiq.on("startup")
    def open_pools(config: kiq.Config) -> None: ...
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import SplitResult, parse_qs, urlsplit

from kiq import capsule as capsules
from kiq.capsule import Capsule, Mode
from kiq.cron import CronJob
from kiq.errors import ConfigError, RedisUnavailable
from kiq.keys import ClusterKeys, Keys
from kiq.middleware import Chain, ClientMiddleware, ServerMiddleware
from kiq.queue_limits import QueueLimit, parse_limits, queue_sections
from kiq.store import (
    ClusterURL,
    SentinelURL,
    Store,
    cluster_url,
    is_cluster_url,
    open_store,
    redact,
)

log = logging.getLogger(__name__)

Queue = tuple[str, int]  # (name, weight); weight 0 = none given (strict order)
ErrorHandler = Callable[[BaseException, dict[str, Any]], None]
DeathHandler = Callable[[dict[str, Any], BaseException], None]
LIFECYCLE_EVENTS: Final = ("startup", "quiet", "shutdown", "heartbeat", "beat", "exit")

# Sidekiq file keys kiq reads, mapped to Config fields.
_FILE_KEYS: Final = {
    "concurrency": "concurrency",
    "queues": "queues",
    "timeout": "timeout",
    "max_retries": "max_retries",
    "dead_max_jobs": "dead_max_jobs",
    "dead_timeout_in_seconds": "dead_timeout",
    "average_scheduled_poll_interval": "average_scheduled_poll_interval",
    "poll_interval_average": "poll_interval_average",
    "tag": "tag",
    "labels": "labels",
    "require": "require",
    "verbose": "verbose",
    "redis_url": "redis_url",
    "redis_wait": "redis_wait",
    "result_max_bytes": "result_max_bytes",
    "key_prefix": "key_prefix",
    "heartbeat_interval": "heartbeat_interval",
    "log_format": "log_format",
    "skip_default_job_logging": "skip_default_job_logging",
    "processes": "processes",
    "schedule_file": "schedule_file",
    "process_ttl": "process_ttl",
    "orphan_check_interval": "orphan_check_interval",
    "max_recoveries": "max_recoveries",
    "poll_initial_wait": "poll_initial_wait",
    "prefetch": "prefetch",
    "timestamp_format": "timestamp_format",
    "activejob_wrapper": "activejob_wrapper",
    "activejob_rails": "activejob_rails",
    "cron_poll_interval": "cron_poll_interval",
    "cron_grace": "cron_grace",
    "capsules": "capsules",
    "limits": "limits",  # queue limits (sidekiq-limit_fetch's key; kiq.queue_limits)
    "batch_ttl": "batch_ttl",
    "batch_sweep_grace": "batch_sweep_grace",
    "cluster": "cluster",
    "partitions": "partitions",
    "wait_replicas": "wait_replicas",
}
# Sidekiq (or add-on) keys that are valid in a shared file but mean nothing to kiq.
_IGNORED_FILE_KEYS: Final = frozenset(
    {
        "strict",
        "pidfile",
        "logfile",
        "environment",
        "max_iteration_runtime",
        "lifecycle_events",
        "error_handlers",
        "death_handlers",
        "scheduler",
        "schedule",
        "dynamic",
        "enabled",
    }
)


def parse_queue(spec: str) -> Queue:
    """``"critical,3"`` -> ``("critical", 3)``; ``"default"`` -> ``("default", 0)``."""
    name, _, weight = spec.partition(",")
    name = name.strip()
    if not name:
        raise ConfigError(f"queue {spec!r}: the name is empty; use -q NAME or -q NAME,WEIGHT")
    if not weight:
        return name, 0
    try:
        value = int(weight)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(
            f"queue {spec!r}: weight {weight!r} must be a whole number >= 0 "
            f"(e.g. -q {name},3); Sidekiq advises weights 1..10"
        )
    return name, value


@dataclass
class Config:
    """Settings for a kiq client or process. See the module docstring for precedence."""

    redis_url: str | None = None  # None: ensure_redis() starts or reuses the embedded server
    redis_wait: float = 60.0  # seconds a starting worker waits for an unreachable Redis
    key_prefix: str = ""  # redis-namespace prefix of a Sidekiq 6.x app, e.g. "myapp:"
    concurrency: int = 10
    queues: list[Queue] = field(default_factory=lambda: [("default", 0)])
    timeout: float = 25.0  # shutdown grace, seconds (Sidekiq -t)
    max_retries: int = 25
    dead_max_jobs: int = 10_000
    dead_timeout: float = 180 * 24 * 3600.0
    average_scheduled_poll_interval: float = 5.0
    poll_interval_average: float | None = None
    poll_initial_wait: float | None = None  # None: Sidekiq's 10 + 5*rand seconds
    heartbeat_interval: float = 5.0  # Sidekiq 6.x beats every 5 s
    process_ttl: int = 60  # heartbeat expiry; a process silent this long is dead
    orphan_check_interval: float = 15.0  # how often to look for dead processes' jobs
    max_recoveries: int = 3  # a job recovered more often than this is a poison job
    prefetch: int = 10  # jobs taken beyond idle slots, kept in Redis in-progress lists
    processes: int = 1
    tag: str = ""
    labels: list[str] = field(default_factory=list)
    environment: str = "development"
    require: list[str] = field(default_factory=list)
    verbose: bool = False
    log_format: Literal["plain", "json"] = "plain"
    skip_default_job_logging: bool = False
    # auto: float seconds, or Sidekiq 8's int ms when every live Sidekiq reads them (kiq.peers)
    timestamp_format: Literal["auto", "float", "ms"] = "auto"
    # kiq.activejob.enqueue: the wrapper class name ("legacy": Rails <= 7.1's, read by
    # every version; "sidekiq": Sidekiq::ActiveJob::Wrapper, 7.3+) and the oldest Rails
    # that reads the jobs ("7.1" adds the Range and BigDecimal serializers)
    activejob_wrapper: Literal["legacy", "sidekiq"] = "legacy"
    activejob_rails: str = "6.1"
    globalid_locator: Callable[[str], Any] | None = None  # "gid://app/User/1" -> object
    schedule_file: str | None = None  # recurring jobs; default config/kiq_schedule.yml & co
    cron_poll_interval: float = 5.0  # seconds between recurring-job checks per process
    cron_grace: float = 60.0  # a tick missed by more than this is skipped (sidekiq-cron: 60)
    cron_jobs: list[CronJob] = field(default_factory=list)  # defined in code
    result_max_bytes: int = 1_048_576  # a stored result's JSON record at most (kiq.results)
    # queue -> its limits across every process: {"stripe": 5} or {"stripe": {"concurrency":
    # 5, "rate": "100/minute"}} (kiq.queue_limits; normalized to QueueLimit values)
    limits: dict[str, QueueLimit] = field(default_factory=dict)
    batch_ttl: float = 30 * 86400.0  # seconds a batch's keys live (Sidekiq Pro: 30 days)
    # cluster: a batch push's outbox left this long is delivered by the workers' sweep
    # (kiq.store.cluster_batches); above a live push's own two steps, which take ms
    batch_sweep_grace: float = 30.0
    cluster: bool = False  # Redis Cluster (docs/cluster.md); also set by redis+cluster://
    partitions: dict[str, int] = field(default_factory=dict)  # cluster: queue -> N shards
    wait_replicas: int = 0  # cluster: pushes and acks WAIT for this many replicas
    client_middleware: Chain[ClientMiddleware] = field(default_factory=Chain)
    server_middleware: Chain[ServerMiddleware] = field(default_factory=Chain)
    error_handlers: list[ErrorHandler] = field(default_factory=list)
    death_handlers: list[DeathHandler] = field(default_factory=list)
    lifecycle: dict[str, list[Callable[[Config], None]]] = field(
        default_factory=lambda: {event: [] for event in LIFECYCLE_EVENTS}
    )
    # Named capsules beside the default one (kiq.capsule, docs/capsules.md); the
    # default capsule is ``queues`` and ``concurrency`` and runs ``default_mode``.
    capsules: list[Capsule] = field(default_factory=list)
    default_mode: Mode = "thread"

    def __post_init__(self) -> None:
        self._store: Store | None = None
        self._store_lock = threading.Lock()
        named = self.capsules if isinstance(self.capsules, list) else []
        for cap in [c for c in named if isinstance(c, Capsule) and c.is_default]:
            capsules.check_processes(cap.name, cap.processes, "capsules")
            self.capsules.remove(cap)  # "default" in a file or -g: the top-level settings
            self.queues, self.concurrency, self.default_mode = (
                list(cap.queues),
                cap.concurrency,
                cap.mode,
            )
        self.validate()

    def capsule(
        self,
        name: str,
        queues: list[str | tuple[str, int] | list[Any]] | None = None,
        concurrency: int | None = None,
        mode: Mode | None = None,
        processes: int | None = None,
    ) -> Capsule:
        """Add or change the capsule ``name`` and return it (Sidekiq 7's ``config.capsule``).

        ``"default"`` is the top-level ``queues`` / ``concurrency``. A new capsule needs
        its queues; concurrency defaults to 10 and mode to thread, as in Sidekiq;
        ``processes=k`` runs it in k worker processes of its own (else it runs in the
        shared ones). Call it before the worker starts (in a module the worker imports
        with -r)::

            config.capsule("io", queues=["io", ("webhooks", 2)], concurrency=1000, mode="async")
        """
        old = next((c for c in self.all_capsules() if c.name == name), None)
        if queues is None and old is None:
            raise ConfigError(f"capsule({name!r}): a new capsule needs queues=[...]")
        cap = capsules.build(
            name,
            list(old.queues) if queues is None and old is not None else queues,
            concurrency if concurrency is not None else (old.concurrency if old else 10),
            mode or (old.mode if old else "thread"),
            processes if processes is not None else (old.processes if old else None),
            where=f"capsule({name!r})",
        )
        previous = (list(self.capsules), list(self.queues), self.concurrency, self.default_mode)
        if cap.is_default:
            self.queues, self.concurrency, self.default_mode = (
                list(cap.queues),
                cap.concurrency,
                cap.mode,
            )
        else:
            self.capsules = [c for c in self.capsules if c.name != name] + [cap]
        try:
            self.validate()
        except ConfigError:
            self.capsules, self.queues, self.concurrency, self.default_mode = previous
            raise
        if self._store is not None:
            self.close()  # rebuilt on next use, its pool sized for the new slots
        return cap

    def all_capsules(self) -> list[Capsule]:
        """The default capsule first, then the named ones in the order they were added."""
        default = Capsule(capsules.DEFAULT, tuple(self.queues), self.concurrency, self.default_mode)
        return [default, *self.capsules]

    def process_groups(self) -> list[tuple[str, ...]]:
        """The capsule names each worker process runs, one entry per process: the shared
        ``processes`` many first, then those of the capsules with processes of their own
        (kiq.capsule.process_groups; kiq.supervisor starts one child per entry)."""
        return capsules.process_groups(self.all_capsules(), self.processes)

    @property
    def total_concurrency(self) -> int:
        """Every capsule's slots together: the process's ``concurrency`` on the heartbeat."""
        return self.concurrency + sum(c.concurrency for c in self.capsules)

    def validate(self) -> None:
        """Raise ConfigError naming the key, the value and what is allowed.

        Every setting is checked, not only the numeric ones: a file value of the wrong
        type (``:tag: [1]``, ``:verbose: maybe``) must fail here at start-up, not deep
        inside the launcher.
        """
        for name, minimum in _WHOLE_NUMBERS:
            _check_int(name, getattr(self, name), minimum)
        for name in _SECONDS:
            _check_seconds(name, getattr(self, name))
        for name in _OPTIONAL_SECONDS:
            if getattr(self, name) is not None:
                _check_seconds(name, getattr(self, name))
        for name, kind, allowed in _TYPED:
            value = getattr(self, name)
            if not isinstance(value, kind) or (
                isinstance(value, list) and not all(isinstance(v, str) for v in value)
            ):
                raise ConfigError(f"{name}: {_shown(value)} is not allowed; use {allowed}")
        self._check_cluster()
        if self.redis_url is not None:
            check_redis_url(self.redis_url)
        _check_queues(self.queues)
        self._check_capsules()
        self.limits = parse_limits(self.limits)
        if self.log_format not in ("plain", "json"):
            raise ConfigError(f"log_format: {self.log_format!r} is not allowed; use plain or json")
        if self.timestamp_format not in ("auto", "float", "ms"):
            raise ConfigError(
                f"timestamp_format: {self.timestamp_format!r} is not allowed; use auto (the "
                f"default: chosen from the live Sidekiq versions), float (Sidekiq 6.4-7.x "
                f"readers) or ms (Sidekiq 8 only)"
            )
        if self.activejob_wrapper not in ("legacy", "sidekiq"):
            raise ConfigError(
                f"activejob_wrapper: {self.activejob_wrapper!r} is not allowed; use legacy "
                f"(ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper, every version) or "
                f"sidekiq (Sidekiq::ActiveJob::Wrapper, Sidekiq 7.3+ only)"
            )

    def _check_cluster(self) -> None:
        """The cluster settings (docs/cluster.md): ``cluster: true`` turns the seed nodes
        in ``redis_url`` into a ``redis+cluster://`` URL; queue names must keep the hash tag."""
        if (
            self.cluster
            or self.partitions
            or self.wait_replicas
            or (self.redis_url is not None and is_cluster_url(self.redis_url))
        ):
            try:
                self.redis_url = cluster_url(
                    self.redis_url, self.cluster, self.partitions, self.wait_replicas,
                    [name for name, _ in self.queues]
                    + [n for c in self.capsules if isinstance(c, Capsule) for n, _ in c.queues],
                )  # fmt: skip
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            split = sorted(q for q in self.limits if self.partitions.get(q, 0) > 1)
            if split:
                raise ConfigError(
                    f"limits: queue {split[0]!r} is partitioned (partitions: "
                    f"{self.partitions[split[0]]}); queue limits count one slot's in-progress "
                    f"lists, so in cluster mode a limited queue cannot be partitioned: drop "
                    f"one of the two settings (docs/cluster.md)"
                )

    def _check_capsules(self) -> None:
        if not isinstance(self.capsules, list) or not all(
            isinstance(c, Capsule) for c in self.capsules
        ):
            raise ConfigError(f"capsules: {self.capsules!r} must be a list of kiq.capsule.Capsule")
        for cap in self.capsules:  # a Capsule built by hand skipped capsule.build's checks
            capsules.check_processes(cap.name, cap.processes, "capsules")
        if self.default_mode not in capsules.MODES:
            raise ConfigError(
                f"default_mode: {self.default_mode!r} is not allowed; use thread or async"
            )
        capsules.check_all(self.all_capsules())

    # -- loading ----------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        environment: str | None = None,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Config:
        """Defaults < RAILS_MAX_THREADS < file < environment < ``overrides`` (CLI flags)."""
        env = os.environ if env is None else env
        environment = environment or next(
            (env[name] for name in _ENVIRONMENT_VARIABLES if env.get(name)), "development"
        )
        values: dict[str, Any] = {"environment": environment}
        if "RAILS_MAX_THREADS" in env:
            raw = env["RAILS_MAX_THREADS"]
            values["concurrency"] = _env_number("RAILS_MAX_THREADS", raw, int)
        source = "redis_url"  # where the URL came from, for its error message
        if path is not None:
            values.update(read_file(path, environment))
            source = f"config file {path}: redis_url"
        from_env = _from_env(env)
        if "redis_url" in from_env:
            source = f"environment {_url_variable(env)}"
        values.update(from_env)
        if overrides.get("redis_url") is not None:
            source = "redis_url (--redis-url)"
        values.update({k: v for k, v in overrides.items() if v is not None})
        if isinstance(values.get("redis_url"), str) and values.get("cluster") is not True:
            check_redis_url(values["redis_url"], source)
        return cls(**values)

    @property
    def keys(self) -> Keys:
        if self.redis_url is not None and is_cluster_url(self.redis_url):
            return ClusterKeys(self.key_prefix, partitions=tuple(sorted(self.partitions.items())))
        return Keys(self.key_prefix)

    @property
    def store(self) -> Store:
        """The Redis seam, built on first use. It never starts a server: with no URL set,
        call ``ensure_redis()`` (``kiq.connect()``, the ``kiq`` commands do) first."""
        if self._store is None:
            with self._store_lock:
                if self._store is None:
                    if self.redis_url is None:
                        raise ConfigError(
                            "no Redis URL is set: set REDIS_URL or KIQ_REDIS_URL (e.g. "
                            "redis://localhost:6379/0), or call kiq.connect() (or "
                            "config.ensure_redis()) first to start kiq's embedded Redis"
                        )
                    self._store = open_store(
                        self.redis_url,
                        keys=self.keys,
                        pool_size=self._pool_size(),
                        **({"wait_replicas": self.wait_replicas} if self.wait_replicas else {}),
                    )
        return self._store

    def _pool_size(self) -> int:
        # A connection for each thread that may hold one at once: every thread slot,
        # one per async capsule (its loop), plus the fetchers, heartbeat and pollers.
        threads = sum(c.concurrency if c.mode == "thread" else 1 for c in self.all_capsules())
        return threads + 10 + len(self.capsules)

    def ensure_redis(self) -> str:
        """Start or reuse the embedded server when no URL is set; return the URL in use.

        The one step that starts a server, taken on purpose by the ``kiq`` commands and
        ``kiq.connect()``: reading ``store`` never does (configuration is data). This
        process then holds a lease on the server until it exits (kiq.embedded).
        """
        if self.redis_url is None:
            from kiq import embedded  # local: a Config with a URL never loads it

            self.close()
            self.redis_url = embedded.url()
        return self.redis_url

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def on(self, event: str, handler: Callable[[Config], None]) -> None:
        if event not in self.lifecycle:
            raise ConfigError(
                f"lifecycle event {event!r} is unknown; use one of {LIFECYCLE_EVENTS}"
            )
        self.lifecycle[event].append(handler)

    def fire(self, event: str) -> None:
        """Call the handlers of a lifecycle event; one failing does not stop the others."""
        for handler in self.lifecycle.get(event, []):
            try:
                handler(self)
            except Exception:
                log.exception("%s handler %r failed", event, handler)


DEFAULT_FILES: Final = ("config/kiq.yml", "config/sidekiq.yml")


def find_file(path: str | None) -> str | None:
    """The config file to read: ``path`` (``-C``) if given, else the first of
    DEFAULT_FILES in the working directory, as Sidekiq looks for config/sidekiq.yml."""
    if path is not None:
        return path
    return next((name for name in DEFAULT_FILES if Path(name).is_file()), None)


def read_file(path: str | os.PathLike[str], environment: str) -> dict[str, Any]:
    """Read Sidekiq's YAML config (``:concurrency:`` or ``concurrency:`` keys) into fields."""
    import yaml  # local: a worker configured by flags and env never loads PyYAML (idle RSS)

    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"config file {file}: cannot read it ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {file}: not UTF-8 text (byte {exc.start}); save it as UTF-8 YAML"
        ) from exc
    except (yaml.YAMLError, RecursionError) as exc:  # PyYAML recurses on deep nesting
        raise ConfigError(f"config file {file}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {file}: the top level must be a mapping of settings")
    data = {_key(k): v for k, v in data.items()}
    section = data.pop(environment, None)
    if isinstance(section, dict):
        data.update({_key(k): v for k, v in section.items()})
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key in _FILE_KEYS:
            values[_FILE_KEYS[key]] = _file_value(file, key, value)
        elif key not in _IGNORED_FILE_KEYS and not isinstance(value, dict):
            log.warning("config file %s: key %r is not a kiq setting and is ignored", file, key)
    values.update(queue_sections(data, values))
    return values


def _key(key: object) -> str:
    return str(key).lstrip(":")


def _file_value(file: Path, key: str, value: Any) -> Any:
    if key == "queues":
        return _file_queues(file, value)
    if key == "capsules":
        return capsules.from_file(value, str(file))
    if key in ("labels", "require"):
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list):
            raise ConfigError(f"config file {file}: {key}: {value!r} must be a list of strings")
        return [str(v) for v in value]
    if key == "dead_timeout_in_seconds":
        return float(value) if isinstance(value, int | float) else value
    return value


def _file_queues(file: Path, value: Any) -> list[Queue]:
    if not isinstance(value, list) or not value:
        raise ConfigError(
            f"config file {file}: queues: {value!r} must be a list of names or [name, weight] pairs"
        )
    queues: list[Queue] = []
    for entry in value:
        if isinstance(entry, str):
            queues.append(parse_queue(entry))
        elif isinstance(entry, list) and len(entry) in (1, 2) and isinstance(entry[0], str):
            queues.append(parse_queue(",".join(str(part) for part in entry)))
        else:
            raise ConfigError(
                f"config file {file}: queues: entry {entry!r} must be a name or [name, weight]"
            )
    return queues


# Where the config file section comes from without -e; after KIQ_ENV, Sidekiq's own
# order (cli.rb set_environment), so a Rails app's production: section applies unchanged.
_ENVIRONMENT_VARIABLES: Final = ("KIQ_ENV", "APP_ENV", "RAILS_ENV", "RACK_ENV")


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    provider = env.get("REDIS_PROVIDER")
    if provider and ":" in provider:  # Sidekiq's redis_connection.rb refuses this too
        raise ConfigError(
            f"environment REDIS_PROVIDER={provider!r}: it must hold the name of the variable "
            f"that holds the Redis URL (e.g. REDIS_PROVIDER=REDISCLOUD_URL), not a URL; "
            f"put the URL in REDIS_URL or KIQ_REDIS_URL"
        )
    url = (
        env.get("KIQ_REDIS_URL")
        or (env.get(provider) if provider else None)
        or env.get("REDIS_URL")
    )
    if url:
        values["redis_url"] = url
    if "KIQ_CONCURRENCY" in env:
        values["concurrency"] = _env_number("KIQ_CONCURRENCY", env["KIQ_CONCURRENCY"], int)
    if "KIQ_TIMEOUT" in env:
        values["timeout"] = _env_number("KIQ_TIMEOUT", env["KIQ_TIMEOUT"], float)
    return values


def _url_variable(env: Mapping[str, str]) -> str:
    """The variable ``_from_env`` took the URL from, in its order."""
    provider = env.get("REDIS_PROVIDER")
    for name in ("KIQ_REDIS_URL", provider, "REDIS_URL"):
        if name and env.get(name):
            return name
    return "REDIS_URL"


def _env_number(name: str, raw: str, kind: type[int] | type[float]) -> int | float:
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(f"environment {name}={raw!r} is not a {kind.__name__}") from None


_WHOLE_NUMBERS: Final = (
    ("concurrency", 1),
    ("max_retries", 0),
    ("dead_max_jobs", 1),
    ("prefetch", 0),
    ("processes", 1),
    ("max_recoveries", 0),
    ("process_ttl", 1),
    ("result_max_bytes", 64),
    ("wait_replicas", 0),
)
_SECONDS: Final = (
    "timeout",
    "redis_wait",
    "average_scheduled_poll_interval",
    "heartbeat_interval",
    "dead_timeout",
    "orphan_check_interval",
    "cron_poll_interval",
    "cron_grace",
    "batch_ttl",
    "batch_sweep_grace",
)
_OPTIONAL_SECONDS: Final = ("poll_interval_average", "poll_initial_wait")
_TYPED: Final[tuple[tuple[str, type | tuple[type, ...], str], ...]] = (
    ("redis_url", (str, type(None)), "a URL string such as redis://localhost:6379/0"),
    ("key_prefix", str, 'a string such as "myapp:" (or "" for none)'),
    ("tag", str, "a string"),
    ("activejob_rails", str, 'a Rails version string such as "6.1" or "7.1"'),
    ("environment", str, "a string such as production"),
    ("schedule_file", (str, type(None)), "a file path"),
    ("labels", list, "a list of strings"),
    ("require", list, "a list of module names or file paths"),
    ("verbose", bool, "true or false"),
    ("cluster", bool, "true or false"),
    ("partitions", dict, "a mapping of queue name to a partition count, e.g. {default: 8}"),
    ("skip_default_job_logging", bool, "true or false"),
)


# Query arguments redis-py reads from a URL and kiq lets through (redis-py passes any
# other name on to the connection, which fails with a TypeError at the first command).
# Left out on purpose: protocol, decode_responses, encoding (kiq needs RESP2 and bytes).
_URL_ARGUMENTS: Final = frozenset(
    {
        "db",
        "username",
        "password",
        "client_name",
        "socket_timeout",
        "socket_connect_timeout",
        "socket_keepalive",
        "health_check_interval",
        "max_connections",
        "retry_on_timeout",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_ca_data",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_password",
        "ssl_cert_reqs",
        "ssl_check_hostname",
        "ssl_ciphers",
        "ssl_min_version",
    }
)
_SCHEMES: Final = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster")
_URL_EXAMPLE: Final = (
    "redis://host:6379/0, rediss://host:6380/0 (TLS), unix:///path/to/redis.sock "
    "or redis+sentinel://host:26379/<service>"
)


def check_redis_url(url: str, where: str = "redis_url") -> None:
    """Raise ConfigError unless redis-py (and kiq's Sentinel reader) can use ``url``.

    Checked when the Config is built, so that a typo stops start-up with one line
    naming the URL (its password shown as ``***``) and the fix, instead of a
    traceback from deep inside redis-py at the first command.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(f"{where} {_safe_url(url)!r} has no scheme; write it as {_URL_EXAMPLE}")
    if scheme.lower() not in _SCHEMES:
        raise ConfigError(
            f"{where} {_safe_url(url)!r}: the scheme {scheme!r} is not a Redis one; use "
            f"{_URL_EXAMPLE}"
        )
    if scheme.lower() in ("redis+cluster", "redis+sentinel"):
        parse = ClusterURL.parse if scheme.lower() == "redis+cluster" else SentinelURL.parse
        try:
            parse(url)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        return
    if _cut_userinfo(scheme, rest) is not None:
        raise ConfigError(
            f"{where} {_safe_url(url)!r}: the user or password holds a '/', '?' or '#', "
            f"which ends the host part; percent-encode it (/ as %2F, ? as %3F, # as %23)"
        )
    parts = urlsplit(url)
    if scheme.lower() == "unix":
        if not parts.path:
            raise ConfigError(
                f"{where} {_safe_url(url)!r} names no socket; write unix:///path/to/redis.sock"
            )
    else:
        _check_url_host(url, parts, where)
    for name, values in parse_qs(parts.query, keep_blank_values=True).items():
        if name not in _URL_ARGUMENTS:
            raise ConfigError(
                f"{where} {_safe_url(url)!r}: the query argument {name!r} is not one kiq "
                f"passes to Redis; remove it, or use one of {', '.join(sorted(_URL_ARGUMENTS))}"
            )
        if name == "db" and not values[-1].isdigit():
            raise ConfigError(
                f"{where} {_safe_url(url)!r}: db={values[-1]!r} must be a database number, "
                f"e.g. ?db=1"
            )


def _check_url_host(url: str, parts: SplitResult, where: str) -> None:
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        port = 0
    if port == 0:
        raise ConfigError(
            f"{where} {_safe_url(url)!r}: the port must be a number from 1 to 65535, "
            f"e.g. redis://localhost:6379/0"
        )
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ConfigError(
            f"{where} {_safe_url(url)!r}: the path {parts.path!r} must be a database number, "
            f"e.g. redis://localhost:6379/0"
        )


def _cut_userinfo(scheme: str, rest: str) -> int | None:
    """The index of the '@' ending a userinfo that a '/', '?' or '#' in it cut short
    (``:Sla/sh@host``), else None. An '@' after a '=' is a query value's, not this."""
    if scheme.lower() == "unix" or "@" not in rest:
        return None
    end = min((rest.find(c) for c in "/?#" if c in rest), default=len(rest))
    at = rest.find("@")
    return at if at > end and "=" not in rest[end:at] else None


def _safe_url(url: str) -> str:
    """``redact(url)``; for a userinfo cut short by a '/', '?' or '#' in the password,
    whose end redact cannot find, the whole userinfo is hidden."""
    scheme, sep, rest = url.partition("://")
    at = _cut_userinfo(scheme, rest) if sep else None
    if at is not None:
        return redact(f"{scheme}://***@{rest[at + 1 :]}")
    return redact(url)


def _shown(value: object) -> str:
    """``repr(value)`` with any URL password hidden, for a wrongly typed setting."""
    if isinstance(value, str):
        return repr(_safe_url(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_shown(k)}: {_shown(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}: {value!r} is not allowed; use a whole number >= {minimum}")


def _check_seconds(name: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ConfigError(f"{name}: {value!r} is not allowed; use a number of seconds >= 0")


def _check_queues(queues: object) -> None:
    if not isinstance(queues, list) or not queues:
        raise ConfigError(
            f"queues: {queues!r} is not allowed; give at least one queue, e.g. "
            f'[("default", 0)] or -q default'
        )
    seen: set[str] = set()
    for entry in queues:
        if not (
            isinstance(entry, tuple)
            and len(entry) == 2
            and isinstance(entry[0], str)
            and entry[0]
            and isinstance(entry[1], int)
            and not isinstance(entry[1], bool)
            and entry[1] >= 0
        ):
            raise ConfigError(
                f"queues: entry {entry!r} is not allowed; use (name, weight) with a "
                f'non-empty name and a whole weight >= 0, e.g. ("critical", 3)'
            )
        if entry[0] in seen:  # Sidekiq: "queues: x cannot be defined twice"
            raise ConfigError(f"queues: {entry[0]!r} is listed twice; list each queue once")
        seen.add(entry[0])


_default: Config | None = None
_default_lock = threading.Lock()


def get_default() -> Config:
    """The process-wide Config used by ``Job.perform_async`` and ``kiq.api`` when none is given."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Config.load()
    return _default


def set_default(config: Config) -> None:
    global _default
    _default = config


def wait_for_redis(config: Config, seconds: float) -> None:
    """Return once ``config``'s Redis answers a PING; wait up to ``seconds`` for it.

    Why: a worker started during a deploy or a Redis failover would otherwise exit at
    once and need its supervisor's restart loop (Celery retries the broker at start-up
    too). One WARNING line says that it waits; PINGs back off from 0.1 s to 2 s. After
    ``seconds`` (``--redis-wait``, ``redis_wait``; 0: no wait), or at once for an error
    that waiting cannot fix (a wrong password), RedisUnavailable with one line.
    """
    store = config.store
    started = time.monotonic()
    delay = 0.1
    waiting = False
    while True:
        try:
            with store.translate_errors():
                store.rtt_us()
        except RedisUnavailable as exc:
            left = started + seconds - time.monotonic()
            if left <= 0 or _not_worth_waiting(exc):
                if seconds and not _not_worth_waiting(exc):
                    raise RedisUnavailable(
                        f"{exc} Waited {time.monotonic() - started:.1f}s (--redis-wait "
                        f"{seconds:g}, config redis_wait)."
                    ) from exc
                raise
            if not waiting:
                log.warning(
                    "waiting for Redis at %s (up to %gs, --redis-wait): %s",
                    store.safe_url,
                    seconds,
                    _reason(exc),
                )
                waiting = True
            time.sleep(min(delay, left))
            delay = min(delay * 2, 2.0)
        else:
            if waiting:
                log.info(
                    "Redis at %s answers after %.1fs", store.safe_url, time.monotonic() - started
                )
            return


def _not_worth_waiting(exc: BaseException) -> bool:
    """A wrong password or user: the server is up and will say the same again."""
    cause = exc.__cause__
    return cause is not None and "Authentication" in type(cause).__name__


def _reason(exc: BaseException) -> str:
    return str(exc.__cause__ or exc).rstrip(".")


def connect(**settings: Any) -> Config:
    """Configure the default Config (as ``configure``) and make sure it has a Redis.

    With no URL set anywhere this starts, or reuses, kiq's embedded server: the
    explicit form of "the first command just works" for scripts and notebooks::

        config = kiq.connect()      # or kiq.connect(redis_url="redis://host:6379/0")
        CalculateMetricsJob.perform_async(42)
    """
    config = configure(**settings) if settings else get_default()
    config.ensure_redis()
    return config


def configure(**settings: Any) -> Config:
    """Set fields on the default Config (building it from the environment first)."""
    config = get_default()
    names = {f.name for f in fields(Config)}
    for key in settings:
        if key not in names:
            raise ConfigError(f"configure(): {key!r} is not a setting; known: {sorted(names)}")
    # All or nothing: a refused value must not leave the process-wide Config half-changed.
    previous = {key: getattr(config, key) for key in settings}
    for key, value in settings.items():
        setattr(config, key, value)
    try:
        config.validate()
    except ConfigError:
        for key, value in previous.items():
            setattr(config, key, value)
        raise
    if "redis_url" in settings or "key_prefix" in settings:
        config.close()
    return config
