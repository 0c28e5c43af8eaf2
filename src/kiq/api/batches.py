"""Batches and workflows as the admin API sees them (issue 17 point 4).

``BatchSet`` lists the batches of ``batches`` (Sidekiq Pro's ``Sidekiq::BatchSet``),
newest first, one page per ZRANGE; each is a ``kiq.BatchStatus``. ``WorkflowSet`` does
the same for ``kiq|workflows``, each a ``kiq.WorkflowStatus``. ``batch_counts`` is what
the Prometheus exporter reports: how many of the newest batches and workflows are in
each state (bounded: ``COUNT_LIMIT`` of each are read).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Final

from kiq import payload as wire
from kiq.api.base import PAGE_SIZE, config_or_default
from kiq.batch_status import BatchStatus
from kiq.config import Config
from kiq.errors import KiqError
from kiq.workflow import WorkflowStatus

COUNT_LIMIT: Final = 1000  # batches (and workflows) read for the Prometheus gauges


def batch_state(status: BatchStatus) -> str:
    """One word for a batch: succeeded, dead, complete (ran once, some failing), running,
    invalidated."""
    if status.invalidated:
        return "invalidated"
    if status.success:
        return "succeeded"
    if status.death:
        return "dead"
    if status.complete:
        return "complete"
    return "running"


class BatchSet:
    """Every batch not yet expired, newest first (``batches``)."""

    def __init__(self, config: Config | None = None) -> None:
        self.config = config_or_default(config)

    @property
    def size(self) -> int:
        return self.config.store.batch_count()

    def page(self, start: int, count: int = PAGE_SIZE) -> list[BatchStatus]:
        """``count`` batches from rank ``start`` (0 = newest); expired entries are dropped."""
        expired = wire.now() - self.config.batch_ttl
        rows = self.config.store.batch_index(start, start + count - 1, expired)
        data = self.config.store.batch_read_many([bid for bid, _ in rows])
        found = [
            BatchStatus(bid, config=self.config, data=read)
            for (bid, _), read in zip(rows, data, strict=True)
        ]
        return [status for status in found if status.exists]

    def __iter__(self) -> Iterator[BatchStatus]:
        start = 0
        while chunk := self.page(start, PAGE_SIZE):
            yield from chunk
            start += PAGE_SIZE

    def get(self, bid: str) -> BatchStatus | None:
        status = BatchStatus(bid, config=self.config)
        return status if status.exists else None


class WorkflowSet:
    """Every workflow not yet expired, newest first (``kiq|workflows``)."""

    def __init__(self, config: Config | None = None) -> None:
        self.config = config_or_default(config)

    @property
    def size(self) -> int:
        return self.config.store.workflow_count()

    def page(self, start: int, count: int = PAGE_SIZE) -> list[WorkflowStatus]:
        expired = wire.now() - self.config.batch_ttl
        rows = self.config.store.workflow_index(start, start + count - 1, expired)
        found = []
        for wid, _ in rows:
            status = self.get(wid)
            if status is not None:
                found.append(status)
        return found

    def get(self, wid: str) -> WorkflowStatus | None:
        try:
            return WorkflowStatus(wid, config=self.config)
        except KiqError:
            return None


def batch_counts(config: Config | None = None) -> dict[str, Counter[str]]:
    """{"batches": state -> count, "workflows": state -> count} over the newest
    ``COUNT_LIMIT`` of each, and "pending": the jobs still pending in those batches."""
    config = config_or_default(config)
    batches = BatchSet(config).page(0, COUNT_LIMIT)
    workflows = WorkflowSet(config).page(0, COUNT_LIMIT)
    pending: Counter[str] = Counter({"jobs": sum(status.pending for status in batches)})
    return {
        "batches": Counter(batch_state(status) for status in batches),
        "workflows": Counter(status.state for status in workflows),
        "pending": pending,
    }
