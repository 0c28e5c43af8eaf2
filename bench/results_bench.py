"""What keeping a result costs (issue 17 point 3: benchmark, not a timed test).

On a private redis-server, three measurements:

  store     per job, in this process, what the worker adds for a job with
            ``result_ttl``: ``results.mark_running`` (one SET) then
            ``results.store_success`` (one EVALSHA of result_store.lua: SET EX, HINCRBY,
            PUBLISH), against nothing for a plain job: µs and round trips per job.
  drain     N jobs through one real ``kiq worker`` process (-c 10), plain vs with
            ``result_ttl``: jobs/s and Redis commands per job (INFO commandstats,
            Lua's inner commands included).
  waiters   W concurrent ``get()`` waiters (half threads, half coroutines on one event
            loop) on W jobs pushed before a worker starts: Redis commands the waiting
            cost (SUBSCRIBE, UNSUBSCRIBE, MGET; GETs stay 0), commands per wait, and the
            seconds from the worker's start until every waiter had its value.

Usage::

    PYTHONPATH=src:tests/support python bench/results_bench.py [N] [W]   # 20,000 10,000
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from common import REPO_DIR, RedisServer, command_calls, wait_for, worker_process

sys.path.insert(0, str(REPO_DIR / "tests" / "support"))

from result_jobs import ResultAdd, ResultNone

import kiq
from kiq import results
from kiq.config import Config

PORT = 6398


def store_cost(config: Config, n: int) -> dict[str, float]:
    """µs and socket writes per job for what the worker writes around a result job."""
    payload = {"class": "ResultAdd", "jid": "", "result_ttl": 60}
    writes = 0
    original = socket.socket.sendall

    def sendall(sock: socket.socket, data: Any, *rest: Any) -> Any:
        nonlocal writes
        writes += 1
        return original(sock, data, *rest)

    for i in range(200):  # warm: script loaded, lane connected
        payload["jid"] = f"warm{i}"
        results.mark_running(config, payload)
        results.store_success(config, payload, {"sum": i})
    started = time.perf_counter()
    for i in range(n):
        payload["jid"] = f"j{i}"
        results.mark_running(config, payload)
        results.store_success(config, payload, {"sum": i})
    elapsed = time.perf_counter() - started
    socket.socket.sendall = sendall  # type: ignore[method-assign]
    try:
        for i in range(1000):
            payload["jid"] = f"c{i}"
            results.mark_running(config, payload)
            results.store_success(config, payload, {"sum": i})
    finally:
        socket.socket.sendall = original  # type: ignore[method-assign]
    return {"us_per_job": elapsed / n * 1e6, "round_trips_per_job": writes / 1000}


def drain(server: RedisServer, config: Config, n: int, job: type[kiq.Job]) -> dict[str, float]:
    """n jobs of ``job`` through one worker process already running; jobs/s, commands/job."""
    config.store.flushdb()
    client = server.client()
    argv, env = _worker(server)
    with worker_process(argv, env=env, log_path=Path("/tmp/results_bench_worker.log")):
        wait_for(lambda: client.scard("processes") > 0, timeout=60, what="the worker's beat")
        before = command_calls(client)
        started = time.perf_counter()
        job.perform_bulk([[i, i] if job is ResultAdd else [i] for i in range(n)])
        wait_for(lambda: client.llen("queue:default") == 0 and _idle(client), timeout=600)
        elapsed = time.perf_counter() - started
        calls = command_calls(client) - before
    return {"jobs_per_s": n / elapsed, "commands_per_job": sum(calls.values()) / n}


def push_cost(n: int) -> float:
    """µs per plain ``perform_async`` (one round trip), for scale on this machine."""
    started = time.perf_counter()
    for i in range(n):
        ResultNone.perform_async(i)
    return (time.perf_counter() - started) / n * 1e6


def _worker(server: RedisServer) -> tuple[list[str], dict[str, str]]:
    path = os.pathsep.join([str(REPO_DIR / "src"), str(REPO_DIR / "tests" / "support")])
    argv = [sys.executable, "-m", "kiq.cli", "worker", "-r", "result_jobs", "-c", "10"]
    return [*argv, "--redis-url", server.url], dict(os.environ, PYTHONPATH=path)


def _idle(client: Any) -> bool:
    keys = client.keys("kiq|inprogress|*")
    return all(client.llen(key) == 0 for key in keys)


def waiters(server: RedisServer, config: Config, count: int) -> dict[str, Any]:
    """``count`` concurrent waiters; the Redis commands and time their wait cost."""
    config.store.flushdb()
    jids = ResultAdd.set(result_ttl=120).perform_bulk([[i, i] for i in range(count)])
    handles = [kiq.Result(jid, config=config) for jid in jids if jid is not None]
    half = count // 2
    done: list[Any] = []
    lock = threading.Lock()

    def one(handle: kiq.Result) -> None:
        value = handle.get(timeout=600)
        with lock:
            done.append(value)

    async def many() -> None:
        values = await asyncio.gather(*(h.aget(timeout=600) for h in handles[half:]))
        with lock:
            done.extend(values)

    client = server.client()
    before = command_calls(client)
    threads = [threading.Thread(target=one, args=(h,), daemon=True) for h in handles[:half]]
    threads.append(threading.Thread(target=lambda: asyncio.run(many()), daemon=True))
    for thread in threads:
        thread.start()
    listener = config.store.result_listener
    wait_for(lambda: listener.waiting() == count, timeout=120)
    argv, env = _worker(server)
    started = time.perf_counter()
    with worker_process(argv, env=env, log_path=Path("/tmp/results_bench_worker.log")):
        for thread in threads:
            thread.join(timeout=600)
        elapsed = time.perf_counter() - started
    calls = command_calls(client) - before
    spent = {name: calls.get(name, 0) for name in ("subscribe", "unsubscribe", "mget", "get")}
    return {
        "waiters": count,
        "delivered": len(done),
        "commands": spent,
        "commands_per_wait": sum(spent.values()) / count,
        "seconds_until_all_delivered": elapsed,
    }


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    w = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    with RedisServer.private(port=PORT) as server:
        config = kiq.configure(redis_url=server.url)
        out: dict[str, Any] = {"store": store_cost(config, n)}
        out["store"]["plain_push_us_for_scale"] = push_cost(n)
        out["drain_plain"] = drain(server, config, n, ResultNone)
        out["drain_result"] = drain(server, config, n, ResultAdd)
        out["waiters"] = waiters(server, config, w)
        config.close()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
