"""``GET /metrics``: the local stack's metrics in Prometheus' text format.

A ``prometheus_client`` collector renders, at each scrape, what the process recorded
(:mod:`scheduler.metrics`), the gauges read then (:mod:`scheduler.metrics_gauges`: a few index
queries, never a scan) and the stream runner's counters (records read, dead-lettered). Only
``scheduler up`` serves it (the Lambda functions report through CloudWatch instead), and it is
guarded like the read routes: the API token when one is set.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from scheduler import metrics
from scheduler.api.app import Request, Response, Router
from scheduler.api.auth import Access
from scheduler.db.store import JobStore
from scheduler.errors import StoreUnavailable
from scheduler.metrics_gauges import QueueGauges, read_gauges

__all__ = ["SchedulerCollector", "metrics_route", "scheduler_metrics"]

log = logging.getLogger(__name__)

PREFIX = "scheduler"

_HELP = {
    metrics.TRANSITIONS: "Jobs that entered each status (transitions handled by this process)",
    metrics.START_LATENCY: "Seconds from a job joining the queue to its run being started",
    metrics.REFUSED: "Conditional writes and transactions the database refused, by kind",
    metrics.STREAM_LAG: "Seconds from a job's write to its stream record being handled",
}

# The stream runner's counters worth exporting (RunnerStats field -> help).
RUNNER_COUNTERS = {
    "records_read": "Stream records read",
    "records_succeeded": "Stream records the handler processed",
    "records_dead_lettered": "Stream records sent to the dead-letter table",
    "function_errors": "Stream batches the handler failed",
    "store_outages": "Stream batches or dead-letter writes the database failed",
}


class SchedulerCollector(Collector):
    def __init__(
        self,
        recorder: metrics.Recorder,
        gauges: Callable[[], QueueGauges] | None = None,
        runner_stats: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        self._recorder = recorder
        self._gauges = gauges
        self._runner_stats = runner_stats

    def collect(self) -> Iterator[Metric]:
        yield from self._recorded()
        if self._runner_stats is not None:
            stats = self._runner_stats()
            for name, help_text in RUNNER_COUNTERS.items():
                family = CounterMetricFamily(f"{PREFIX}_stream_{name}", help_text)
                family.add_metric([], stats.get(name, 0))
                yield family
        if self._gauges is not None:
            yield from self._read_gauges()

    def _recorded(self) -> Iterator[Metric]:
        snapshot = self._recorder.snapshot()
        counters: dict[str, CounterMetricFamily] = {}
        for (name, labels), value in sorted(snapshot.counters.items()):
            family = counters.get(name)
            if family is None:
                family = counters[name] = CounterMetricFamily(
                    f"{PREFIX}_{name}", _HELP.get(name, name), labels=[k for k, _ in labels]
                )
            family.add_metric([v for _, v in labels], value)
        yield from counters.values()
        for name, state in sorted(snapshot.histograms.items()):
            bounds = [*(str(b) for b in metrics.LATENCY_BUCKETS), "+Inf"]
            histogram = HistogramMetricFamily(f"{PREFIX}_{name}", _HELP.get(name, name))
            histogram.add_metric(
                [], list(zip(bounds, state.cumulative(), strict=True)), sum_value=state.total
            )
            yield histogram

    def _read_gauges(self) -> Iterator[Metric]:
        assert self._gauges is not None
        up = GaugeMetricFamily(f"{PREFIX}_gauges_up", "1 if the scrape-time reads succeeded")
        try:
            gauges = self._gauges()
        except StoreUnavailable as exc:
            log.warning("metrics: gauges not read: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        depth = GaugeMetricFamily(
            f"{PREFIX}_queue_depth", "Jobs queued (pending) per repository", labels=["repo"]
        )
        slots = GaugeMetricFamily(
            f"{PREFIX}_slots_in_use", "Slots held per repository", labels=["repo"]
        )
        limit = GaugeMetricFamily(
            f"{PREFIX}_slot_limit", "Concurrency limit per repository", labels=["repo"]
        )
        jobs = GaugeMetricFamily(
            f"{PREFIX}_jobs",
            "Jobs by status per repository with live work (its counters)",
            labels=["repo", "status"],
        )
        for repo in gauges.repos:
            depth.add_metric([repo.repo], repo.pending)
            slots.add_metric([repo.repo], repo.running)
            if repo.slot_limit is not None:
                limit.add_metric([repo.repo], repo.slot_limit)
            for status, count in repo.jobs.items():
                jobs.add_metric([repo.repo, status], count)
        total = GaugeMetricFamily(f"{PREFIX}_queued_jobs", "Jobs queued, all repositories")
        total.add_metric([], gauges.queued)
        age = GaugeMetricFamily(
            f"{PREFIX}_oldest_queued_age_seconds", "Age of the job at the head of the queue"
        )
        age.add_metric([], gauges.oldest_queued_age_seconds or 0.0)
        truncated = GaugeMetricFamily(
            f"{PREFIX}_gauges_truncated", "1 if more repositories have work than are shown"
        )
        truncated.add_metric([], int(gauges.truncated))
        yield from (depth, slots, limit, jobs, total, age, truncated)


def metrics_route(collector: Collector) -> Callable[[Router], None]:
    """Registers ``GET /metrics`` serving ``collector`` (a registry of its own: nothing of the
    client library's process-wide default registry leaks in)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)

    def serve(_: Request) -> Response:
        started = time.monotonic()
        text = generate_latest(registry).decode()
        log.debug("metrics scraped", extra={"ms": round((time.monotonic() - started) * 1000)})
        return Response(200, {}, text_body=text, media_type=CONTENT_TYPE_LATEST)

    def register(router: Router) -> None:
        router.add("GET", "/metrics", serve, access=Access.API)

    return register


def scheduler_metrics(
    store: JobStore,
    runner_stats: Callable[[], Mapping[str, int]] | None = None,
    *,
    clock: Callable[[], float] = time.time,
) -> Callable[[Router], None]:
    """``GET /metrics`` for a local stack: this process's recorder, the gauges of ``store``
    and the stream runner's counters."""
    return metrics_route(
        SchedulerCollector(
            metrics.RECORDER,
            gauges=lambda: read_gauges(store, int(clock() * 1000)),
            runner_stats=runner_stats,
        )
    )
