"""Deploy marks (issue 8 §7): ``kiq.api.deploy_mark`` writes Sidekiq 7's keys
(shared/sidekiq-wire.md §1.4) and the Web UI's metrics graphs draw them."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime, timedelta

from kiq import api
from kiq.metrics import Metrics
from kiq.web import create_app

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Starlette 1.x warns that it prefers httpx2 (see tests/web)
    from starlette.testclient import TestClient

AT = datetime(2024, 3, 1, 8, 5, 42, tzinfo=UTC)


def test_a_mark_is_sidekiqs_hash_field(config, r):
    """HASH YYYYMMDD-marks, field = the minute in ISO-8601 UTC, value = the label, kept
    90 days; the lock deploylock-<label> lives 60 s."""
    assert api.deploy_mark("v1.2", at=AT, config=config) is True

    assert r.hgetall("20240301-marks") == {"2024-03-01T08:05:00Z": "v1.2"}
    assert 89 * 86400 < r.ttl("20240301-marks") <= 90 * 86400
    assert r.get("deploylock-v1.2") == "2024-03-01T08:05:00Z"
    assert 0 < r.ttl("deploylock-v1.2") <= 60


def test_the_same_label_is_marked_once_a_minute(config, r):
    """Every process of a rollout may call deploy_mark: one mark results."""
    assert api.deploy_mark("v1.2", at=AT, config=config) is True
    assert api.deploy_mark("v1.2", at=AT + timedelta(seconds=30), config=config) is False

    assert r.hlen("20240301-marks") == 1


def test_marks_are_read_back_in_a_window(config):
    """deploy_marks returns the marks between two times, oldest first, across days."""
    api.deploy_mark("a", at=AT - timedelta(days=1), config=config)
    api.deploy_mark("b", at=AT, config=config)
    api.deploy_mark("c", at=AT + timedelta(hours=2), config=config)

    marks = api.deploy_marks(AT - timedelta(days=2), AT + timedelta(hours=1), config)

    assert [(m.label, m.at) for m in marks] == [
        ("a", (AT - timedelta(days=1)).replace(second=0)),
        ("b", AT.replace(second=0)),
    ]


def test_the_metrics_graphs_show_the_mark(config):
    """The Metrics page and a class's page draw a dashed line titled with the label."""
    recorder = Metrics()
    recorder.record("MarkedJob", 12.0, "default")
    recorder.flush(config)
    api.deploy_mark("v9.9", config=config)
    client = TestClient(create_app(config))

    for path in ("/metrics", "/metrics/MarkedJob"):
        page = client.get(path).text
        assert '<line class="mark"' in page
        assert "<title>Deploy: v9.9</title>" in page
