"""Batches and workflows in kiq.testing's fake and inline modes (issue 17 point 5):
deterministic, no Redis, callbacks run by ``drain``."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

import kiq
from kiq.errors import BatchError

seen: list[Any] = []


class Row(kiq.Job, name="testing_batches.Row"):
    def perform(self, n: int) -> int:
        if n < 0:
            raise ValueError("negative row")
        seen.append(("row", n))
        return n * 10


class Summary(kiq.Job, name="testing_batches.Summary"):
    def perform(self, bid: str, options: dict[str, Any]) -> None:
        status = kiq.BatchStatus(bid)
        seen.append((options["event"], status.total, status.pending, status.failures))


class Sum(kiq.Job, name="testing_batches.Sum"):
    def perform(self, *values: Any) -> None:
        seen.append(("sum", values))


@pytest.fixture(autouse=True)
def fresh() -> None:
    seen.clear()


def callbacks() -> dict[str, Any]:
    return {f"on_{e}": (Summary, {"event": e}) for e in ("success", "complete", "death")}


def test_fake_mode_counts_members_and_drain_runs_the_callbacks(kiq_fake: ModuleType) -> None:
    batch = kiq.Batch(description="import", **callbacks())
    with batch.jobs():
        Row.perform_bulk([[1], [2], [3]])
    assert [job["bid"] for job in Row.jobs] == [batch.bid] * 3
    status = kiq.BatchStatus(batch.bid)
    assert (status.total, status.pending) == (3, 3)
    assert Summary.jobs == []
    assert kiq.Job.drain() == 5  # three rows, then complete and success
    assert seen[-2:] == [("complete", 3, 0, 0), ("success", 3, 0, 0)]
    assert kiq.BatchStatus(batch.bid).success


def test_fake_mode_a_raising_member_is_dead(kiq_fake: ModuleType) -> None:
    batch = kiq.Batch(**callbacks())
    with batch.jobs():
        Row.perform_async(-1)
        Row.perform_async(1)
    with pytest.raises(ValueError, match="negative row"):
        Row.drain()
    Row.drain()
    kiq.Job.drain()
    events = [entry[0] for entry in seen if entry[0] != "row"]
    assert events == ["death", "complete"]
    assert kiq.BatchStatus(batch.bid).dead == 1


def test_inline_mode_fires_once_the_block_closes(kiq_inline: ModuleType) -> None:
    batch = kiq.Batch(**callbacks())
    with batch.jobs():
        Row.perform_async(1)
        assert seen == [("row", 1)]  # ran at once, but no callback inside the block
    assert seen[1:] == [("complete", 1, 0, 0), ("success", 1, 0, 0)]


def test_fake_mode_pushing_into_an_unknown_batch_is_refused(kiq_fake: ModuleType) -> None:
    with pytest.raises(BatchError, match="does not exist"):
        kiq.Client().push({"class": Row, "args": [1], "bid": "nope"})


def test_workflows_run_in_fake_mode(kiq_fake: ModuleType) -> None:
    wid = kiq.chord(kiq.group(Row.s(i) for i in range(3)), Sum.s(), pass_result=True).start()
    kiq.Job.drain()
    assert seen[-1] == ("sum", ([0, 10, 20],))
    assert kiq.WorkflowStatus(wid).state == "succeeded"
    kiq.testing.clear_all()
    with pytest.raises(kiq.KiqError, match="does not exist"):
        kiq.WorkflowStatus(wid)


class Cascade(kiq.Job, name="testing_batches.Cascade"):
    def perform(self) -> None:
        Row.perform_async(5)  # not in the batch: only self.batch.jobs() adds to it


def test_inline_a_members_own_pushes_do_not_join_the_batch(kiq_inline: ModuleType) -> None:
    batch = kiq.Batch()
    with batch.jobs():
        Cascade.perform_async()
    assert kiq.BatchStatus(batch.bid).total == 1
    assert ("row", 5) in seen
