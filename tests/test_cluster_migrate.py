"""``kiq cluster-migrate``: a single Redis's queues, schedule, retry and dead sets moved
into the cluster layout, none lost or doubled when a run is cut short and run again."""

from __future__ import annotations

import time
from collections.abc import Iterator

import orjson
import pytest

from kiq import api
from kiq.cli import main
from kiq.config import Config
from kiq.errors import ConfigError
from kiq.migrate import migrate
from kiq.store import ClusterStore


@pytest.fixture
def target(cluster_url: str) -> Iterator[Config]:
    cfg = Config(redis_url=cluster_url, partitions={"hot": 4})
    yield cfg
    cfg.close()


def job(queue: str, i: int) -> bytes:
    return orjson.dumps({"class": "X", "queue": queue, "jid": f"{queue}{i:020d}", "args": [i]})


def fill(source: Config) -> None:
    store = source.store
    store.push([("default", job("default", i)) for i in range(30)])
    store.push([("hot", job("hot", i)) for i in range(20)])
    store.schedule([(2e9 + i, job("low", i)) for i in range(5)])
    for i in range(5):
        store.add_retry(2e9 + i, job("hot", 100 + i))
    store.bury([job("default", 200 + i) for i in range(3)], time.time(), 100, 1e9)


def test_every_job_moves_in_order_and_a_rerun_doubles_none(config: Config, target: Config) -> None:
    fill(config)
    dst = target.store
    assert isinstance(dst, ClusterStore)
    # A run killed after copying the 3 oldest of default, before deleting them:
    for raw in reversed(config.store.queue_range("default", -3, -1)):  # oldest first
        assert dst.migrate_in(raw, "queue", None, "default")
    report = migrate(config, target)
    assert report.moved == {
        "queue default": 30,
        "queue hot": 20,
        "schedule": 5,
        "retry": 5,
        "dead": 3,
    }
    assert report.already == 3
    assert dst.queue_sizes(["default", "hot"]) == [30, 20]  # no doubles
    assert config.store.queue_sizes(["default", "hot"]) == [0, 0]
    assert [e.score for e in api.ScheduledSet(target).page(0, 10)] == [2e9 + i for i in range(5)]
    assert api.RetrySet(target).size() == 5
    assert api.DeadSet(target).size() == 3
    assert api.ScheduledSet(config).size() + api.RetrySet(config).size() == 0
    oldest_first = [orjson.loads(r)["args"][0] for r in reversed(dst.queue_range("default", 0, -1))]
    assert oldest_first == list(range(30))  # the queue's order is kept
    again = migrate(config, target)
    assert again.moved == {}


def test_it_refuses_while_processes_beat_on_the_source(config: Config, target: Config) -> None:
    fill(config)
    config.store.beat("old:1:abc", {"info": "{}", "beat": time.time()}, {}, 60)
    with pytest.raises(ConfigError, match="live"):
        migrate(config, target)
    assert migrate(config, target, force=True).moved["queue default"] == 30


def test_the_command_reports_what_moved(
    config: Config, target: Config, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(config)
    config.store.register_fetcher("gone:1:x", b'["default"]')
    config.store.fetch("gone:1:x", ["default"], 2)
    assert main(["cluster-migrate", "--from", redis_url, "--to", target.redis_url or ""]) == 0
    out = capsys.readouterr().out
    assert "moved 61 job(s)" in out
    assert "not moved: 2 in-progress job(s) of gone:1:x" in out
