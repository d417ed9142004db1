"""CloudWatch metrics from the Lambda functions: one embedded-metric-format line per invocation.

A function's stdout goes to CloudWatch Logs, which turns a JSON line carrying ``_aws``
metadata into metrics (no API call, no extra permission, nothing to flush but the line). Each
invocation prints what it recorded in :mod:`scheduler.metrics` since the last one: jobs that
entered each status (``JobsPending``, ``JobsPassed`` ...), refused writes
(``RefusedCondition``, ``RefusedTransactionConflict``), the queued -> start latencies and the
stream lag (up to 100 values each, in seconds). The reaper's invocation (every minute) adds
the queue's gauges read from sparse indexes: ``QueuedJobs``, ``SlotsInUse`` and
``OldestQueuedAge`` (the template alarms on the last); the queue depth of each repository
rides along as a property (``queue_depth_by_repo``), searchable in Logs Insights without a
metric per repository. Dead letters are the on-failure queue's own metrics (the stream function
never sees them), and the stream's lag on AWS is Lambda's ``IteratorAge`` as well.

Metrics are in namespace ``Scheduler`` with one dimension, ``FunctionName`` (the Lambda
function's name: unique per stack). Hand-written rather than ``aws-embedded-metrics``: the
format is one documented JSON object, and the library would be one more import at cold start.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import IO, Any, TypeVar

from scheduler import metrics, tracing
from scheduler.db.store import JobStore
from scheduler.metrics_gauges import QueueGauges, read_gauges

__all__ = ["NAMESPACE", "emf_line", "per_invocation", "store_gauges"]

log = logging.getLogger(__name__)

NAMESPACE = "Scheduler"

_Handler = TypeVar("_Handler", bound=Callable[..., Any])

_COUNTER_NAMES = {
    metrics.TRANSITIONS: lambda labels: f"Jobs{labels.get('status', '').capitalize()}",
    metrics.REFUSED: lambda labels: (
        "Refused" + "".join(part.capitalize() for part in labels.get("kind", "").split("_"))
    ),
}
_HISTOGRAM_NAMES = {metrics.START_LATENCY: "StartLatency", metrics.STREAM_LAG: "StreamLag"}


def emf_line(
    function_name: str,
    recorded: tuple[dict[tuple[str, metrics.Labels], float], dict[str, list[float]]],
    gauges: QueueGauges | None,
    timestamp_ms: int,
) -> dict[str, Any]:
    """The EMF object of one invocation (see the module docstring)."""
    deltas, samples = recorded
    values: dict[str, Any] = {}
    units: dict[str, str] = {}
    for (name, labels), amount in sorted(deltas.items()):
        naming = _COUNTER_NAMES.get(name)
        if naming is None:
            continue
        metric = naming(dict(labels))
        values[metric] = values.get(metric, 0) + amount
        units[metric] = "Count"
    for name, observed in sorted(samples.items()):
        if name in _HISTOGRAM_NAMES and observed:
            metric = _HISTOGRAM_NAMES[name]
            values[metric] = [round(v, 3) for v in observed]
            units[metric] = "Seconds"
    line: dict[str, Any] = {"FunctionName": function_name}
    if gauges is not None:
        values["QueuedJobs"] = gauges.queued
        values["SlotsInUse"] = sum(r.running for r in gauges.repos)
        units["QueuedJobs"] = units["SlotsInUse"] = "Count"
        if gauges.oldest_queued_age_seconds is not None:
            values["OldestQueuedAge"] = round(gauges.oldest_queued_age_seconds, 3)
            units["OldestQueuedAge"] = "Seconds"
        line["queue_depth_by_repo"] = {r.repo: r.pending for r in gauges.repos if r.pending}
        line["gauges_truncated"] = gauges.truncated
    line["_aws"] = {
        "Timestamp": timestamp_ms,
        "CloudWatchMetrics": [
            {
                "Namespace": NAMESPACE,
                "Dimensions": [["FunctionName"]],
                "Metrics": [{"Name": name, "Unit": units[name]} for name in values],
            }
        ],
    }
    line.update(values)
    return line


def per_invocation(
    gauges: Callable[[], QueueGauges] | None = None,
    *,
    out: IO[str] | None = None,
    clock: Callable[[], float] = time.time,
) -> Callable[[_Handler], _Handler]:
    """Decorates a Lambda handler: after each invocation (even a failed one), print its EMF
    line (with ``gauges`` read then, if given) and send the spans still buffered."""

    def decorate(handler: _Handler) -> _Handler:
        @functools.wraps(handler)
        def invoked(event: Any, context: Any) -> Any:
            metrics.RECORDER.keep_samples = True  # a function reports its samples per line
            try:
                return handler(event, context)
            finally:
                _emit(getattr(context, "function_name", handler.__name__), gauges, out, clock)
                tracing.flush()

        return invoked  # type: ignore[return-value]

    return decorate


def _emit(
    function_name: str,
    gauges: Callable[[], QueueGauges] | None,
    out: IO[str] | None,
    clock: Callable[[], float],
) -> None:
    read: QueueGauges | None = None
    if gauges is not None:
        try:
            read = gauges()
        except Exception as exc:  # a metric never fails the invocation it describes
            log.warning("metrics: gauges not read: %s", exc)
    line = emf_line(function_name, metrics.RECORDER.drain(), read, int(clock() * 1000))
    if not line["_aws"]["CloudWatchMetrics"][0]["Metrics"]:
        return  # nothing happened worth a metric (a health check, an answer from the cache)
    stream = out if out is not None else sys.stdout
    stream.write(json.dumps(line, separators=(",", ":")) + "\n")
    stream.flush()


def store_gauges(
    store: Callable[[], JobStore], clock: Callable[[], float] = time.time
) -> Callable[[], QueueGauges]:
    """The queue's gauges from ``store``'s sparse indexes only (no counters item: the
    reaper's role queries indexes, it reads no repository in bulk)."""
    return lambda: read_gauges(store(), int(clock() * 1000), counters=False)
