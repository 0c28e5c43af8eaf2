"""Framework settings -> Config values, one reading for Django, Flask and Starlette.

Keys are Config field names (``redis_url``, ``concurrency``, ``queues``, ...); a key
that is not one fails at startup, naming the place it came from, instead of being
silently ignored. ``queues`` takes the forms of ``config/sidekiq.yml``: names,
``"name,weight"`` strings or ``[name, weight]`` pairs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kiq.config import Config, parse_queue
from kiq.errors import ConfigError

FIELDS = frozenset(Config.__dataclass_fields__)
# Config fields that code sets rather than settings (middleware, handlers, hooks): a
# framework's worker command keeps the default Config's, set by app code at startup.
CODE_FIELDS = (
    "client_middleware",
    "server_middleware",
    "error_handlers",
    "death_handlers",
    "lifecycle",
    "cron_jobs",
)


def config_values(raw: object, where: str, *, own: Iterable[str] = ()) -> dict[str, Any]:
    """Check ``raw`` and return its Config values; keys in ``own`` are the caller's to read."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a dict of kiq settings, got {raw!r}")
    own = frozenset(own)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in own:
            continue
        if key not in FIELDS:
            known = sorted(FIELDS | own)
            raise ConfigError(f"{where}: {key!r} is not a kiq setting; known: {known}")
        values[key] = queues(value, where) if key == "queues" else value
    return values


def queues(value: object, where: str) -> list[tuple[str, int]]:
    """``["critical,3", ["default", 2], "low"]`` -> ``[("critical", 3), ("default", 2), ...]``."""
    if not isinstance(value, list | tuple) or not value:
        raise ConfigError(
            f"{where}: queues must be a list of names or [name, weight] pairs, got {value!r}"
        )
    parsed: list[tuple[str, int]] = []
    for entry in value:
        if isinstance(entry, str):
            parsed.append(parse_queue(entry))
        elif isinstance(entry, list | tuple) and len(entry) in (1, 2):
            parsed.append(parse_queue(",".join(str(part) for part in entry)))
        else:
            raise ConfigError(f"{where}: queue {entry!r} must be a name or [name, weight]")
    return parsed


def apply(config: Config, values: Mapping[str, Any]) -> Config:
    """Set the values on ``config`` and check them, as ``kiq.configure`` does for the default."""
    for key, value in values.items():
        setattr(config, key, value)
    config.validate()
    if "redis_url" in values or "key_prefix" in values:
        config.close()  # connect to the configured server on next use
    return config


def worker_base(values: Mapping[str, Any], default: Config) -> dict[str, Any]:
    """``kiq.cli.run_worker``'s base: the framework's settings plus the code-set fields.

    ``run_worker`` builds a new Config (flags > base > env > file); without this, what
    the app's startup code added to the default Config would be lost in the worker.
    """
    base = dict(values)
    base.update({name: getattr(default, name) for name in CODE_FIELDS})
    return base
