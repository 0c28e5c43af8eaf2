"""Ruby -> Python: jobs pushed by Ruby Sidekiq 6.4's client run in a kiq worker (issue 3, point 1).

push.rb enqueues through ``Sidekiq::Client.push``, ``perform_async``, ``perform_in`` and
``push_bulk``; the class name is ``InteropEcho``, which a kiq Job registered with
``name="InteropEcho"`` (tests/support/jobs.py), and which records the arguments it got.
"""

from __future__ import annotations

import pytest

from tests.interop.conftest import PY_DONE, TRICKY_ARGS, strict_json, wait_records

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]


@pytest.mark.parametrize("op", ["push", "perform_async", "perform_in"])
def test_ruby_push_runs_in_kiq_with_exact_arguments(op, config, r, ruby, start_worker):
    """A job Ruby pushes for a kiq class runs in kiq with exactly the arguments Ruby sent."""
    start_worker("-q", "interop", "-c", "2")
    spec = {"op": op, "class": "InteropEcho", "queue": "interop", "args": TRICKY_ARGS}
    if op == "perform_in":
        spec["in"] = 0.5
    (jid,) = ruby.push(spec)

    (record,) = wait_records(r, PY_DONE, 1)

    assert record["jid"] == jid
    assert record["class"] == "InteropEcho"
    assert record["queue"] == "interop"
    assert strict_json(record["args"]) == strict_json(TRICKY_ARGS)


def test_ruby_push_bulk_runs_each_job_in_kiq(config, r, ruby, start_worker):
    """Sidekiq::Client.push_bulk jobs each run once in kiq with their own arguments."""
    start_worker("-q", "interop", "-c", "2")
    bulk = [TRICKY_ARGS, [1], ["two", {"three": [3.0]}], []]
    (jids,) = ruby.push(
        {"op": "push_bulk", "class": "InteropEcho", "queue": "interop", "args": bulk}
    )

    records = wait_records(r, PY_DONE, len(bulk))

    by_jid = {record["jid"]: strict_json(record["args"]) for record in records}
    assert by_jid == {jid: strict_json(args) for jid, args in zip(jids, bulk, strict=True)}
