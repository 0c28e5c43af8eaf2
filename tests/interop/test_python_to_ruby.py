"""Python -> Ruby: jobs kiq enqueues for Ruby classes run in Sidekiq 6.4 (issue 3, point 2).

``RubyEcho`` (ruby/worker_app.rb) records the arguments it got in ``interop:ruby:done``.
kiq reaches it three ways: ``Client().push`` with the class name as a string, and a kiq
Job whose ``name`` is the Ruby class name, through ``perform_async``, ``perform_in`` and
``perform_bulk``.
"""

from __future__ import annotations

import pytest

import kiq
from tests.interop.conftest import RUBY_DONE, TRICKY_ARGS, strict_json, wait_records

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]


class RubyEcho(kiq.Job, name="RubyEcho", queue="ruby"):
    """The Python handle of a Ruby job class: only enqueued from Python, run by Sidekiq."""


def test_client_push_by_class_name_runs_in_sidekiq(config, r, start_sidekiq):
    """kiq.Client().push of a Ruby class name runs in Sidekiq with exactly those arguments."""
    start_sidekiq("ruby")

    jid = kiq.Client(config).push({"class": "RubyEcho", "queue": "ruby", "args": TRICKY_ARGS})

    (record,) = wait_records(r, RUBY_DONE, 1)
    assert record["jid"] == jid
    assert strict_json(record["args"]) == strict_json(TRICKY_ARGS)


def test_job_with_ruby_wire_name_runs_in_sidekiq(config, r, start_sidekiq):
    """perform_async of a kiq Job named like a Ruby class runs that class in Sidekiq."""
    start_sidekiq("ruby")

    jid = RubyEcho.perform_async(*TRICKY_ARGS)

    (record,) = wait_records(r, RUBY_DONE, 1)
    assert record["jid"] == jid
    assert strict_json(record["args"]) == strict_json(TRICKY_ARGS)


def test_perform_in_is_promoted_and_run_by_sidekiq(config, r, start_sidekiq):
    """A job kiq schedules is moved to its queue by Sidekiq's poller (no kiq process runs)."""
    jid = RubyEcho.perform_in(0.5, *TRICKY_ARGS)
    assert r.zcard("schedule") == 1

    start_sidekiq("ruby")

    (record,) = wait_records(r, RUBY_DONE, 1)
    assert record["jid"] == jid
    assert strict_json(record["args"]) == strict_json(TRICKY_ARGS)


def test_perform_bulk_runs_each_job_in_sidekiq(config, r, start_sidekiq):
    """perform_bulk jobs each run once in Sidekiq with their own arguments."""
    start_sidekiq("ruby")
    bulk = [TRICKY_ARGS, [1], ["two", {"three": [3.0]}], []]

    jids = RubyEcho.perform_bulk(bulk)

    records = wait_records(r, RUBY_DONE, len(bulk))
    by_jid = {record["jid"]: strict_json(record["args"]) for record in records}
    assert by_jid == {jid: strict_json(args) for jid, args in zip(jids, bulk, strict=True)}
