"""Hostile input for the chaos run (issue 12): what bench/chaos.py plants besides its jobs.

A kiq worker shares Redis with other producers (Ruby Sidekiq, scripts, an operator's
``redis-cli``), so it must survive whatever they write. The run plants:

  * **bad-field payloads**: ``chaos.Work`` jobs (they fail once, so the retry path reads
    the fields too) written straight to Redis with one bad field each
    (``"kiq_recoveries": "x"``, ``"retry": "maybe"``, ``"timeout": 1e300``, ...), on a
    queue, in ``schedule`` and ``retry`` (due now), and in the in-progress list of a
    "ghost" process that is registered in ``kiq|fetchers`` but never beats, so the
    orphan sweep reads them (issue 12's defect 1);
  * **non-JSON garbage** and JSON that is not a job object (``[1,2,3]``, ``null``, 5,000
    nested brackets, an object without ``jid`` or ``args``);
  * **timeout guards**: ``chaos.Hang`` jobs (``timeout: 1``, ``retry: 0``), pushed after
    the bad timeouts, that must die as ``JobTimeout``: one bad timeout must not switch
    timeouts off for the whole process (defect 4);
  * **a WRONGTYPE queue**: ``queue:wrongtype`` is a STRING and every worker is
    configured to fetch from it besides the good queues (defect 3);
  * **an OOM window**: ``CONFIG SET maxmemory 1`` for a few seconds, then 0 (defect 2).

Each plant must end *accounted for*, as kiq.payload's table says: a bad field the engine
acts on makes the job dead unrun (``error_class`` ``kiq.PayloadError`` and a message), a
bad field that only describes it is dropped and the job runs to the end, and what is not
a job at all (garbage, no class string, no args array) is in the dead set as written.
Worker logs must show no ``Exception in thread`` (a thread that died) and at least one
line about the WRONGTYPE queue.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import redis

from kiq.payload import new_jid

WRONGTYPE_QUEUE = "wrongtype"  # queue:wrongtype is a STRING; workers are told to fetch it
PLANT_FIELD = "chaos_plant"  # every JSON plant names itself here, so the dead set shows it

# (name, fields that replace a good chaos.Work payload's, outcome), the outcome as
# kiq.payload's table says (issue 12: checked once, at the door):
#   "refused": a field the engine acts on is bad: dead, unrun, error_class kiq.PayloadError
#              and a message naming the field;
#   "done":    a field that only describes the job is bad: dropped, and the job runs;
#   "dead":    not a job at all (no class string, no args array): dead, as written or
#              with a message.
BAD_FIELDS: list[tuple[str, dict[str, Any], str]] = [
    ("kiq_recoveries=x", {"kiq_recoveries": "x"}, "refused"),
    ("kiq_recoveries=-7", {"kiq_recoveries": -7}, "refused"),
    ("retry=maybe", {"retry": "maybe"}, "refused"),
    ("retry=-3", {"retry": -3}, "refused"),
    ("retry_count=x", {"retry_count": "x"}, "refused"),
    ("retry_count=1e300", {"retry_count": 1e300}, "refused"),
    ("timeout=1e300", {"timeout": 1e300}, "refused"),
    ("timeout=nan", {"timeout": "nan"}, "refused"),
    ("timeout=-1", {"timeout": -1}, "refused"),
    ("timeout=[]", {"timeout": []}, "refused"),
    ("at=soon", {"at": "soon"}, "refused"),
    ("queue=[x]", {"queue": ["x"]}, "refused"),
    ("created_at=yesterday", {"created_at": "yesterday"}, "done"),
    ("enqueued_at={}", {"enqueued_at": {}}, "done"),
    ("backtrace=lots", {"backtrace": "lots"}, "done"),
    ("args=string", {"args": "not a list"}, "dead"),
    ("class=42", {"class": 42, "retry": 0}, "dead"),
]
# Raw bytes that are not a job: non-JSON, or JSON of another shape. They carry no jid,
# so the dead set must hold them as written (or a JSON member naming the plant).
GARBAGE: list[tuple[str, bytes]] = [
    ("not-json", b"not json {"),
    ("binary", b"\xff\xfe\x00garbage\x80"),
    ("json-list", b"[1, 2, 3]"),
    ("json-null", b"null"),
    ("json-string", b'"just a string"'),
    ("deep-nesting", b"[" * 5000 + b"]" * 5000),
]
HANG_GUARDS = 4  # chaos.Hang jobs that must die as JobTimeout


@dataclass(frozen=True)
class Plant:
    """One hostile write and what must become of it."""

    name: str
    raw: bytes  # exactly what is written to Redis
    where: str  # "queue", "schedule", "retry" or "inprogress" (a ghost process's list)
    outcome: str  # "refused", "done", "dead" or "timeout" (see BAD_FIELDS; HANG_GUARDS)
    jid: str | None = None


def _job(name: str, index: int, fields: dict[str, Any], now: float) -> tuple[str, bytes]:
    jid = new_jid()
    payload: dict[str, Any] = {
        "class": "chaos.Work",
        "queue": "default",
        "args": [index, 0, True],  # flaky: fails once, so the retry path reads the fields
        "retry": 5,
        "jid": jid,
        "created_at": now,
        "enqueued_at": now,
        PLANT_FIELD: name,
    }
    payload.update(fields)
    return jid, json.dumps(payload).encode()


def make_plants(first_index: int, rng: random.Random) -> list[Plant]:
    """Every plant of one run, in the order they are written (spread over the run)."""
    now = time.time()
    plants: list[Plant] = []
    index = first_index
    # Twice on a queue, the path most jobs take (all plants are shuffled below).
    for where, tag in [("queue", "queue"), ("queue", "queue#2"), ("schedule", "schedule"),
                       ("retry", "retry"), ("inprogress", "inprogress")]:  # fmt: skip
        for name, fields, outcome in BAD_FIELDS:
            jid, raw = _job(f"{name}@{tag}", index, fields, now)
            plants.append(Plant(f"{name}@{tag}", raw, where, outcome, jid))
            index += 1
    for where in ("queue", "retry"):
        for name, raw in GARBAGE:
            plants.append(Plant(f"{name}@{where}", raw, where, "dead"))
    no_jid = {"class": "chaos.Work", "retry": 0, PLANT_FIELD: "no-jid-no-args@queue"}
    plants.append(Plant("no-jid-no-args@queue", json.dumps(no_jid).encode(), "queue", "dead"))
    # The exact case of defect 1: a job that kills its process, with a bad recovery count.
    jid = new_jid()
    poison = {"class": "chaos.Poison", "queue": "default", "args": [-1], "jid": jid,
              "kiq_recoveries": "x", "created_at": now,
              PLANT_FIELD: "poison-recoveries=x"}  # fmt: skip
    plants.append(
        Plant("poison-recoveries=x", json.dumps(poison).encode(), "queue", "refused", jid)
    )
    rng.shuffle(plants)
    for n in range(HANG_GUARDS):  # last: after the bad timeouts have reached the workers
        jid = new_jid()
        hang = {"class": "chaos.Hang", "queue": "default", "args": [30], "jid": jid,
                "timeout": 1, "retry": 0, "created_at": now, PLANT_FIELD: f"hang-{n}"}  # fmt: skip
        plants.append(Plant(f"hang-{n}", json.dumps(hang).encode(), "queue", "timeout", jid))
    return plants


def plant(r: redis.Redis, item: Plant) -> None:
    """Write one plant as a foreign producer would: raw commands, no kiq client."""
    if item.where == "queue":
        r.sadd("queues", "default")
        r.lpush("queue:default", item.raw)
    elif item.where in ("schedule", "retry"):
        r.zadd(item.where, {item.raw: time.time() - 1})
    else:  # a process that registered its in-progress list and then vanished
        ghost = f"ghost:{os.getpid()}:{new_jid()[:12]}"
        r.hset("kiq|fetchers", ghost, json.dumps(["default"]))
        r.lpush(f"kiq|inprogress|{ghost}|default", item.raw)


def plant_wrong_type(r: redis.Redis) -> None:
    """The WRONGTYPE queue: a STRING where kiq expects a LIST (SET queue:wrongtype x)."""
    r.set(f"queue:{WRONGTYPE_QUEUE}", "this is not a list")
    r.sadd("queues", WRONGTYPE_QUEUE)


def zmembers(r: redis.Redis, key: str) -> list[bytes]:
    """The members of a sorted set (typed: redis-py types replies as a sync/async union)."""
    return cast("list[bytes]", r.zrange(key, 0, -1))


def lmembers(r: redis.Redis, key: str | bytes) -> list[bytes]:
    return cast("list[bytes]", r.lrange(key, 0, -1))


def smembers(r: redis.Redis, key: str) -> set[str]:
    return {member.decode() for member in cast("set[bytes]", r.smembers(key))}


def hkeys(r: redis.Redis, key: str) -> list[str]:
    return [field.decode() for field in cast("list[bytes]", r.hkeys(key))]


def counts(r: redis.Redis, key: str) -> dict[str, int]:
    """A hash of counters, decoded."""
    reply = cast("dict[bytes, bytes]", r.hgetall(key))
    return {field.decode(): int(value) for field, value in reply.items()}


def decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def account_plants(r: redis.Redis, plants: list[Plant], done: set[str]) -> dict[str, str]:
    """What became of each plant; a value starting with ``"FAIL"`` is unaccounted for.

    ``r`` does not decode replies: garbage plants are not UTF-8.
    """
    dead: dict[str, Any] = {}  # plant name or raw -> the dead member, decoded if JSON
    for raw in zmembers(r, "dead"):
        member = decode(raw)
        name = member.get(PLANT_FIELD) if isinstance(member, dict) else None
        dead[name if isinstance(name, str) else raw.decode("latin-1")] = member
    pending: dict[str, str] = {}  # plant name or raw -> where it still is
    for key, raws in holdings(r):
        for raw in raws:
            member = decode(raw)
            name = member.get(PLANT_FIELD) if isinstance(member, dict) else None
            pending[name if isinstance(name, str) else raw.decode("latin-1")] = key
    outcomes: dict[str, str] = {}
    for item in plants:
        outcomes[item.name] = _outcome(item, dead, pending, done)
    return outcomes


def holdings(r: redis.Redis) -> Iterable[tuple[str, list[bytes]]]:
    """Every list and sorted set a job can wait in: queues, in-progress lists, retry..."""
    for key in [*r.scan_iter(match="*queue*"), *r.scan_iter(match="kiq|inprogress|*")]:
        name = key.decode()
        if r.type(key) == b"list":
            yield name, lmembers(r, key)
    for name in ("retry", "schedule"):
        yield name, zmembers(r, name)


def _outcome(item: Plant, dead: dict[str, Any], pending: dict[str, str], done: set[str]) -> str:
    key = item.name if isinstance(decode(item.raw), dict) else item.raw.decode("latin-1")
    if item.jid is not None and item.jid in done:
        if item.outcome == "done":
            return "done"
        return f"FAIL: ran to the end, but must be {item.outcome}"
    if key in dead:
        return _dead_outcome(item, dead[key])
    if key in pending:
        return f"FAIL: still in {pending[key]}"
    if item.outcome == "done":
        return "FAIL: lost (not done, not dead, nowhere in Redis)"
    return "FAIL: lost (not dead, nowhere in Redis)"


def _dead_outcome(item: Plant, member: Any) -> str:
    if item.outcome == "done":
        return "FAIL: dead, but its bad field should have been ignored and the job run"
    if not isinstance(member, dict):
        return "dead (as written)"
    message = str(member.get("error_message") or "")
    error = str(member.get("error_class") or "")
    wanted = {"refused": "kiq.PayloadError", "timeout": "JobTimeout"}.get(item.outcome)
    if item.outcome == "dead" and not error:
        return "dead (as written)"  # not a job: buried as it was, like non-JSON
    if wanted is not None and error != wanted:
        return f"FAIL: dead as {error or 'it was written'}, not {wanted}: {message[:80]}"
    if not message:
        return "FAIL: dead without an error_message"
    return f"dead: {error}: {message[:100]}"


@dataclass
class LogFindings:
    thread_deaths: list[str]  # "Exception in thread ..." lines: a thread died
    part_crashes: list[str]  # "kiq.<part> crashed" (restarted), "... died" (not)
    tracebacks: int
    wrongtype_lines: int  # lines about the WRONGTYPE queue (it must be skipped loudly)


# kiq.supervise's lines for a loop that crashed or a part that died; a processor's own
CRASH = re.compile(r"kiq\.[\w.-]+ (crashed|cannot go on|died)|processor \d+ died")


def scan_logs(folder: Path) -> LogFindings:
    deaths: list[str] = []
    crashes: list[str] = []
    tracebacks = wrongtype = 0
    for log in sorted(folder.glob("worker-*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if "Exception in thread" in line:
                deaths.append(f"{log.name}: {line.strip()[:160]}")
            if CRASH.search(line):
                crashes.append(f"{log.name}: {line.strip()[:200]}")
            if line.startswith("Traceback"):
                tracebacks += 1
            if "WRONGTYPE" in line or f"queue:{WRONGTYPE_QUEUE}" in line:
                wrongtype += 1
    return LogFindings(deaths, crashes, tracebacks, wrongtype)
