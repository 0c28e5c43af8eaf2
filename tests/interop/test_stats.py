"""Stats add up across kiq and Sidekiq 6.4 (issue 3, point 5).

Both sides INCRBY ``stat:processed`` / ``stat:failed`` (and the daily keys) at each
heartbeat, and both compute queue sizes and latency from the same lists, so Ruby's
``Sidekiq::Stats`` and ``kiq.api`` must agree.
"""

from __future__ import annotations

import pytest

import kiq
from kiq.api import Queue, Stats
from tests.interop.conftest import StrRedis
from tests.support.jobs import Boom, InteropEcho
from tests.support.wait import wait_until

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]


def wait_counts(r: StrRedis, processed: int, failed: int) -> None:
    wait_until(
        lambda: (
            (int(r.get("stat:processed") or 0), int(r.get("stat:failed") or 0))
            == (processed, failed)
        ),
        timeout=20.0,
    )


def test_processed_and_failed_count_both_sides(config, r, ruby, start_worker, start_sidekiq):
    """Sidekiq::Stats and kiq.api.Stats count jobs run (and failed) by kiq and by Sidekiq."""
    start_worker("-q", "interop", "-q", "default", "-c", "2")
    start_sidekiq("ruby")
    for n in range(3):
        InteropEcho.perform_async(n)
    Boom.perform_async(1)
    ruby.push(
        {"op": "push_bulk", "class": "RubyEcho", "queue": "ruby", "args": [[1], [2]]},
        {"op": "push", "class": "RubyFail", "queue": "ruby", "args": [1]},
        {"op": "push", "class": "RubyFail", "queue": "ruby", "args": [2]},
    )

    wait_counts(r, processed=3 + 1 + 2 + 2, failed=1 + 2)

    ruby_stats = ruby.api()["stats"]
    stats = Stats(config)
    assert (ruby_stats["processed"], ruby_stats["failed"]) == (8, 3)
    assert (stats.processed, stats.failed) == (8, 3)
    assert ruby_stats["retry_size"] == stats.retry_size == 3


def test_queue_sizes_agree(config, r, ruby):
    """Queue names and sizes (and the enqueued total) agree between kiq.api and Sidekiq."""
    ruby.push(
        {"op": "push_bulk", "class": "RubyEcho", "queue": "ruby", "args": [[1], [2], [3]]},
        {"op": "push", "class": "InteropEcho", "queue": "default", "args": []},
    )
    kiq.Client(config).push_bulk({"class": "InteropEcho", "queue": "interop", "args": [[1], [2]]})
    InteropEcho.set(queue="default").perform_async()

    snapshot = ruby.api()

    kiq_sizes = {q.name: q.size() for q in Queue.all(config)}
    assert kiq_sizes == {"default": 2, "interop": 2, "ruby": 3}
    assert {q["name"]: q["size"] for q in snapshot["queues"]} == kiq_sizes
    assert snapshot["stats"]["queues"] == Stats(config).queues() == kiq_sizes
    assert snapshot["stats"]["enqueued"] == Stats(config).enqueued == 7


def test_queue_latency_agrees(config, r, ruby):
    """Each queue's latency (age of its oldest job) agrees between kiq.api and Sidekiq.

    Ruby measures between two kiq readings, so its figure must lie between them.
    """
    ruby.push({"op": "push", "class": "RubyEcho", "queue": "ruby", "args": []})
    InteropEcho.set(queue="default").perform_async()
    InteropEcho.set(queue="interop").perform_async()

    before = {q.name: q.latency() for q in Queue.all(config)}
    default_before = Stats(config).default_queue_latency
    snapshot = ruby.api()
    after = {q.name: q.latency() for q in Queue.all(config)}
    default_after = Stats(config).default_queue_latency

    slack = 0.002  # Ruby and Python round the clock differently
    for queue in snapshot["queues"]:
        name = queue["name"]
        assert before[name] - slack <= queue["latency"] <= after[name] + slack, name
    ruby_default = snapshot["stats"]["default_queue_latency"]
    assert default_before - slack <= ruby_default <= default_after + slack
    assert all(value > 0 for value in before.values())
