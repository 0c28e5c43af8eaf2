"""kiq.otel: spans from a web request through the enqueue to the job run in a kiq process
share one trace (issue 8 §2), asserted from the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import kiq
from kiq import api, otel
from kiq.config import Config
from kiq.launcher import Launcher
from tests.support.inprocess import running
from tests.support.wait import wait_until

PROVIDER = TracerProvider()
EXPORTER = InMemorySpanExporter()
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))
tracer = PROVIDER.get_tracer("tests.app")  # the application's own tracer


class TracedJob(kiq.Job, name="TracedJob"):
    def perform(self, n: int) -> None:
        with tracer.start_as_current_span("charge card"):
            pass


class AsyncTracedJob(kiq.Job, name="AsyncTracedJob"):
    async def perform(self, n: int) -> None:
        await asyncio.sleep(0)
        with tracer.start_as_current_span("charge card"):
            await asyncio.sleep(0)


class FailingTracedJob(kiq.Job, name="FailingTracedJob", retry=1):
    def perform(self) -> None:
        raise ValueError("card declined")


@pytest.fixture
def spans(config: Config) -> Iterator[InMemorySpanExporter]:
    """Both middleware on the test Config, reporting to the in-memory exporter."""
    otel.instrument(config, tracer_provider=PROVIDER)
    EXPORTER.clear()
    yield EXPORTER
    EXPORTER.clear()


@pytest.fixture
def worker(config: Config, spans: InMemorySpanExporter) -> Iterator[Launcher]:
    with running(config) as launcher:
        yield launcher


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def one(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    (span,) = named(exporter, name)
    return span


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def web_request(job: Any, *args: object) -> str:
    """What a web view does: enqueue inside the request's SERVER span."""
    with tracer.start_as_current_span("POST /checkout", kind=SpanKind.SERVER):
        jid = job.perform_async(*args)
    assert jid is not None
    return jid


@pytest.mark.parametrize("job", [TracedJob, AsyncTracedJob])
def test_request_enqueue_and_job_share_one_trace(spans, worker, job):
    """request (SERVER) -> send (PRODUCER) -> process (CONSUMER) -> the job's own span:
    one trace id, each span the parent of the next; sync and async jobs alike."""
    web_request(job, 1)
    wait_until(lambda: named(spans, "charge card") and named(spans, "process default"))

    request = one(spans, "POST /checkout")
    send, process = one(spans, "send default"), one(spans, "process default")
    inner = one(spans, "charge card")
    trace_id = request.context.trace_id
    assert {s.context.trace_id for s in (send, process, inner)} == {trace_id}
    assert parent_of(send) == request.context.span_id
    assert parent_of(process) == send.context.span_id
    assert parent_of(inner) == process.context.span_id
    assert (send.kind, process.kind) == (SpanKind.PRODUCER, SpanKind.CONSUMER)


def test_producer_span_carries_the_messaging_conventions(spans):
    """The PRODUCER span has messaging.system, operation type and name, destination
    (queue), message id (jid) and Ruby's messaging.sidekiq.job_class."""
    jid = web_request(TracedJob.set(queue="billing"), 1)
    send = one(spans, "send billing")

    assert dict(send.attributes or {}) == {
        "messaging.system": "sidekiq",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": "billing",
        "messaging.message.id": jid,
        "messaging.sidekiq.job_class": "TracedJob",
    }


def test_consumer_span_attributes(spans, worker):
    """The CONSUMER span names the queue it ran from, the jid and the class."""
    jid = web_request(TracedJob, 1)
    wait_until(lambda: named(spans, "process default"))

    attributes = dict(one(spans, "process default").attributes or {})
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["messaging.destination.name"] == "default"
    assert attributes["messaging.message.id"] == jid
    assert attributes["messaging.system"] == "sidekiq"


def test_trace_context_is_a_top_level_w3c_field_of_the_payload(config, r, spans):
    """The payload carries ``traceparent`` (W3C, as Ruby's Sidekiq instrumentation
    writes it) naming the PRODUCER span; Sidekiq ignores and keeps the field."""
    web_request(TracedJob, 1)
    (raw,) = r.lrange("queue:default", 0, -1)
    payload = kiq.payload.loads(raw.encode())

    send = one(spans, "send default")
    version, trace_id, span_id, flags = payload["traceparent"].split("-")
    assert version == "00"
    assert int(flags, 16) & 1  # sampled
    assert int(trace_id, 16) == send.context.trace_id
    assert int(span_id, 16) == send.context.span_id


def test_a_failing_job_records_the_exception(spans, worker):
    """A job that raises ends its CONSUMER span with status ERROR and the exception."""
    web_request(FailingTracedJob)
    wait_until(lambda: named(spans, "process default"))

    process = one(spans, "process default")
    assert process.status.status_code is StatusCode.ERROR
    assert [event.name for event in process.events] == ["exception"]
    assert (process.events[0].attributes or {})["exception.type"] == "ValueError"


def test_a_retry_stays_in_the_jobs_trace(config, r, spans, worker):
    """The push of a retry (no active span: the poller, or the Web UI) continues the
    trace in the payload, so every run of a job is in the trace that enqueued it."""
    web_request(FailingTracedJob)
    wait_until(lambda: r.zcard("retry") == 1)
    (entry,) = api.RetrySet(config)

    entry.add_to_queue()
    wait_until(lambda: len(named(spans, "process default")) == 2)

    trace_id = one(spans, "POST /checkout").context.trace_id
    runs = named(spans, "send default") + named(spans, "process default")
    assert len(runs) == 4
    assert {span.context.trace_id for span in runs} == {trace_id}


def test_a_push_outside_any_trace_starts_one(config, spans):
    """With no active span and no context in the payload, the PRODUCER span is a root."""
    assert not trace.get_current_span().get_span_context().is_valid

    TracedJob.perform_async(1)

    send = one(spans, "send default")
    assert send.parent is None
