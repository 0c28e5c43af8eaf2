"""A job class only one side knows, on a queue the other side serves (issue 3, docs/rails.md).

Neither side loses the job: Sidekiq 6.4 raises NameError and kiq raises UnknownJobError,
and both treat that as an ordinary failure, so the job lands in ``retry`` (and after
its retries, in ``dead``) with its payload intact. That is why each language's job
classes belong on queues only that language serves.
"""

from __future__ import annotations

import json

import pytest

import kiq
from tests.support.wait import wait_until

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]


def test_python_only_class_fails_in_sidekiq_with_name_error(config, r, ruby, start_sidekiq):
    """A kiq-only class fetched by Sidekiq is retried as a NameError, payload intact."""
    start_sidekiq("ruby")

    jid = kiq.Client(config).push({"class": "InteropEcho", "queue": "ruby", "args": [1, "x"]})

    wait_until(lambda: r.zcard("retry") == 1, timeout=20.0)
    (entry,) = ruby.api()["retry"]
    assert entry["jid"] == jid
    assert entry["klass"] == "InteropEcho"
    assert entry["args"] == [1, "x"]
    assert entry["error_class"] == "NameError"
    assert entry["queue"] == "ruby"


def test_ruby_only_class_fails_in_kiq_with_unknown_job_error(config, r, ruby, start_worker):
    """A Ruby-only class fetched by kiq is retried as UnknownJobError, payload intact."""
    start_worker("-q", "interop", "-c", "2")

    (jid,) = ruby.push({"op": "push", "class": "RubyEcho", "queue": "interop", "args": [1, "x"]})

    wait_until(lambda: r.zcard("retry") == 1, timeout=20.0)
    (member,) = r.zrange("retry", 0, -1)
    payload = json.loads(member)
    assert payload["jid"] == jid
    assert payload["class"] == "RubyEcho"
    assert payload["args"] == [1, "x"]
    assert payload["error_class"] == "UnknownJobError"
    assert payload["retry_count"] == 0
