"""Tracing with OpenTelemetry (``SCHEDULER_TRACING=otlp``): the X-Ray path's spans, exported
over OTLP/HTTP (protobuf) to a collector.

AWS put the X-Ray SDKs and daemon in maintenance mode (support ends 2027-02-25) and points to
OpenTelemetry. Instrumentation is manual, as on the X-Ray path: the same units of work
(``http``, ``transition``, ``commit status``) and spans (``Activate``, ``StartRun``...) with
the same attributes, and one trace per job. No auto-instrumentation layer (on Python it costs
about a second of cold start), so boto3 and httpx calls are not spans of their own here.

One trace per job: the webhook request's span context is stored on the job as a W3C
``traceparent`` (``00-<trace id>-<span id>-01``) in ``trace_id``; every later unit of work on
the job is a span whose parent is that request span, in that trace. A job traced with X-Ray
(``1-<8 hex>-<24 hex>``) keeps its trace id too (OpenTelemetry's id is the same 32 digits).

The collector is the exporter's standard configuration (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, default ``http://localhost:4318/v1/traces``;
``OTEL_SERVICE_NAME``). Spans leave in batches from a background thread; a Lambda function
flushes them before its invocation returns (:func:`scheduler.tracing.flush`), as a frozen
sandbox would hold them back. Imported only when this mode is chosen: an X-Ray or untraced
cold start never loads the SDK.
"""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

__all__ = ["OtlpTracer", "parent_context"]

_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_XRAY = re.compile(r"1-([0-9a-f]{8})-([0-9a-f]{24})")


def parent_context(trace_id: str | None) -> otel_context.Context:
    """The context a unit of work starts in: under the span ``trace_id`` names (a stored
    ``traceparent``), in the trace it names (an X-Ray id), or a new trace (None, unreadable)."""
    empty = otel_context.Context()  # never nested under whatever span happens to be current
    if not trace_id:
        return empty
    if found := _TRACEPARENT.fullmatch(trace_id):
        trace_hex, span_id = found.group(1), int(found.group(2), 16)
    elif found := _XRAY.fullmatch(trace_id):
        trace_hex, span_id = found.group(1) + found.group(2), random.getrandbits(64) or 1
    else:
        return empty
    parent = SpanContext(
        int(trace_hex, 16), span_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED)
    )
    if not parent.is_valid:
        return empty
    return trace.set_span_in_context(NonRecordingSpan(parent), empty)


class OtlpTracer:
    """A tracer provider of its own (the global one is left alone) exporting in batches."""

    def __init__(self, service: str, exporter: SpanExporter | None = None) -> None:
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        # Resource.create also reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
        self._provider = TracerProvider(resource=Resource.create({"service.name": service}))
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("scheduler")

    def current_trace_id(self) -> str | None:
        """The current span as a ``traceparent`` (stored on a new job), or None."""
        context = trace.get_current_span().get_span_context()
        if not context.is_valid:
            return None
        return f"00-{context.trace_id:032x}-{context.span_id:016x}-01"

    @contextlib.contextmanager
    def work(
        self, name: str, trace_id: str | None, annotations: Mapping[str, Any]
    ) -> Iterator[None]:
        # An exception is recorded on the span, which is marked as an error (the defaults).
        with self._tracer.start_as_current_span(
            name, context=parent_context(trace_id), attributes=_attributes(annotations)
        ):
            yield

    @contextlib.contextmanager
    def span(self, name: str, annotations: Mapping[str, Any]) -> Iterator[None]:
        """A child of the current unit of work (nothing outside one, as with X-Ray)."""
        if not trace.get_current_span().get_span_context().is_valid:
            yield
            return
        with self._tracer.start_as_current_span(name, attributes=_attributes(annotations)):
            yield

    def flush(self, timeout_millis: int = 5_000) -> bool:
        return self._provider.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self._provider.shutdown()


def _attributes(annotations: Mapping[str, Any]) -> dict[str, str | int]:
    return {key: value for key, value in annotations.items() if value is not None}
