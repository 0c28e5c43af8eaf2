"""kiq: Sidekiq's background-job system for Python, wire-compatible with Ruby Sidekiq.

Importing ``kiq`` loads only the client side (jobs, the client, config); the worker
engine is loaded by ``kiq worker``, so a web app that enqueues never starts threads.

Example::

    import kiq

    class CalculateMetricsJob(kiq.Job, queue="default", retry=5):
        def perform(self, entity_id: int) -> None: ...

    CalculateMetricsJob.perform_async(42)
"""

from __future__ import annotations

from collections.abc import Callable

# kiq.activejob registers the Job that runs ActiveJob's wrapper class names.
from kiq import activejob
from kiq import iter as iter  # enumerators for IterableJob: kiq.iter.items(...)
from kiq.batch import Batch
from kiq.batch_status import BatchStatus
from kiq.client import AsyncClient, Client
from kiq.config import Config, configure, connect, get_default
from kiq.errors import (
    BatchError,
    ConfigError,
    Discard,
    IterationInterrupted,
    JobArgumentError,
    JobCancelled,
    JobExpired,
    JobNotFound,
    JobTimeout,
    KiqError,
    OverLimit,
    PayloadError,
    RedisUnavailable,
    Shutdown,
    UnknownJobError,
)
from kiq.iterable import IterableJob
from kiq.job import FunctionJob, Job, Setter, job
from kiq.limiter import Limiter
from kiq.results import JobFailed, Result, ResultTimeout
from kiq.workflow import Workflow, WorkflowStatus, chain, chord, dag, group

__version__ = "0.1.0"


def on(event: str) -> Callable[[Callable[[Config], None]], Callable[[Config], None]]:
    """Register a lifecycle handler on the default Config: ``@kiq.on("startup")``."""

    def register(handler: Callable[[Config], None]) -> Callable[[Config], None]:
        get_default().on(event, handler)
        return handler

    return register


__all__ = [
    "AsyncClient",
    "Batch",
    "BatchError",
    "BatchStatus",
    "Client",
    "Config",
    "ConfigError",
    "Discard",
    "FunctionJob",
    "IterableJob",
    "IterationInterrupted",
    "Job",
    "JobArgumentError",
    "JobCancelled",
    "JobExpired",
    "JobFailed",
    "JobNotFound",
    "JobTimeout",
    "KiqError",
    "Limiter",
    "OverLimit",
    "PayloadError",
    "RedisUnavailable",
    "Result",
    "ResultTimeout",
    "Setter",
    "Shutdown",
    "UnknownJobError",
    "Workflow",
    "WorkflowStatus",
    "__version__",
    "activejob",
    "chain",
    "chord",
    "configure",
    "connect",
    "dag",
    "get_default",
    "group",
    "iter",
    "job",
    "on",
]
