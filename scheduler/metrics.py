"""What the scheduler counts as it works, in one process: the same numbers for both runtimes.

The core records events here (a job entering a status, the wait from queued to started, a
conditional write or transaction refused, how late a stream record was handled); the runtime
decides how they leave the process. ``scheduler up`` renders them, with gauges read at scrape
time (:mod:`scheduler.metrics_gauges`), as Prometheus text at ``GET /metrics``
(:mod:`scheduler.api.metrics_route`); a Lambda function writes what one invocation recorded
as one CloudWatch embedded-metric-format line (:mod:`scheduler.aws.emf`).

Pure Python and thread-safe, with no client library: the Lambda functions import this at cold
start, and only the local route imports ``prometheus_client``. Like :mod:`logging`, one
recorder per process (:data:`RECORDER`): the events happen deep in the core (the store's
refused writes), where threading a collector through every constructor would buy nothing.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scheduler.stream.decide import Transition

__all__ = [
    "LATENCY_BUCKETS",
    "RECORDER",
    "HistogramState",
    "Recorder",
    "Snapshot",
    "observe_transition",
    "refused",
]

# Seconds. A queued job waits from milliseconds (a free slot) to an hour (a long queue).
LATENCY_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)  # fmt: skip
# EMF keeps at most 100 values of a metric per line: samples beyond that are dropped there
# (the Prometheus histogram still counts them).
MAX_SAMPLES = 100

# Names (without the exposition's prefixes and suffixes).
TRANSITIONS = "job_transitions"  # counter, label status: jobs that entered the status here
START_LATENCY = "start_latency_seconds"  # histogram: queued (accepted or retried) -> started
REFUSED = "refused_writes"  # counter, label kind: condition | transaction_conflict
STREAM_LAG = "stream_lag_seconds"  # histogram: a job's write -> its record handled

Labels = tuple[tuple[str, str], ...]


@dataclass
class HistogramState:
    """Cumulative bucket counts (``counts[i]``: values <= ``LATENCY_BUCKETS[i]``; the last is
    +Inf), their sum, and the samples since the last drain (for EMF)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0
    samples: list[float] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[int]:
        running, out = 0, []
        for value in self.counts:
            running += value
            out.append(running)
        return out


@dataclass(frozen=True)
class Snapshot:
    """A copy of the recorder's state (counters by name and labels; histograms by name)."""

    counters: Mapping[tuple[str, Labels], float]
    histograms: Mapping[str, HistogramState]


class Recorder:
    """Counters (with labels) and histograms (without), cumulative since the process started.

    ``drain`` hands out what was recorded since the previous drain (counter increments and
    histogram samples): what a Lambda invocation reports. Samples are kept only while
    ``keep_samples`` is on (the Lambda functions turn it on), so a long-running local stack
    holds none.
    """

    def __init__(self, *, keep_samples: bool = False) -> None:
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, Labels], float] = {}
        self._drained: dict[tuple[str, Labels], float] = {}
        self._histograms: dict[str, HistogramState] = {}
        self.keep_samples = keep_samples

    def count(self, name: str, amount: float = 1.0, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._counters[key] = self._counters.get(key, 0.0) + amount

    def observe(self, name: str, value: float) -> None:
        value = max(0.0, value)
        with self._lock:
            state = self._histograms.setdefault(name, HistogramState())
            state.counts[bisect.bisect_left(LATENCY_BUCKETS, value)] += 1
            state.total += value
            if self.keep_samples and len(state.samples) < MAX_SAMPLES:
                state.samples.append(value)

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(
                dict(self._counters),
                {
                    name: HistogramState(list(h.counts), h.total, list(h.samples))
                    for name, h in self._histograms.items()
                },
            )

    def drain(self) -> tuple[dict[tuple[str, Labels], float], dict[str, list[float]]]:
        """Counter increments and histogram samples since the last drain."""
        with self._lock:
            deltas = {
                key: value - self._drained.get(key, 0.0)
                for key, value in self._counters.items()
                if value != self._drained.get(key, 0.0)
            }
            self._drained = dict(self._counters)
            samples = {name: h.samples for name, h in self._histograms.items() if h.samples}
            for h in self._histograms.values():
                h.samples = []
        return deltas, samples

    def reset(self) -> None:
        """Forget everything (tests)."""
        with self._lock:
            self._counters.clear()
            self._drained.clear()
            self._histograms.clear()


RECORDER = Recorder()


def refused(kind: str, recorder: Recorder = RECORDER) -> None:
    """A conditional write or transaction the database refused: ``condition`` (the item moved:
    a lost race, a duplicate record) or ``transaction_conflict`` (another transaction held an
    item; retried)."""
    recorder.count(REFUSED, kind=kind)


def queued_since(history: Iterable[tuple[str, int]], received_at: int) -> int:
    """When the job last joined the queue (epoch ms): its last entry into ``pending`` (a retry,
    an approval), else its arrival."""
    since = received_at
    for dest, at in history:
        if dest == "pending":
            since = at
    return since


def observe_transition(
    transition: Transition,
    *,
    recorder: Recorder = RECORDER,
    now: Callable[[], float] = time.time,
) -> None:
    """A dispatcher observer: counts the job's new status, and on ``pending -> active`` how
    long it waited; for every record handled, how long after its write."""
    image = transition.image
    dest = transition.dest.value
    recorder.count(TRANSITIONS, status=dest)
    updated = image.updated_at if image.updated_at is not None else image.received_at
    recorder.observe(STREAM_LAG, now() - int(updated) / 1000)
    # A pipeline run's expansion is not a start (its steps' activations are).
    if dest == "active" and transition.source is not None and image.step_count is None:
        history = [(entry.dest, int(entry.at)) for entry in image.history or []]
        started = image.activated_at if image.activated_at is not None else updated
        since = queued_since(history[:-1], int(image.received_at))
        recorder.observe(START_LATENCY, (int(started) - since) / 1000)
