"""The operator's commands: ``kiq status``, ``kiq ping``, ``kiq quiet``, ``kiq stop``, ``kiq mark``.

Why commands and not only the Web UI: monitoring checks, liveness probes, deploy
scripts and Kubernetes hooks run a command and read its exit status. Everything here
reads or writes through ``kiq.api``, so it sees Ruby Sidekiq processes sharing the
Redis too, and quiet/stop go through the same ``<identity>-signals`` list as the Web
UI's buttons (a process acts on it at its next heartbeat).

Exit status (for scripts and probes):

* ``status``: 0; 1 when a ``--max-latency QUEUE=SECONDS`` is exceeded; 2 on errors.
* ``ping``: 0 when Redis answers and, if a process is named, its heartbeat is fresh;
  1 otherwise (Redis unreachable included: a probe only needs yes or no).
* ``quiet`` / ``stop``: 0 when every named process was signalled (and, with
  ``--wait``, acted); 1 when one is unknown, did not act in time, or none matched.

Example::

    kiq status --max-latency default=30 --max-latency critical=5 || page-someone
    kiq ping --local --max-age 30          # Kubernetes livenessProbe
    kiq quiet --local --wait 30            # Kubernetes preStop
    kiq stop --all
    kiq mark "v1.2 $(git rev-parse --short HEAD)"
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, TextIO

from kiq import api, embedded
from kiq import payload as wire
from kiq.config import Config
from kiq.errors import ConfigError, KiqError

POLL: Final = 0.2  # seconds between checks while --wait-ing for processes to act


def use_redis(config: Config) -> None:
    """Point ``config`` at the embedded server only if one runs: never start one to ask it."""
    if config.redis_url is not None:
        return
    found = embedded.status()
    if not found.running:
        raise ConfigError(
            "no Redis URL is set (--redis-url, KIQ_REDIS_URL or REDIS_URL) and the embedded "
            "server is not running: there is nothing to ask"
        )
    config.redis_url = found.url


def parse_thresholds(specs: Sequence[str]) -> dict[str, float]:
    """``["default=30", "critical=2.5"]`` -> ``{"default": 30.0, "critical": 2.5}``."""
    limits: dict[str, float] = {}
    for spec in specs:
        name, _, seconds = spec.partition("=")
        try:
            value = float(seconds)
        except ValueError:
            value = -1.0
        if not name or value < 0:
            raise ConfigError(
                f"--max-latency {spec!r}: use QUEUE=SECONDS, e.g. --max-latency default=30"
            )
        limits[name] = value
    return limits


def this_host() -> str:
    """The hostname a kiq process on this machine puts in its identity (kiq.launcher)."""
    return os.environ.get("DYNO") or socket.gethostname()


# -- status -----------------------------------------------------------------------------


def snapshot(config: Config, now: float | None = None) -> dict[str, Any]:
    """Processes, queues, set sizes and totals as plain data (``kiq status --json``)."""
    now = wire.now() if now is None else now
    with config.store.translate_errors():
        stats = api.Stats(config)
        queues = api.queue_summaries(config, now)
        processes = list(api.ProcessSet(config))
    return {
        "redis": config.store.safe_url,
        "processes": [
            {
                "identity": p.identity,
                "hostname": p.hostname,
                "pid": p.pid,
                "tag": p.tag,
                "version": p.version,
                "busy": p.busy,
                "concurrency": p.concurrency,
                "queues": p.queues,
                "quiet": p.stopping,
                "beat_age": round(now - p.beat.timestamp(), 1) if p.beat else None,
            }
            for p in processes
        ],
        "queues": [
            {"name": q.name, "size": q.size, "latency": round(q.latency, 3), "paused": q.paused}
            for q in queues
        ],
        "scheduled": stats.scheduled_size,
        "retry": stats.retry_size,
        "dead": stats.dead_size,
        "processed": stats.processed,
        "failed": stats.failed,
    }


def over_limit(data: dict[str, Any], limits: dict[str, float]) -> list[str]:
    """A line for each queue whose latency exceeds its limit."""
    latency = {q["name"]: q["latency"] for q in data["queues"]}
    return [
        f"queue {name}: latency {latency[name]:.1f}s is over {limit:g}s"
        for name, limit in limits.items()
        if latency.get(name, 0.0) > limit
    ]


def render(data: dict[str, Any]) -> str:
    processes = data["processes"]
    busy = sum(p["busy"] for p in processes)
    slots = sum(p["concurrency"] for p in processes)
    lines = [
        f"Redis {data['redis']}",
        "",
        f"Processes: {len(processes)} ({busy} of {slots} busy)",
    ]
    for p in processes:
        flags = "  quiet" if p["quiet"] else ""
        age = "?" if p["beat_age"] is None else f"{p['beat_age']:g}s"
        lines.append(
            f"  {p['identity']}  {p['tag'] or '-'}  {p['busy']}/{p['concurrency']} busy  "
            f"queues {','.join(p['queues'])}  beat {age} ago{flags}"
        )
    width = max([len(q["name"]) for q in data["queues"]] + [5])
    lines += ["", f"Queues: {len(data['queues'])}", f"  {'NAME':<{width}}  {'SIZE':>8}  LATENCY"]
    for q in data["queues"]:
        paused = "  paused" if q["paused"] else ""
        lines.append(f"  {q['name']:<{width}}  {q['size']:>8}  {q['latency']:.1f}s{paused}")
    lines += [
        "",
        f"Sets: {data['scheduled']} scheduled, {data['retry']} retries, {data['dead']} dead",
        f"Totals: {data['processed']} processed, {data['failed']} failed",
    ]
    return "\n".join(lines)


def status(
    config: Config,
    limits: dict[str, float],
    *,
    as_json: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Print the cluster's state; 1 if a queue's latency is over its limit."""
    use_redis(config)
    data = snapshot(config)
    problems = over_limit(data, limits)
    if as_json:
        print(json.dumps({**data, "over": problems}, indent=2), file=out)
    else:
        print(render(data), file=out)
    for problem in problems:
        print(f"kiq status: {problem}", file=err or sys.stderr)
    return 1 if problems else 0


# -- ping -------------------------------------------------------------------------------


def read_pid(path: str) -> int:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"--pidfile {path}: cannot read a process id from it ({exc}); start the "
            f"worker with kiq worker --pidfile {path}"
        ) from exc


def ping(
    config: Config,
    *,
    identity: str | None = None,
    pid: int | None = None,
    local: bool = False,
    max_age: float = 30.0,
    out: TextIO | None = None,
) -> int:
    """0 if Redis answers and (when a process is named) its last heartbeat is fresh."""
    try:
        use_redis(config)
        with config.store.translate_errors():
            config.store.ping()
            if identity is None and pid is None and not local:
                print(f"ok: Redis {config.store.safe_url} answers", file=out)
                return 0
            processes = _select(config, [identity] if identity else [], pid=pid, local=local)
    except KiqError as exc:
        print(f"not ok: {exc}", file=out)
        return 1
    now = wire.now()
    fresh = [p for p in processes if p.beat and now - p.beat.timestamp() <= max_age]
    if not fresh:
        which = identity or (f"pid {pid} on {this_host()}" if pid else f"host {this_host()}")
        print(f"not ok: no process ({which}) has beaten in the last {max_age:g}s", file=out)
        return 1
    for p in fresh:
        print(f"ok: {p.identity} beat {now - p.beat.timestamp():.1f}s ago", file=out)  # type: ignore[union-attr]  # fresh ones have a beat
    return 0


def _select(
    config: Config,
    identities: Sequence[str],
    *,
    pid: int | None = None,
    local: bool = False,
    every: bool = False,
) -> list[api.Process]:
    """The live processes named by identity, or by pid/host on this machine, or all."""
    processes = list(api.ProcessSet(config))
    if every:
        return processes
    host = this_host()
    chosen = [p for p in processes if p.identity in identities]
    if pid is not None:
        chosen += [p for p in processes if p.pid == pid and p.hostname == host]
    if local:
        chosen += [p for p in processes if p.hostname == host]
    return list({p.identity: p for p in chosen}.values())


# -- quiet / stop -----------------------------------------------------------------------


def signal(
    config: Config,
    action: str,
    identities: Sequence[str],
    *,
    every: bool = False,
    local: bool = False,
    wait: float | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Send TSTP (``quiet``) or TERM (``stop``) through each process's signals list.

    With ``wait``, also wait until each process reports quiet (quiet) or has left the
    process set (stop), for at most ``wait`` seconds.
    """
    use_redis(config)
    with config.store.translate_errors():
        targets = _select(config, identities, local=local, every=every)
        unknown = sorted(set(identities) - {p.identity for p in targets})
        for identity in unknown:
            print(
                f"kiq {action}: no live process {identity}; `kiq status` lists them",
                file=err or sys.stderr,
            )
        if not targets:
            if not unknown:
                print(f"kiq {action}: no process matched", file=err or sys.stderr)
            return 1
        failed = bool(unknown)
        for process in targets:
            try:
                if action == "quiet":
                    process.quiet()
                else:
                    process.stop()
            except KiqError as exc:  # an embedded process ignores remote signals
                print(f"kiq {action}: {exc}", file=err or sys.stderr)
                failed = True
                continue
            print(f"{action}: {process.identity}", file=out)
        if wait is not None and not _wait_until_acted(config, action, targets, wait, err):
            failed = True
    return 1 if failed else 0


def _acted(config: Config, action: str, identity: str) -> bool:
    process = api.ProcessSet.get(identity, config)
    return process is None or (action == "quiet" and process.stopping)


def _wait_until_acted(
    config: Config, action: str, targets: Sequence[api.Process], wait: float, err: TextIO | None
) -> bool:
    pending = {p.identity for p in targets if not p.embedded}
    deadline = time.monotonic() + wait
    pause = threading.Event()  # never set: an interruptible sleep (STYLE D.6)
    while pending:
        pending = {identity for identity in pending if not _acted(config, action, identity)}
        if pending and time.monotonic() >= deadline:
            for identity in sorted(pending):
                print(
                    f"kiq {action}: {identity} did not act within {wait:g}s", file=err or sys.stderr
                )
            return False
        if pending:
            pause.wait(POLL)
    return True


# -- mark -------------------------------------------------------------------------------


def mark(config: Config, label: str, out: TextIO | None = None) -> int:
    """Record a deploy mark (``kiq.api.deploy_mark``) for the metrics graphs."""
    use_redis(config)
    with config.store.translate_errors():
        written = api.deploy_mark(label, config=config)
    print(f"marked {label!r}" if written else f"{label!r} was already marked this minute", file=out)
    return 0


def cancel(config: Config, jids: Sequence[str], out: TextIO | None = None) -> int:
    """``kiq cancel JID...`` (``kiq.api.cancel``): one line per jid; 1 if one was not found."""
    use_redis(config)
    missing = 0
    with config.store.translate_errors():
        for jid in jids:
            result = api.cancel(jid, config=config)
            missing += not result.found
            print(result, file=out)
    return 1 if missing else 0
