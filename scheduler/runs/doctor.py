"""``scheduler doctor``: compares every repository's counters with its jobs, and finds strandings.

The counters move in the same transactions as the jobs they count, so any difference is a
defect (or an item edited by hand); so is a concurrency group with two jobs holding slots.
Strandings are what the stream and the reconciliation should have settled by now, each older
than ``stranded_after_ms``:

- a queued job while its repository has a free slot (a lost promotion the sweep missed), unless
  another job of its concurrency group holds a slot;
- a finished job still holding a slot (a cancelled run whose stop is not confirmed);
- an active job past its deadline (the reaper did not judge it).

Reads: one scan of the repos table (one item per repository) and one ``by_repo`` query per
repository, never a scan of the jobs table. A repository busy while it is read (its counters
changed between the reads before and after its jobs) is read again, so a live system is not
reported for the moves it makes meanwhile.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from scheduler.db.models import JobModel, RepoModel, count_attribute, holds_slot
from scheduler.db.queries import Queries
from state_machines import JobStatus

__all__ = ["Diagnosis", "Doctor", "Drift", "Stranded", "examine"]

log = logging.getLogger(__name__)

QUEUED_WITH_FREE_SLOT = "queued_with_free_slot"
HOLDS_SLOT_AFTER_FINISH = "holds_slot_after_finish"
PAST_DEADLINE = "past_deadline"
GROUP_COUNTER = "group:"  # a drift's counter for a concurrency group: "group:<name>"


@dataclass(frozen=True, slots=True)
class Drift:
    """A counter of ``repo`` that differs from the jobs it counts."""

    repo: str
    counter: str  # "running" or "n_<status>"
    recorded: int
    actual: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "repo": self.repo,
            "counter": self.counter,
            "recorded": self.recorded,
            "actual": self.actual,
        }


@dataclass(frozen=True, slots=True)
class Stranded:
    """A job that waits for something nothing is doing, since ``since`` (epoch ms)."""

    job_id: str
    repo: str
    status: str
    problem: str
    since: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "repo": self.repo,
            "status": self.status,
            "problem": self.problem,
            "since": self.since,
        }


@dataclass
class Diagnosis:
    repositories: int = 0
    jobs: int = 0
    drift: list[Drift] = field(default_factory=list)
    stranded: list[Stranded] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)  # never read still: not judged

    @property
    def healthy(self) -> bool:
        return not self.drift and not self.stranded

    def to_dict(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "repositories": self.repositories,
            "jobs": self.jobs,
            "drift": [d.to_dict() for d in self.drift],
            "stranded": [s.to_dict() for s in self.stranded],
            "busy": self.busy,
        }


def _holds_slot(job: JobModel) -> bool:
    if job.step_count is not None:
        return False  # a pipeline run: its steps hold the slots
    return holds_slot(job)


def examine(
    counters: RepoModel, jobs: Iterable[JobModel], now: int, stranded_after_ms: int
) -> tuple[list[Drift], list[Stranded]]:
    """The drift of one repository's counters from its ``jobs``, and its stranded jobs (pure)."""
    repo = counters.repo
    jobs = list(jobs)
    counted: Counter[str] = Counter(job.status for job in jobs)
    drift = []
    for status in JobStatus:
        name = count_attribute(status.value)
        recorded = int(getattr(counters, name) or 0)
        if recorded != counted[status.value]:
            drift.append(Drift(repo, name, recorded, counted[status.value]))
    held = sum(1 for job in jobs if _holds_slot(job))
    recorded_running = int(counters.running or 0)
    if recorded_running != held:
        drift.append(Drift(repo, "running", recorded_running, held))
    # A concurrency group lets one of its jobs hold a slot at a time: more is a defect.
    holding = Counter(job.concurrency_group for job in jobs if _holds_slot(job))
    busy_groups = {group for group in holding if group is not None}
    for group in sorted(busy_groups):
        if holding[group] > 1:
            drift.append(Drift(repo, f"{GROUP_COUNTER}{group}", 1, holding[group]))

    limit = int(counters.slot_limit) if counters.slot_limit is not None else None
    slot_free = limit is None or held < limit
    cutoff = now - stranded_after_ms
    stranded = []
    for job in sorted(jobs, key=lambda j: int(j.received_at)):
        problem, since = None, None
        waits_for_group = job.concurrency_group in busy_groups
        if job.status == JobStatus.PENDING.value and slot_free and not waits_for_group:
            problem, since = QUEUED_WITH_FREE_SLOT, int(job.updated_at or job.received_at)
        elif job.status != JobStatus.ACTIVE.value and _holds_slot(job):
            problem, since = HOLDS_SLOT_AFTER_FINISH, int(job.finished_at or job.updated_at or 0)
        elif (
            job.status == JobStatus.ACTIVE.value
            and job.deadline_at is not None
            and job.step_count is None  # a pipeline run has no deadline of its own
        ):
            problem, since = PAST_DEADLINE, int(job.deadline_at)
        if problem is not None and since is not None and since < cutoff:
            stranded.append(Stranded(job.job_id, repo, str(job.status), problem, since))
    return drift, stranded


class Doctor:
    """Reads every repository's counters and jobs (see the module) and examines them."""

    def __init__(
        self,
        queries: Queries,
        *,
        clock: Callable[[], int],
        stranded_after_ms: int = 300_000,
        attempts: int = 3,
    ) -> None:
        self._queries = queries
        self._clock = clock
        self._stranded_after_ms = stranded_after_ms
        self._attempts = attempts

    def diagnose(self) -> Diagnosis:
        found = Diagnosis()
        for counters in self._queries.counters_items():
            found.repositories += 1
            self._examine_repo(counters, found)
        log.info(
            "diagnosis",
            extra={"healthy": found.healthy, "repositories": found.repositories},
        )
        return found

    def _examine_repo(self, counters: RepoModel | None, found: Diagnosis) -> None:
        repo = counters.repo if counters is not None else ""
        for _ in range(self._attempts):
            if counters is None:
                return  # gone meanwhile
            jobs = list(self._queries.all_jobs(repo))
            after = self._queries.counters_item(repo)
            if after is not None and after.serialize() == counters.serialize():
                drift, stranded = examine(counters, jobs, self._clock(), self._stranded_after_ms)
                found.jobs += len(jobs)
                found.drift += drift
                found.stranded += stranded
                return
            counters = after  # it moved while its jobs were read: read them again
        found.busy.append(repo)
