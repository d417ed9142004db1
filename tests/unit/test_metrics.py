"""Issue 27: the process's metrics recorder, the transition observer, the scrape-time gauges'
pure parts and their Prometheus rendering (no server)."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from scheduler import metrics
from scheduler.api.metrics_route import SchedulerCollector
from scheduler.aws.emf import per_invocation
from scheduler.db.models import HistoryEntry, JobModel
from scheduler.metrics_gauges import QueueGauges, RepoGauge, head_age
from scheduler.stream.decide import Transition
from state_machines import JobStatus

T0 = 1_700_000_000_000  # epoch ms


def job(status: str, history: list[tuple[str, int]], **fields: int) -> JobModel:
    model = JobModel(
        "job-1",
        repo="o/r",
        event="push",
        sha="a" * 40,
        status=status,
        timeout_seconds=60,
        received_at=T0,
        **fields,
    )
    model.history = [HistoryEntry(dest=d, at=a, actor="t", attempt=1) for d, a in history]
    return model


def transition(source: JobStatus | None, dest: JobStatus, image: JobModel) -> Transition:
    return Transition(source, dest, None, "1", image)  # type: ignore[arg-type]


def test_counters_and_histograms_accumulate_and_drain_gives_what_is_new() -> None:
    recorder = metrics.Recorder(keep_samples=True)
    recorder.count("x", status="passed")
    recorder.count("x", 2, status="passed")
    recorder.count("x", status="failed")
    recorder.observe("h", 0.2)
    recorder.observe("h", 4000.0)  # beyond the last bound: +Inf
    recorder.observe("h", -1.0)  # clocks apart: never negative
    snap = recorder.snapshot()
    assert snap.counters[("x", (("status", "passed"),))] == 3
    histogram = snap.histograms["h"]
    assert histogram.count == 3 and histogram.counts[-1] == 1 and histogram.total == 4000.2
    assert histogram.cumulative()[-1] == 3
    assert histogram.cumulative()[metrics.LATENCY_BUCKETS.index(0.25)] == 2

    deltas, samples = recorder.drain()
    assert deltas == {("x", (("status", "passed"),)): 3, ("x", (("status", "failed"),)): 1}
    assert samples == {"h": [0.2, 4000.0, 0.0]}
    recorder.count("x", status="failed")
    assert recorder.drain() == ({("x", (("status", "failed"),)): 1}, {})
    # The cumulative view is untouched by draining.
    assert recorder.snapshot().counters[("x", (("status", "failed"),))] == 2


def test_samples_are_kept_only_when_asked_and_bounded() -> None:
    local = metrics.Recorder()
    local.observe("h", 1.0)
    assert local.drain() == ({}, {})
    assert local.snapshot().histograms["h"].count == 1
    lambda_recorder = metrics.Recorder(keep_samples=True)
    for _ in range(metrics.MAX_SAMPLES + 50):
        lambda_recorder.observe("h", 1.0)
    assert len(lambda_recorder.drain()[1]["h"]) == metrics.MAX_SAMPLES


def test_an_activation_observes_the_wait_since_the_job_last_joined_the_queue() -> None:
    recorder = metrics.Recorder(keep_samples=True)
    now = (T0 + 10_000) / 1000
    # First attempt: queued at arrival, activated 1.5 s later.
    first = job(
        "active",
        [("pending", T0), ("active", T0 + 1500)],
        activated_at=T0 + 1500,
        updated_at=T0 + 1500,
    )
    metrics.observe_transition(
        transition(JobStatus.PENDING, JobStatus.ACTIVE, first), recorder=recorder, now=lambda: now
    )
    # A retry: queued again at +5 s, activated at +5.25 s (not 5.25 s after its arrival).
    retried = job(
        "active",
        [("pending", T0), ("active", T0 + 1500), ("failed", T0 + 4000), ("pending", T0 + 5000),
         ("active", T0 + 5250)],
        activated_at=T0 + 5250,
        updated_at=T0 + 5250,
    )  # fmt: skip
    metrics.observe_transition(
        transition(JobStatus.PENDING, JobStatus.ACTIVE, retried), recorder=recorder, now=lambda: now
    )
    new = job("pending", [("pending", T0)], updated_at=T0)
    metrics.observe_transition(
        transition(None, JobStatus.PENDING, new), recorder=recorder, now=lambda: now
    )
    deltas, samples = recorder.drain()
    assert samples[metrics.START_LATENCY] == [1.5, 0.25]
    assert samples[metrics.STREAM_LAG] == [8.5, 4.75, 10.0]  # now minus each write
    assert deltas[(metrics.TRANSITIONS, (("status", "active"),))] == 2
    assert deltas[(metrics.TRANSITIONS, (("status", "pending"),))] == 1


def test_refusals_are_counted_by_kind() -> None:
    recorder = metrics.Recorder()
    metrics.refused("condition", recorder)
    metrics.refused("transaction_conflict", recorder)
    metrics.refused("condition", recorder)
    counters = recorder.snapshot().counters
    assert counters[(metrics.REFUSED, (("kind", "condition"),))] == 2
    assert counters[(metrics.REFUSED, (("kind", "transaction_conflict"),))] == 1


def test_the_head_of_the_queue_is_aged_from_its_key() -> None:
    items = [{"queue_key": {"S": f"0000#{T0:013d}#job-1"}}]
    assert head_age(items, T0 + 61_000) == 61.0
    assert head_age([], T0) is None


def test_the_collector_renders_prometheus_text() -> None:
    recorder = metrics.Recorder()
    recorder.count(metrics.TRANSITIONS, status="passed")
    recorder.observe(metrics.START_LATENCY, 0.3)
    gauges = QueueGauges(
        [RepoGauge("o/r", 3, 2, 2, {"pending": 3, "active": 2}), RepoGauge("o/s", 1, 0, None)],
        oldest_queued_age_seconds=12.5,
        truncated=False,
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        SchedulerCollector(recorder, lambda: gauges, lambda: {"records_dead_lettered": 2})
    )
    text = generate_latest(registry).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("scheduler_job_transitions_total", (("status", "passed"),))] == 1
    assert samples[("scheduler_start_latency_seconds_count", ())] == 1
    assert samples[("scheduler_start_latency_seconds_bucket", (("le", "0.5"),))] == 1
    assert samples[("scheduler_start_latency_seconds_bucket", (("le", "0.25"),))] == 0
    assert samples[("scheduler_queue_depth", (("repo", "o/r"),))] == 3
    assert samples[("scheduler_slots_in_use", (("repo", "o/r"),))] == 2
    assert ("scheduler_slot_limit", (("repo", "o/s"),)) not in samples  # no limit known yet
    assert samples[("scheduler_jobs", (("repo", "o/r"), ("status", "active")))] == 2
    assert samples[("scheduler_queued_jobs", ())] == 4
    assert samples[("scheduler_oldest_queued_age_seconds", ())] == 12.5
    assert samples[("scheduler_stream_records_dead_lettered_total", ())] == 2
    assert samples[("scheduler_gauges_up", ())] == 1


def test_an_invocation_prints_one_emf_line_with_its_metrics_and_units() -> None:
    recorder = metrics.RECORDER
    recorder.reset()
    recorder.count(metrics.TRANSITIONS, status="passed")
    recorder.count(metrics.TRANSITIONS, 2, status="active")
    metrics.refused("transaction_conflict")
    out = io.StringIO()
    gauges = QueueGauges([RepoGauge("o/r", 3, 2, None), RepoGauge("o/s", 0, 1, None)], 42.0, False)

    @per_invocation(lambda: gauges, out=out, clock=lambda: T0 / 1000)
    def handler(event: dict[str, Any], context: Any) -> str:
        recorder.observe(metrics.START_LATENCY, 1.25)
        return "answer"

    context = type("Context", (), {"function_name": "stack-ReaperFunction-abc"})()
    assert handler({}, context) == "answer"
    (line,) = out.getvalue().splitlines()
    found = json.loads(line)
    directive = found["_aws"]["CloudWatchMetrics"][0]
    assert found["_aws"]["Timestamp"] == T0
    assert directive["Namespace"] == "Scheduler" and directive["Dimensions"] == [["FunctionName"]]
    units = {m["Name"]: m["Unit"] for m in directive["Metrics"]}
    assert units == {
        "JobsActive": "Count",
        "JobsPassed": "Count",
        "RefusedTransactionConflict": "Count",
        "StartLatency": "Seconds",
        "QueuedJobs": "Count",
        "SlotsInUse": "Count",
        "OldestQueuedAge": "Seconds",
    }
    assert found["FunctionName"] == "stack-ReaperFunction-abc"
    assert (found["JobsActive"], found["JobsPassed"], found["RefusedTransactionConflict"]) == (
        2,
        1,
        1,
    )
    assert found["StartLatency"] == [1.25]
    assert (found["QueuedJobs"], found["SlotsInUse"], found["OldestQueuedAge"]) == (3, 3, 42.0)
    assert found["queue_depth_by_repo"] == {"o/r": 3}
    # Every name a directive lists is a key of the line (else CloudWatch rejects the line).
    assert all(m["Name"] in found for m in directive["Metrics"])

    handler({}, context)  # only what the next invocation recorded: the latency
    second = json.loads(out.getvalue().splitlines()[1])
    assert "JobsPassed" not in second and second["StartLatency"] == [1.25]
    recorder.reset()
    recorder.keep_samples = False


def test_an_invocation_that_records_nothing_prints_nothing_and_a_failure_still_reports() -> None:
    metrics.RECORDER.reset()
    out = io.StringIO()

    @per_invocation(out=out)
    def quiet(event: Any, context: Any) -> None:
        return None

    @per_invocation(out=out)
    def failing(event: Any, context: Any) -> None:
        metrics.refused("condition")
        raise RuntimeError("the invocation failed")

    quiet({}, None)
    assert out.getvalue() == ""
    with pytest.raises(RuntimeError):
        failing({}, None)
    found = json.loads(out.getvalue())
    assert found["RefusedCondition"] == 1 and found["FunctionName"] == "failing"
    metrics.RECORDER.reset()
    metrics.RECORDER.keep_samples = False
