"""Capsules: named pools of one kiq process, each with its own queues, slots and mode.

Sidekiq 7's model (``config.capsule("name") { |cap| ... }``): a process runs the
``default`` capsule (the top-level ``queues`` and ``concurrency``) plus any named ones.
Each capsule fetches, runs and acknowledges on its own (kiq.manager), so a capsule full
of slow jobs never starves another. kiq adds a ``mode``:

* ``thread``: ``def perform`` jobs, one thread per slot (a named capsule takes no
  ``async def`` job; the default capsule runs both kinds, as kiq always has);
* ``async``: ``async def perform`` jobs only, every slot a task on one event loop
  thread, so a capsule of thousands costs no thread per job.

and ``processes``: by default a capsule runs in the shared worker processes (every
capsule in each of ``--processes`` many); ``processes: k`` gives it k processes of its
own that run it alone, so it has a GIL of its own (a CPU-busy thread capsule next to
an async one: issue 14's mixed capsules). ``process_groups`` lists what each process
of ``kiq worker`` runs (kiq.supervisor).

This module holds the value object and its three spellings, checked at the door:
the YAML ``:capsules:`` mapping, ``Config.capsule(...)`` in code and the worker's
``-g NAME:QUEUES:CONCURRENCY[:MODE[:PROCESSES]]`` flag (docs/capsules.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from kiq.errors import ConfigError

Mode = Literal["thread", "async"]
MODES: Final = ("thread", "async")
DEFAULT: Final = "default"  # the capsule of the top-level queues and concurrency
FLAG_EXAMPLE: Final = "-g io:io,webhooks=2:1000:async"
FLAG_SPELLING: Final = "NAME:QUEUES:CONCURRENCY[:MODE[:PROCESSES]]"


@dataclass(frozen=True, slots=True)
class Capsule:
    """One capsule's settings: its name, queues (name, weight), slots, mode and processes.

    ``weight`` 0 everywhere means strict order, as for the top-level queues.
    ``processes`` None: the capsule runs in the shared worker processes; k: in k
    processes of its own, which run no other capsule.
    """

    name: str
    queues: tuple[tuple[str, int], ...]
    concurrency: int
    mode: Mode = "thread"
    processes: int | None = None

    @property
    def is_default(self) -> bool:
        return self.name == DEFAULT

    def runs(self, is_async: bool) -> bool:
        """May a job of this kind (``async def perform`` or not) run in this capsule?"""
        if self.mode == "async":
            return is_async
        return self.is_default or not is_async  # the default capsule runs both kinds

    def mismatch(self, job: str, is_async: bool) -> str:
        """The error for a job of the wrong kind routed here: what, why and the fix."""
        if is_async:
            return (
                f"{job} has async def perform but its queue is served by the thread "
                f"capsule {self.name!r}: give the job a queue of an async capsule (or make "
                f"{self.name!r} mode async), see docs/capsules.md"
            )
        return (
            f"{job} has a plain def perform but its queue is served by the async capsule "
            f"{self.name!r}, which runs only async def jobs on its event loop: make perform "
            f"async def, or give the job a queue of a thread capsule (docs/capsules.md)"
        )


def build(
    name: object,
    queues: object,
    concurrency: object,
    mode: object = "thread",
    processes: object = None,
    *,
    where: str,
) -> Capsule:
    """A Capsule from loosely typed parts (code, YAML); ConfigError naming ``where``."""
    if not isinstance(name, str) or not name or ":" in name:
        raise ConfigError(
            f"{where}: capsule name {name!r} must be a non-empty string without ':', e.g. io"
        )
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigError(
            f"{where}: capsule {name!r}: concurrency {concurrency!r} must be a whole number "
            f">= 1 (thread capsules: threads; async capsules: coroutines, e.g. 1000)"
        )
    if mode not in MODES:
        raise ConfigError(
            f"{where}: capsule {name!r}: mode {mode!r} is not allowed; use thread (def perform "
            f"jobs, a thread per slot) or async (async def perform jobs on one event loop)"
        )
    own = check_processes(name, processes, where)
    return Capsule(name, _queues(queues, name, where), concurrency, mode, own)


def check_processes(name: str, processes: object, where: str) -> int | None:
    """A capsule's ``processes``: None (the shared processes) or a whole number >= 1;
    the default capsule has none of its own (``--processes`` is theirs)."""
    if processes is None:
        return None
    if name == DEFAULT:
        raise ConfigError(
            f"{where}: the default capsule runs in the shared worker processes and cannot "
            f"have processes of its own; use --processes N (:processes: in the file) for "
            f"their number"
        )
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ConfigError(
            f"{where}: capsule {name!r}: processes {processes!r} must be a whole number >= 1 "
            f"(worker processes that run only this capsule; leave it out to run the capsule "
            f"in the shared ones)"
        )
    return processes


def _queues(value: object, name: str, where: str) -> tuple[tuple[str, int], ...]:
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise ConfigError(
            f"{where}: capsule {name!r}: queues {value!r} must be a non-empty list of names "
            f'or [name, weight] pairs, e.g. ["io", ["webhooks", 2]]'
        )
    out: list[tuple[str, int]] = []
    for entry in value:
        if isinstance(entry, str):
            queue, weight = entry, 0
        elif (
            isinstance(entry, Sequence)
            and len(entry) == 2
            and isinstance(entry[0], str)
            and isinstance(entry[1], int)
            and not isinstance(entry[1], bool)
        ):
            queue, weight = entry[0], entry[1]
        else:
            raise ConfigError(
                f"{where}: capsule {name!r}: queue entry {entry!r} must be a name or "
                f'[name, weight] with a whole weight, e.g. ["webhooks", 2]'
            )
        if not queue or weight < 0:
            raise ConfigError(
                f"{where}: capsule {name!r}: queue entry {entry!r} needs a name and a weight >= 0"
            )
        if any(queue == seen for seen, _ in out):
            raise ConfigError(f"{where}: capsule {name!r} lists queue {queue!r} twice")
        out.append((queue, weight))
    return tuple(out)


def parse_flag(spec: str) -> Capsule:
    """``-g NAME:QUEUES:CONCURRENCY[:MODE[:PROCESSES]]``; QUEUES comma-separated, ``q=3``
    for a weight.

    ``-g io:io,webhooks=2:1000:async`` is the async capsule ``io`` of 1000 slots serving
    ``io`` and ``webhooks`` (weights 0 and 2); ``-g io:io:1000:async:1`` runs it in one
    process of its own. One ConfigError line for a bad spelling.
    """
    parts = spec.split(":")
    if len(parts) not in (3, 4, 5):
        raise ConfigError(
            f"-g {spec!r}: a capsule is {FLAG_SPELLING}, e.g. {FLAG_EXAMPLE} "
            f"(for a process tag use --tag)"
        )
    name, queue_part, count, *rest = parts
    concurrency = _whole(count)
    processes = _whole(rest[1]) if len(rest) == 2 else None
    queues: list[object] = []
    for item in queue_part.split(","):
        queue, sep, weight = item.strip().partition("=")
        if sep:
            try:
                queues.append([queue, int(weight)])
            except ValueError:
                raise ConfigError(
                    f"-g {spec!r}: weight {weight!r} of queue {queue!r} must be a whole "
                    f"number, e.g. {FLAG_EXAMPLE}"
                ) from None
        else:
            queues.append(queue)
    mode = rest[0] if rest else "thread"
    return build(name, queues, concurrency, mode, processes, where=f"-g {spec!r}")


def _whole(text: str) -> object:
    """``"12"`` -> 12; anything else stays the text, for ``build`` to name in its error."""
    try:
        return int(text)
    except ValueError:
        return text


def from_file(value: Any, file: str) -> list[Capsule]:
    """Sidekiq 7's ``:capsules:`` mapping (keys with or without leading colons)."""
    where = f"config file {file}: capsules"
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{where}: {value!r} must be a mapping of name -> "
            f"{{queues, concurrency, mode, processes}}"
        )
    capsules: list[Capsule] = []
    for raw_name, settings in value.items():
        name = str(raw_name).lstrip(":")
        if not isinstance(settings, Mapping):
            raise ConfigError(f"{where}: {name!r} must be a mapping with queues and concurrency")
        fields = {str(k).lstrip(":"): v for k, v in settings.items()}
        unknown = sorted(set(fields) - {"queues", "concurrency", "mode", "processes"})
        if unknown:
            raise ConfigError(
                f"{where}: {name!r} has unknown keys {unknown}; use queues, concurrency, "
                f"mode, processes"
            )
        capsules.append(
            build(
                name,
                fields.get("queues", ["default"]),
                fields.get("concurrency", 10),
                fields.get("mode", "thread"),
                fields.get("processes"),
                where=where,
            )
        )
    return capsules


def process_groups(capsules: Sequence[Capsule], shared: int) -> list[tuple[str, ...]]:
    """What each worker process runs, one entry per process: ``shared`` processes of the
    capsules without processes of their own (the default one always among them), then
    ``processes`` many of each capsule that has its own, each running it alone.

    ``[default, io(processes=2)]``, shared 1 -> ``[("default",), ("io",), ("io",)]``.
    """
    common = tuple(c.name for c in capsules if c.processes is None)
    groups = [common] * shared
    for capsule in capsules:
        if capsule.processes is not None:
            groups += [(capsule.name,)] * capsule.processes
    return groups


def check_all(capsules: Sequence[Capsule]) -> None:
    """Every capsule name once, and every queue served by one capsule only.

    A queue in two capsules is refused rather than shared: a job would run in whichever
    capsule fetched it first, so its mode (and its slots) would be a coin toss, and
    one capsule's stop could requeue the other's in-progress jobs (docs/capsules.md).
    """
    owners: dict[str, str] = {}
    names: set[str] = set()
    for capsule in capsules:
        if capsule.name in names:
            raise ConfigError(f"capsule {capsule.name!r} is defined twice; name each one once")
        names.add(capsule.name)
        for queue, _ in capsule.queues:
            other = owners.setdefault(queue, capsule.name)
            if other != capsule.name:
                raise ConfigError(
                    f"queue {queue!r} is in capsules {other!r} and {capsule.name!r}: a queue "
                    f"belongs to one capsule; drop it from one of them (the default capsule's "
                    f"queues are the top-level queues, -q)"
                )


def check_kinds(capsules: Sequence[Capsule], jobs: Mapping[str, tuple[str, bool]]) -> None:
    """Start-up check: each known job's default queue is served by a capsule of its kind.

    ``jobs``: job name -> (its default queue, whether perform is ``async def``). A job
    whose queue no capsule here serves is another process's business.
    """
    owner = {queue: capsule for capsule in capsules for queue, _ in capsule.queues}
    problems = [
        owner[queue].mismatch(name, is_async)
        for name, (queue, is_async) in sorted(jobs.items())
        if queue in owner and not owner[queue].runs(is_async)
    ]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(problems[0] + more)
