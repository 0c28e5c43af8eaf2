"""Queue limits (issue 16 point 3, kiq.queue_limits): ``:limits:`` in the config file
caps a queue's jobs at once and its fetch rate across every process, in the fetch
itself (fetch.lua's permits step: nothing fetched beyond the limit, so nothing to
reschedule), while the other queues keep flowing; a killed process's permits return.

Real Redis throughout; the claims across processes use real ``kiq worker``s.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

import kiq
from kiq.config import Config
from kiq.errors import ConfigError
from kiq.queue_limits import QueueLimit
from tests.support.wait import wait_until
from tests.test_limits import max_overlap

LIMITS = ("-r", "limit_jobs")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kiq.yml"
    path.write_text(text)
    return path


def test_the_file_takes_a_count_or_concurrency_and_rate(tmp_path, redis_url):
    """``:limits: {stripe: 5}`` and ``{mail: {concurrency: 2, rate: 100/minute}}``."""
    text = ":limits:\n  stripe: 5\n  :mail:\n    concurrency: 2\n    rate: 100/minute\n"
    config = Config.load(write(tmp_path, text), env={}, redis_url=redis_url)

    assert config.limits == {
        "stripe": QueueLimit(concurrency=5),
        "mail": QueueLimit(concurrency=2, rate=100, per=60.0),
    }


def test_a_section_named_after_a_listed_queue_is_its_limit(tmp_path, redis_url):
    """``stripe: {concurrency: 5, rate: "100/minute"}`` at the top level, for a queue in
    ``:queues:``; a mapping named after no queue (an environment section) is not."""
    text = ':queues:\n  - stripe\n  - default\nstripe:\n  concurrency: 5\n  rate: "100/minute"\n'
    text += "staging:\n  concurrency: 3\n"
    config = Config.load(write(tmp_path, text), env={}, redis_url=redis_url)

    assert config.limits == {"stripe": QueueLimit(concurrency=5, rate=100, per=60.0)}


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"stripe": 0}, "whole number >= 1"),
        ({"stripe": "five"}, "a number"),
        ({"stripe": {"rate": "100 per minute"}}, "COUNT/PERIOD"),
        ({"stripe": {"concurency": 5}}, "concurrency and/or rate"),
        (["stripe"], "mapping of queue names"),
    ],
)
def test_bad_limits_are_refused_at_start_up(limits, message):
    """Each bad form is a ConfigError saying what is allowed."""
    with pytest.raises(ConfigError, match=message):
        Config(limits=limits)


def jobs(queue: str, n: int) -> list[tuple[str, bytes]]:
    return [(queue, f"{queue}-{i}".encode()) for i in range(n)]


def test_a_fetch_takes_no_more_than_the_permits_across_processes(config):
    """Concurrency 3: process A takes 3 stripe jobs (and every default job), B none of
    stripe; when A acknowledges one, B may take one."""
    store, limits = config.store, {"stripe": (3, 0, 1.0)}
    store.push(jobs("stripe", 10) + jobs("default", 4))

    a = store.fetch("A", ["stripe", "default"], 10, limits=limits)
    b = store.fetch("B", ["stripe", "default"], 10, limits=limits)
    store.fetch("A", ["stripe"], 0, acks=[a[0]], limits=limits)
    b_after = store.fetch("B", ["stripe", "default"], 10, limits=limits)

    assert [q for q, _ in a] == ["stripe"] * 3 + ["default"] * 4
    assert b == []
    assert [q for q, _ in b_after] == ["stripe"]


def test_a_process_whose_lease_ended_no_longer_counts(config):
    """A's lease (0.2 s) ends without renewal: its in-progress jobs stop counting."""
    store, limits = config.store, {"stripe": (2, 0, 1.0)}
    store.push(jobs("stripe", 5))
    assert len(store.fetch("A", ["stripe"], 5, limits=limits, lease=0.2)) == 2

    assert store.fetch("B", ["stripe"], 5, limits=limits) == []
    wait_until(lambda: len(store.fetch("B", ["stripe"], 5, limits=limits)) == 2, timeout=3)


def test_a_rate_limited_queue_gives_a_burst_then_its_rate(config):
    """rate 5 per second: 5 at once, then about one more per 0.2 s."""
    store, limits = config.store, {"mail": (0, 5, 1.0)}
    store.push(jobs("mail", 20))
    first = store.fetch("A", ["mail"], 10, limits=limits)
    at_once = store.fetch("B", ["mail"], 10, limits=limits)
    started = time.monotonic()
    wait_until(lambda: store.fetch("B", ["mail"], 10, limits=limits), timeout=2)

    assert (len(first), at_once) == (5, [])
    assert time.monotonic() - started > 0.1


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_three_processes_hold_a_queue_limit_of_2_while_the_other_queue_flows(
    config, r, start_worker
):
    """3 workers x 5 slots, ``stripe: 2``: never more than 2 stripe jobs at once (none
    rescheduled), while the default queue's jobs run on the other slots meanwhile."""
    text = ":queues:\n  - stripe\n  - default\n:limits:\n  stripe: 2\n"
    for _ in range(3):
        start_worker(*LIMITS, "-c", "5", config_text=text)
    wait_until(lambda: r.scard("processes") == 3, timeout=30)
    client = kiq.Client(config)
    client.push_bulk({"class": "QueueSpan", "args": [[0.1]] * 30, "queue": "stripe"})
    client.push_bulk({"class": "QueueSpan", "args": [[0.05]] * 60, "queue": "default"})

    wait_until(lambda: r.llen("test:qspans:stripe") == 30, timeout=60)
    wait_until(lambda: r.llen("test:qspans:default") == 60, timeout=30)

    spans = {
        q: [tuple(map(float, s.split()[:2])) for s in r.lrange(f"test:qspans:{q}", 0, -1)]
        for q in ("stripe", "default")
    }
    assert max_overlap(spans["stripe"]) == 2
    assert max_overlap(spans["default"]) > 2
    assert max(e for _, e in spans["default"]) < max(e for _, e in spans["stripe"])
    assert (r.zcard("schedule"), r.zcard("retry")) == (0, 0)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_sigkilled_process_gives_its_queue_permits_back(config, r, start_worker):
    """``stripe: 1``: the holder is SIGKILLed mid-job; another process runs stripe jobs
    again (the recovered one and the next, in either order) once the dead one's lease or heartbeat
    (process_ttl 2 s) has ended."""
    text = ":queues:\n  - stripe\n:limits:\n  stripe: 1\n:process_ttl: 2\n:prefetch: 0\n"
    first = start_worker(*LIMITS, "-c", "2", config_text=text)
    client = kiq.Client(config)
    client.push({"class": "QueueHold", "args": [], "queue": "stripe"})
    wait_until(lambda: r.llen("test:qhold") == 1, timeout=30)
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    killed = time.monotonic()
    client.push({"class": "QueueSpan", "args": [0.01], "queue": "stripe"})
    start_worker(*LIMITS, "-c", "2", config_text=text)

    # Both come back: the recovered job (once the dead heartbeat is gone) and the next
    # one (once the dead lease is gone). Which is first is a race of two 2 s expiries.
    wait_until(lambda: r.llen("test:qspans:stripe") == 1, timeout=30)
    wait_until(lambda: r.llen("test:qhold") == 2, timeout=30)
    assert time.monotonic() - killed < 15
