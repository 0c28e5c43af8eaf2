"""OpenTelemetry tracing: a PRODUCER span per push, a CONSUMER span per job run, one trace.

Why in middleware: the client chain sees every push (``perform_async``, bulk, the
poller moving scheduled and retried jobs) and the server chain every run, sync or
async, so two small middleware cover the whole path from the web request that
enqueued to the job's own spans, with no change to the engine.

The trace context travels in the payload as top-level string fields written by the
configured propagator (W3C by default: ``traceparent``, ``tracestate``, ``baggage``),
which is what Ruby's opentelemetry-instrumentation-sidekiq writes and reads too: Ruby
Sidekiq without that gem ignores the fields and keeps them through retries, and with
it a trace crosses between Rails and kiq in both directions.

Semantic conventions (messaging spans, semconv 1.26+):

* ``messaging.system = "sidekiq"``: the system is the broker protocol, and kiq speaks
  Sidekiq's (same keys, same payloads, shared queues); Ruby's instrumentation reports
  "sidekiq", so a trace or a dashboard that groups by system sees one system whichever
  language ran the job. ``service.name`` tells the two apart.
* span names ``send <queue>`` (PRODUCER) and ``process <queue>`` (CONSUMER), with
  ``messaging.operation.type`` / ``messaging.operation.name`` ``send`` and ``process``,
  ``messaging.destination.name`` = queue, ``messaging.message.id`` = jid, and
  ``messaging.sidekiq.job_class`` (Ruby's attribute; ``wrapped`` for ActiveJob).
* the CONSUMER span is a child of the context in the payload, so it shares the web
  request's trace id; a failure records the exception and sets the status to ERROR.

A push with no active span (the poller re-pushing a retry, a cron tick) continues the
trace already in the payload instead of starting a new one, so a job's retries stay in
its original trace.

Example::

    from kiq import otel

    otel.instrument(config)            # both middleware, on this Config's chains
    # or by hand:
    config.client_middleware.add(otel.ClientMiddleware())
    config.server_middleware.prepend(otel.ServerMiddleware())

Needs the ``otel`` extra (``pip install 'kiq[otel]'``, the API only); the application
sets up the SDK and its exporter as usual.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final

try:
    from opentelemetry import propagate, trace
    from opentelemetry.context import Context
    from opentelemetry.propagators.textmap import Getter, Setter
    from opentelemetry.trace import Span, SpanKind, TracerProvider
except ImportError as exc:  # pragma: no cover - exercised by hand without the extra
    raise ImportError(f"kiq.otel needs opentelemetry-api ({exc}): pip install 'kiq[otel]'") from exc

from kiq import __version__
from kiq.config import Config, get_default
from kiq.payload import Payload

SYSTEM: Final = "sidekiq"  # see the module docstring for why not "kiq"


class _PayloadCarrier(Getter[Payload], Setter[Payload]):
    """Read and write propagation fields as top-level string fields of a payload."""

    def get(self, carrier: Payload, key: str) -> list[str] | None:
        value = carrier.get(key)
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Payload) -> list[str]:
        return list(carrier)

    def set(self, carrier: Payload, key: str, value: str) -> None:
        carrier[key] = value


CARRIER: Final = _PayloadCarrier()


def _attributes(payload: Mapping[str, Any], queue: str, operation: str) -> dict[str, str]:
    attributes = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "messaging.destination.name": queue,
        "messaging.sidekiq.job_class": str(payload.get("wrapped") or payload.get("class")),
    }
    if isinstance(payload.get("jid"), str):
        attributes["messaging.message.id"] = payload["jid"]
    return attributes


def _tracer(provider: TracerProvider | None) -> trace.Tracer:
    return trace.get_tracer("kiq", __version__, provider)


class ClientMiddleware:
    """Open a PRODUCER span around each push and write its context into the payload."""

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        self.tracer = _tracer(tracer_provider)

    def __call__(
        self,
        job: str,
        payload: Payload,
        queue: str,
        call_next: Callable[[], Payload | None],
    ) -> Payload | None:
        parent: Context | None = None
        if not trace.get_current_span().get_span_context().is_valid:
            parent = propagate.extract(payload, getter=CARRIER)  # a re-push: same trace
        with self.tracer.start_as_current_span(
            f"send {queue}",
            context=parent,
            kind=SpanKind.PRODUCER,
            attributes=_attributes(payload, queue, "send"),
        ):
            propagate.inject(payload, setter=CARRIER)
            return call_next()


class ServerMiddleware:
    """Run each job inside a CONSUMER span that continues the trace in its payload.

    A sync job runs inside the span on its processor thread; an ``async def perform``
    job gets its coroutine wrapped so the span is open, and current, while it runs on
    the event loop (a plain middleware's code after ``call_next()`` would otherwise run
    before the job ends, see ``Chain.ainvoke``).
    """

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        self.tracer = _tracer(tracer_provider)

    def __call__(
        self, job: Any, payload: Payload, queue: str, call_next: Callable[[], None]
    ) -> None:
        perform = getattr(job, "perform", None)
        if inspect.iscoroutinefunction(perform):
            job.perform = self._traced(payload, queue, perform)
            call_next()
            return
        with self._span(payload, queue):
            call_next()

    @contextmanager
    def _span(self, payload: Payload, queue: str) -> Iterator[Span]:
        with self.tracer.start_as_current_span(
            f"process {queue}",
            context=propagate.extract(payload, getter=CARRIER),
            kind=SpanKind.CONSUMER,
            attributes=_attributes(payload, queue, "process"),
        ) as span:
            yield span

    def _traced(
        self, payload: Payload, queue: str, perform: Callable[..., Coroutine[Any, Any, Any]]
    ) -> Callable[..., Coroutine[Any, Any, Any]]:
        @functools.wraps(perform)
        async def traced(*args: Any) -> Any:
            with self._span(payload, queue):
                return await perform(*args)

        return traced


def instrument(config: Config | None = None, tracer_provider: TracerProvider | None = None) -> None:
    """Add both middleware to ``config`` (default: the default Config).

    The server middleware goes first, so the spans of other middleware and of the job
    are its children.
    """
    config = config if config is not None else get_default()
    config.client_middleware.add(ClientMiddleware(tracer_provider))
    config.server_middleware.prepend(ServerMiddleware(tracer_provider))
