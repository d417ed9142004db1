"""Tracing: ``SCHEDULER_TRACING=xray`` (AWS X-Ray; on by default on Lambda, off locally),
``otlp`` (OpenTelemetry over OTLP/HTTP, :mod:`scheduler.tracing_otlp`) or ``off``.

One trace follows a job: the webhook request that made it opens the trace, its id is stored on
the job (``trace_id``), and every later piece of work on the job (each stream record's
transition, the run's start, the commit status) is recorded under that same trace id, so the
X-Ray console shows a job's life as one trace. boto3 (DynamoDB, CodeBuild) and httpx (GitHub)
calls appear as subsegments of whatever is being traced when they happen.

Locally the scheduler opens segments itself and sends them to the daemon address
(``AWS_XRAY_DAEMON_ADDRESS``, default 127.0.0.1:2000). On Lambda the runtime owns the segment
(from the invocation's trace header): work becomes subsegments of it, annotated with the job's
trace id. Segments carry ids, names and annotations only: never a payload, a header or a secret.

When tracing is off every function here is a no-op (the SDK is not even configured).
With ``otlp`` the same units of work and spans go to an OpenTelemetry collector instead, one
trace per job all the same (see :mod:`scheduler.tracing_otlp`); its SDK is imported only then.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scheduler.tracing_otlp import OtlpTracer

__all__ = [
    "MODES",
    "configure",
    "current_trace_id",
    "enabled",
    "flush",
    "span",
    "trace_httpx",
    "work",
]

log = logging.getLogger(__name__)

SERVICE = "scheduler"
MODES = ("xray", "otlp", "off")
_state: dict[str, Any] = {"recorder": None, "lambda": False, "otlp": None}


def configure(mode: str | None) -> bool:
    """Turn tracing on (``"xray"``, ``"otlp"``) or off (anything else); True if on.
    Idempotent."""
    if mode == "otlp":
        return _configure_otlp()
    if mode not in (None, *MODES):
        log.warning("unknown SCHEDULER_TRACING %r: tracing is off (use xray, otlp or off)", mode)
    if mode != "xray":
        return False
    if _state["recorder"] is not None:
        return True
    from aws_xray_sdk.core import patch, xray_recorder

    xray_recorder.configure(
        service=SERVICE,
        context_missing="IGNORE_ERROR",  # work outside a segment is simply not traced
        sampling=False,  # every job is traced: its trace is how an operator follows it
        daemon_address=os.environ.get("AWS_XRAY_DAEMON_ADDRESS", "127.0.0.1:2000"),
    )
    # httpx (GitHub's client) is patched when a client is first made (:func:`trace_httpx`):
    # a function that never calls GitHub does not import it at cold start.
    patch(("botocore",))
    # A patched call outside any work is meant to go untraced (IGNORE_ERROR above), but the
    # recorder still logs a warning for each one (sweeps, start-up reads): silence that.
    logging.getLogger("aws_xray_sdk.core.recorder").setLevel(logging.ERROR)
    _state["recorder"] = xray_recorder
    _state["lambda"] = bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME"))
    log.info("tracing with X-Ray", extra={"daemon": os.environ.get("AWS_XRAY_DAEMON_ADDRESS")})
    return True


def trace_httpx() -> None:
    """Trace GitHub's HTTP calls under X-Ray too; called where an httpx client is made (the
    import is then paid anyway). Idempotent; nothing when X-Ray is off."""
    if _state["recorder"] is None or _state.get("httpx"):
        return
    from aws_xray_sdk.core import patch

    patch(("httpx",))
    _state["httpx"] = True


def _configure_otlp() -> bool:
    if _state["otlp"] is None:
        from scheduler.tracing_otlp import OtlpTracer

        _state["otlp"] = OtlpTracer(SERVICE)
        log.info("tracing with OpenTelemetry (OTLP/HTTP)")
    return True


def _otlp() -> OtlpTracer | None:
    tracer: OtlpTracer | None = _state["otlp"]
    return tracer


def enabled() -> bool:
    return _state["recorder"] is not None or _state["otlp"] is not None


def flush() -> None:
    """Send the spans still buffered (a Lambda invocation's end: its sandbox may freeze)."""
    if (tracer := _otlp()) is not None:
        tracer.flush()


def current_trace_id() -> str | None:
    """The trace id of the work under way (to store on a new job), or None."""
    if (tracer := _otlp()) is not None:
        return tracer.current_trace_id()
    recorder = _state["recorder"]
    if recorder is None:
        return None
    entity = recorder.get_trace_entity()
    return getattr(entity, "trace_id", None) if entity is not None else None


@contextlib.contextmanager
def work(name: str, *, trace_id: str | None = None, **annotations: str | int) -> Iterator[None]:
    """A unit of work (a request, a stream record): a segment in trace ``trace_id`` (a new
    trace if None) locally, a subsegment of the invocation's segment on Lambda."""
    if (tracer := _otlp()) is not None:
        with tracer.work(name, trace_id, annotations):
            yield
        return
    recorder = _state["recorder"]
    if recorder is None:
        yield
        return
    if _state["lambda"]:
        with span(name, **({"job_trace_id": trace_id} if trace_id else {}), **annotations):
            yield
        return
    segment = recorder.begin_segment(name, traceid=trace_id, sampling=1)
    try:
        _annotate(segment, annotations)
        yield
    except Exception as exc:
        segment.add_exception(exc, _stack(), remote=False)
        raise
    finally:
        recorder.end_segment()


@contextlib.contextmanager
def span(name: str, **annotations: str | int | None) -> Iterator[None]:
    """A subsegment of the work under way, with annotations (no-op outside any work)."""
    if (tracer := _otlp()) is not None:
        with tracer.span(name, annotations):
            yield
        return
    recorder = _state["recorder"]
    if recorder is None or recorder.get_trace_entity() is None:
        yield
        return
    subsegment = recorder.begin_subsegment(name)
    try:
        if subsegment is not None:
            _annotate(subsegment, annotations)
        yield
    except Exception as exc:
        if subsegment is not None:
            subsegment.add_exception(exc, _stack(), remote=False)
        raise
    finally:
        if subsegment is not None:
            recorder.end_subsegment()


def _annotate(entity: Any, annotations: dict[str, Any]) -> None:
    for key, value in annotations.items():
        if value is not None:
            entity.put_annotation(key, value)


def _stack() -> list[Any]:
    import traceback

    return traceback.extract_stack(limit=10)
