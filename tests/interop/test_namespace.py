"""Sharing Redis with a namespaced Sidekiq 6.x app (issue 3, point 8).

Sidekiq 6.x apps configured with ``namespace: "myapp"`` go through the redis-namespace
gem, which prefixes every key: ``myapp:queue:default``, ``myapp:processes``,
``myapp:<identity>``... kiq's ``Config.key_prefix = "myapp:"`` writes the same layout.
Here Ruby runs with the real gem (Debian's ``ruby-redis-namespace``) both ways.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

import kiq
from kiq.config import Config
from tests.interop.conftest import (
    PY_DONE,
    RUBY_DONE,
    TRICKY_ARGS,
    Ruby,
    kiq_identity,
    strict_json,
    wait_records,
)
from tests.support.wait import wait_until

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

NAMESPACE = "myapp"
PREFIX = f"{NAMESPACE}:"
PREFIXED_WORKER = f':key_prefix: "{PREFIX}"\n'
# Keys the test jobs themselves write (not kiq's or Sidekiq's).
RECORDER_KEYS = (PY_DONE, "test:")


@pytest.fixture
def prefixed(config: Config) -> Iterator[Config]:
    """A kiq Config on the test database with the namespace's key prefix."""
    cfg = Config(redis_url=config.redis_url, key_prefix=PREFIX)
    yield cfg
    cfg.close()


@pytest.fixture
def ruby_ns(ruby: Ruby) -> Ruby:
    """push.rb / api.rb with ``namespace: "myapp"`` (skips without the redis-namespace gem)."""
    return ruby.namespaced(NAMESPACE)


def test_namespaced_ruby_push_runs_in_prefixed_kiq(config, r, ruby_ns, start_worker):
    """A job a namespaced Sidekiq client pushes runs in a kiq worker with key_prefix."""
    start_worker("-q", "interop", "-c", "2", config_text=PREFIXED_WORKER)

    (jid,) = ruby_ns.push(
        {"op": "push", "class": "InteropEcho", "queue": "interop", "args": TRICKY_ARGS}
    )

    (record,) = wait_records(r, PY_DONE, 1)
    assert record["jid"] == jid
    assert strict_json(record["args"]) == strict_json(TRICKY_ARGS)


def test_prefixed_kiq_push_runs_in_namespaced_sidekiq(config, prefixed, r, start_sidekiq):
    """A job kiq pushes with key_prefix runs in a namespaced Sidekiq, scheduled ones too."""
    start_sidekiq("ruby", namespace=NAMESPACE)
    client = kiq.Client(prefixed)

    now_jid = client.push({"class": "RubyEcho", "queue": "ruby", "args": TRICKY_ARGS})
    later_jid = client.push(
        {"class": "RubyEcho", "queue": "ruby", "args": [2], "at": time.time() + 0.5}
    )

    records = wait_records(r, PREFIX + RUBY_DONE, 2)  # RubyEcho's own write is namespaced too
    assert {record["jid"] for record in records} == {now_jid, later_jid}


def test_namespaced_ruby_api_sees_prefixed_kiq(config, prefixed, r, ruby_ns, start_worker):
    """Sidekiq's namespaced API sees a prefixed kiq process, its retries and its stats."""
    worker = start_worker("-q", "default", "-c", "2", config_text=PREFIXED_WORKER)
    identity = kiq_identity(r, worker.pid, PREFIX)
    kiq.Client(prefixed).push({"class": "Boom", "queue": "default", "args": [1], "retry": 3})
    wait_until(lambda: r.zcard(PREFIX + "retry") == 1, timeout=20.0)
    wait_until(lambda: r.get(PREFIX + "stat:failed") == "1", timeout=20.0)

    snapshot = ruby_ns.api()

    assert [p["identity"] for p in snapshot["processes"]] == [identity]
    assert [e["klass"] for e in snapshot["retry"]] == ["Boom"]
    assert snapshot["stats"]["processed"] == 1
    assert snapshot["stats"]["failed"] == 1


def test_prefixed_kiq_keys_match_redis_namespace_layout(config, prefixed, r, start_worker):
    """Every key a prefixed kiq process and client write starts with the namespace."""
    worker = start_worker("-q", "default", "-q", "interop", "-c", "2", config_text=PREFIXED_WORKER)
    kiq_identity(r, worker.pid, PREFIX)
    client = kiq.Client(prefixed)
    client.push({"class": "InteropEcho", "queue": "interop", "args": [1]})
    client.push({"class": "Boom", "queue": "default", "args": [1], "retry": 3})
    client.push({"class": "InteropEcho", "queue": "unserved", "args": [2]})
    client.push({"class": "InteropEcho", "queue": "interop", "args": [3], "at": time.time() + 600})
    wait_until(lambda: r.zcard(PREFIX + "retry") == 1 and r.llen(PY_DONE) == 1, timeout=20.0)
    wait_until(lambda: r.get(PREFIX + "stat:processed") == "2", timeout=20.0)

    keys = [key for key in r.keys("*") if not key.startswith(RECORDER_KEYS)]

    assert keys, "kiq wrote nothing"
    assert [key for key in keys if not key.startswith(PREFIX)] == []
    assert {
        PREFIX + "queues",
        PREFIX + "queue:unserved",
        PREFIX + "schedule",
        PREFIX + "retry",
        PREFIX + "processes",
        PREFIX + "stat:processed",
    } <= set(keys)
