"""The store package's own contracts: its Lua scripts are files with a KEYS/ARGV header,
loaded once and run by EVALSHA, and a Redis that lost its script cache still runs them."""

from __future__ import annotations

import threading
from importlib import resources

import orjson
import redis

from kiq.client import Client
from kiq.config import Config
from kiq.store import open_store
from kiq.store.connection import lua

SCRIPTS = sorted(
    entry.name.removesuffix(".lua")
    for entry in (resources.files("kiq.store") / "lua").iterdir()
    if entry.name.endswith(".lua")
)


def test_every_script_is_a_file_with_a_keys_and_argv_header() -> None:
    """Each lua/*.lua opens with comments naming the script, its KEYS and its ARGV."""
    assert {"cron_fire", "fetch", "move_due", "requeue", "requeue_all"} <= set(SCRIPTS)
    for name in SCRIPTS:
        header = [line for line in lua(name).splitlines() if line.startswith("--")]
        assert header[0].startswith(f"-- {name}:"), name
        assert any("KEYS" in line for line in header), name
        assert any("ARGV" in line for line in header), name


def test_scripts_run_by_sha_and_reload_after_script_flush(config: Config, r: redis.Redis) -> None:
    """A fetch loads its script once (EVALSHA after); after SCRIPT FLUSH (a restarted
    or failed-over Redis) the next call gets NOSCRIPT and loads it again, transparently."""
    Client(config).push({"class": "Record", "args": [1]})
    assert config.store.fetch("me", ["default"], 1) != []
    sha = config.store._script("fetch").sha
    assert r.script_exists(sha) == [True]

    r.script_flush()
    Client(config).push({"class": "Record", "args": [2]})

    assert [raw for _, raw in config.store.fetch("me", ["default"], 1)] != []
    assert r.script_exists(sha) == [True]


def test_more_threads_than_pooled_connections_wait_for_one_instead_of_failing(
    redis_url: str, r: redis.Redis
) -> None:
    """A store whose pool holds 2 connections, called by 8 threads at once while every
    call is held up (CLIENT PAUSE): the extra threads wait for a connection to come back
    (redis-py's default pool raised "Too many connections" at the third)."""
    store = open_store(redis_url, pool_size=2)
    try:
        store.ping()  # connect before the pause
        barrier = threading.Barrier(8)
        errors: list[BaseException] = []

        def push(n: int) -> None:
            barrier.wait()
            try:
                store.push([("pool", orjson.dumps({"class": "Record", "args": [n]}))])
            except BaseException as exc:  # the assertion below reports it
                errors.append(exc)

        r.execute_command("CLIENT", "PAUSE", 400, "WRITE")
        threads = [threading.Thread(target=push, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert errors == []
        assert r.llen("queue:pool") == 8
    finally:
        store.close()
