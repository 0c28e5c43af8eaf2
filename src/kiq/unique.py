"""Unique jobs (Sidekiq Enterprise's model): one copy of a job per lock window.

Why its own module: the client (which takes a lock in the same Lua step as the push),
the executor and the retry handler (which release it) and the admin API (which releases
it when a job is deleted) must compute the same lock key from the same payload, and a
job without ``unique_for`` must pay nothing for any of it.

The model, in payload fields Ruby Sidekiq Enterprise writes too:
  * ``unique_for``: seconds the lock lasts at most, counted from the push (an immediate
    job) or from the scheduled time (``perform_in``/``perform_at``): a lost worker can
    never hold it forever.
  * ``unique_until``: ``"success"`` (the default: released when the job succeeds or ends
    for good: dead, discarded, dropped, deleted) or ``"start"`` (released just before
    ``perform`` runs). Kept across retries either way.

The lock is ``unique:<digest>`` (``Keys.unique``), a STRING holding the jid of the job
that took it; releasing is a compare-and-delete on that jid (``unique_release.lua``), so
only that job's end frees it. The digest is SHA-1 over the JSON of ``[class, queue,
args]``, where ``args`` may be narrowed by the job class's ``unique_args`` hook
(registered here by ``kiq.Job``). The worker recomputes it from the payload it runs:
nothing extra rides in the payload, and a Ruby-pushed payload carrying ``unique_for``
gets the same release in a kiq worker. Enterprise's own digest input is not public, so
a lock taken by Ruby's Enterprise client is not found by kiq (it ends by its TTL), and
vice versa; see docs/unique.md.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from kiq import payload as wire
from kiq.errors import PayloadError

if TYPE_CHECKING:
    from kiq.config import Config
    from kiq.payload import Payload

log = logging.getLogger(__name__)

UNTIL: Final = ("success", "start")
UniqueArgs = Callable[[list[Any]], Sequence[Any]]

# wire name -> the class's unique_args hook (set by kiq.Job.__init_subclass__)
_hooks: dict[str, UniqueArgs] = {}


def register_hook(name: str, hook: UniqueArgs | None) -> None:
    """Use ``hook(args) -> list`` to narrow the arguments of jobs of class ``name``."""
    if hook is None:
        _hooks.pop(name, None)
    else:
        _hooks[name] = hook


def is_unique(payload: Payload) -> bool:
    """Does this job take a lock? (``unique_for`` set to a positive number)."""
    return bool(payload.get("unique_for"))


def digest(payload: Payload) -> str:
    """The lock's digest: SHA-1 hex of ``[class, queue, args]`` (args via ``unique_args``)."""
    name = payload["class"]
    args = payload.get("args") or []
    hook = _hooks.get(name)
    if hook is not None:
        args = list(hook(list(args)))
    data = wire.dumps([name, payload["queue"], args])
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


def ttl_ms(payload: Payload, now: float) -> int:
    """The lock's lifetime in ms: ``unique_for``, plus the delay until ``at`` if scheduled."""
    seconds = float(payload["unique_for"])
    at = payload.get("at")
    if at is not None and at > now:
        seconds += float(at) - now
    return max(1, int(seconds * 1000))


def release(config: Config, payload: Payload) -> None:
    """Free this job's lock if it still holds it (compare-and-delete on its jid).

    Best effort by design: an error (Redis away) is logged and the lock ends by its TTL;
    raising here would turn a finished job into a failed one, or record a failure twice.
    """
    try:
        key = config.store.keys.unique(digest(payload))
        config.store.unique_release([(key, str(payload.get("jid", "")))])
    except Exception as exc:
        log.warning(
            "cannot release the unique lock of %s jid=%s (%s); it ends by its TTL",
            payload.get("class", "?"),
            payload.get("jid", "?"),
            exc,
        )


def release_at_start(config: Config, payload: Payload | None) -> None:
    """``unique_until="start"``: free the lock just before ``perform`` runs."""
    if payload is not None and payload.get("unique_until") == "start" and is_unique(payload):
        release(config, payload)


def release_on_success(config: Config, payload: Payload | None) -> None:
    """``unique_until="success"`` (the default): free the lock once the job succeeded."""
    # per job: is_unique inlined (most jobs take no lock)
    if payload is not None and payload.get("unique_for") and payload.get("unique_until") != "start":
        release(config, payload)


def release_raws(config: Config, raws: Sequence[bytes | str]) -> int:
    """Free the locks of these stored jobs (deleted from a queue or set); how many were freed.

    Only members that look unique are parsed (``unique_for`` in the bytes), so clearing a
    big queue of plain jobs costs one substring test per job.
    """
    pairs: list[tuple[str, str]] = []
    for raw in raws:
        data = raw.encode() if isinstance(raw, str) else raw
        if b'"unique_for"' not in data:
            continue
        try:
            payload = wire.loads(data)
        except PayloadError:
            continue
        if is_unique(payload):
            pairs.append((config.store.keys.unique(digest(payload)), str(payload.get("jid", ""))))
    return config.store.unique_release(pairs) if pairs else 0
