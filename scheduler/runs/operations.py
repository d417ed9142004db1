"""Operator use cases: retry a failed job, retry all failed jobs of a repository, cancel a job,
approve a fork's pull request waiting for approval, re-run a pipeline run's failed steps or one
step (and what follows them: see :meth:`PipelineRuns.rerun`).

Each one reads the job consistently and carries out one conditional transition through
:class:`JobStore`, so racing operators (or an operator racing the stream processor) cannot
start a second attempt: the loser gets :class:`TransitionConflict` or, if it read after the
winner wrote, :class:`InvalidTransition`. Both are refusals (exit 1), never a second write.

Cancelling an active job is only the transition ``active -> cancelled`` (its slot is freed
in the same transaction). Stopping the run is the executor's part: it reacts to that
transition on the stream, like every other action, so nothing here has to change for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from scheduler.db.models import JobModel
from scheduler.db.queries import JobFilter, Queries, validate_job_id, validate_repo
from scheduler.db.store import JobState, JobStore, Outcome, StoreContended
from scheduler.errors import JobNotFound, RerunRefused
from scheduler.pipelines import ENDED_STATUSES
from scheduler.runs.pipeline_runs import PipelineRuns, Rerun, status_label, step_status
from state_machines import InvalidTransition, JobStatus, TransitionConflict, Trigger

log = logging.getLogger(__name__)

OPERATOR = "operator"
# A failed run's steps that run again, with everything downstream of them (blocked: left by
# a re-run cut short).
_RERUN_ROOTS = ("failed", "cancelled", "blocked")
CANCEL_REASON = "cancelled_by_operator"


@dataclass(frozen=True, slots=True)
class Changed:
    """What an operator's transition did to one job."""

    job_id: str
    repo: str
    previous_status: str
    status: str
    attempt: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "repo": self.repo,
            "previous_status": self.previous_status,
            "status": self.status,
            "attempt": self.attempt,
        }


class BulkOutcome(StrEnum):
    RETRIED = "retried"
    SKIPPED = "skipped"  # not failed any more when we got to it: nothing to do
    REFUSED = "refused"  # the store refused the write (a racing change, or unavailable)


@dataclass(frozen=True, slots=True)
class BulkItem:
    job_id: str
    outcome: BulkOutcome
    reason: str | None = None
    attempt: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "outcome": self.outcome.value,
            "reason": self.reason,
            "attempt": self.attempt,
        }


@dataclass
class RetrySummary:
    repo: str
    since: int | None
    items: list[BulkItem] = field(default_factory=list)

    def count(self, outcome: BulkOutcome) -> int:
        return sum(1 for item in self.items if item.outcome is outcome)

    @property
    def retried(self) -> int:
        return self.count(BulkOutcome.RETRIED)

    @property
    def skipped(self) -> int:
        return self.count(BulkOutcome.SKIPPED)

    @property
    def refused(self) -> int:
        return self.count(BulkOutcome.REFUSED)

    def to_dict(self) -> dict[str, Any]:
        return {
            "repo": self.repo,
            "since": self.since,
            "retried": self.retried,
            "skipped": self.skipped,
            "refused": self.refused,
            "jobs": [item.to_dict() for item in self.items],
        }


class Operations:
    def __init__(self, store: JobStore, queries: Queries, *, actor: str = OPERATOR) -> None:
        self._store = store
        self._queries = queries
        self._actor = actor

    def _move(self, job: JobState, trigger: Trigger, outcome: Outcome | None = None) -> Changed:
        # Neither retry, approve nor cancel takes a slot: a full repository is no answer.
        moved = self._store.transition(job, trigger, actor=self._actor, outcome=outcome)
        return Changed(
            job_id=job.job_id,
            repo=job.repo,
            previous_status=job.status.value,
            status=moved.status.value,
            attempt=moved.attempt,
        )

    def retry(self, job_id: str) -> Changed | Rerun:
        """``failed | cancelled -> pending`` with attempt + 1; refused (exit 1) otherwise, or
        while a cancelled run is still being stopped (its slot not yet freed).

        A pipeline's step is re-run with what follows it (:meth:`retry_step`); a pipeline
        run is refused (:class:`RerunRefused`): its failed steps are re-run by
        :meth:`retry_failed_steps`.
        """
        job = self._store.get(validate_job_id(job_id))
        if job.run_of is not None:
            return self._retry_step(job)
        if job.step_count is not None:
            raise RerunRefused(
                job.job_id,
                f"a pipeline run: `scheduler retry {job.job_id} --failed` re-runs its failed"
                " steps, `scheduler retry STEP_ID` one step (and what follows them)",
            )
        return self._move(JobState.from_model(job), Trigger.RETRY)

    def rerun(self, job_id: str) -> Changed | Rerun:
        """What a retry button does: a pipeline run's failed steps, else :meth:`retry`."""
        job = self._store.get(validate_job_id(job_id))
        if job.step_count is not None:
            return self.retry_failed_steps(job_id)
        return self.retry(job_id)

    def retry_failed_steps(self, run_id: str) -> Rerun:
        """Re-run the failed and cancelled steps of a failed (or cancelled) pipeline run and
        everything downstream of them (new attempts); the steps that passed apart from them
        keep their result, and the run runs again (a new attempt of it). Safe to repeat and
        to race: each step is reset once, the run re-run once; a second call finds the run
        running and is refused (exit 1). Refused too for a job that is no pipeline run."""
        run = self._store.get(validate_job_id(run_id))
        if run.step_count is None:
            what = "a pipeline's step" if run.run_of is not None else "not a pipeline run"
            raise RerunRefused(
                run.job_id, f"{what}: `scheduler retry {run.job_id}` (without --failed) retries it"
            )
        if run.status not in (JobStatus.FAILED.value, JobStatus.CANCELLED.value):
            raise RerunRefused(
                run.job_id, f"the pipeline run is {run.status}, not failed: nothing to re-run"
            )
        runs = PipelineRuns(self._store, actor=self._actor)
        steps = runs.steps(run.job_id, int(run.step_count))
        statuses = {str(step.step_key): step_status(step) for step in steps}
        # A cancelled run's steps are cancelled by its settle: re-run once they all ended.
        running = [key for key, status in statuses.items() if status in ("pending", "active")]
        if running:
            raise RerunRefused(
                run.job_id, f"step {running[0]} is still {statuses[running[0]]}: try again soon"
            )
        # Blocked steps of an ended run belong to a re-run cut short: they run again too.
        roots = [key for key, status in statuses.items() if status in _RERUN_ROOTS]
        if not roots:
            raise RerunRefused(run.job_id, "no step of it failed or was cancelled")
        return runs.rerun(run, roots)

    def _retry_step(self, step: JobModel) -> Rerun:
        """Re-run one ended step of a pipeline run and everything downstream of it."""
        if step_status(step) not in ENDED_STATUSES:
            raise RerunRefused(
                step.job_id, f"the step is {status_label(step)}: only an ended step is re-run"
            )
        run = self._store.get(str(step.run_of))
        runs = PipelineRuns(self._store, actor=self._actor)
        return runs.rerun(run, [str(step.step_key)], asked=step.job_id)

    def approve(self, job_id: str) -> Changed:
        """``waiting -> pending``: a fork's pull request joins the queue (its run then starts
        like any other's). Refused (exit 1) unless the job is waiting: of two operators who
        approve at once, one wins and the other gets :class:`TransitionConflict` (or
        :class:`InvalidTransition` if it read the job after the first approval)."""
        job = self._store.state(validate_job_id(job_id))
        return self._move(job, Trigger.APPROVE)

    def cancel(self, job_id: str) -> Changed:
        """``waiting | pending | active -> cancelled``; refused (exit 1) for a finished job."""
        job = self._store.state(validate_job_id(job_id))
        return self._move(job, Trigger.CANCEL, Outcome(reason=CANCEL_REASON))

    def failed_jobs(self, repo: str, *, since: int | None = None) -> list[str]:
        """Ids of the failed jobs of ``repo`` (finished at or after ``since``), newest first."""
        job_filter = JobFilter(status=JobStatus.FAILED, finished_since=since)
        return [job.job_id for job in self._queries.iter_jobs(validate_repo(repo), job_filter)]

    def retry_all_failed(
        self,
        repo: str,
        *,
        since: int | None = None,
        on_listed: Callable[[int], None] | None = None,
        on_item: Callable[[BulkItem], None] | None = None,
    ) -> RetrySummary:
        """Retry every failed job of ``repo``; safe to run twice, or twice at once. A failed
        pipeline run has its failed steps re-run; its failed steps are skipped (the run's
        re-run covers them).

        The list comes from the (eventually consistent) index; each job is then read
        consistently and retried with its own conditional write. A job that is no longer
        failed is skipped (a second run finds only skips); a lost race is refused.
        """
        job_ids = self.failed_jobs(repo, since=since)
        if on_listed:
            on_listed(len(job_ids))
        summary = RetrySummary(repo=repo, since=since)
        for job_id in job_ids:
            item = self._retry_one(job_id)
            summary.items.append(item)
            if on_item:
                on_item(item)
        log.info(
            "bulk retry done",
            extra={
                "repo": repo,
                "retried": summary.retried,
                "skipped": summary.skipped,
                "refused": summary.refused,
            },
        )
        return summary

    def _retry_one(self, job_id: str) -> BulkItem:
        try:
            job = self._store.get(job_id)
        except JobNotFound:
            return BulkItem(job_id, BulkOutcome.SKIPPED, "no longer exists")
        if job.status != JobStatus.FAILED.value:
            return BulkItem(job_id, BulkOutcome.SKIPPED, f"is {job.status} now")
        if job.run_of is not None:
            # A pipeline's failed step is re-run by its run's re-run (with what follows it).
            return BulkItem(job_id, BulkOutcome.SKIPPED, f"a step of pipeline run {job.run_of}")
        try:
            if job.step_count is not None:  # a pipeline run: its failed steps
                attempt = self.retry_failed_steps(job_id).attempt
            else:
                attempt = self._move(JobState.from_model(job), Trigger.RETRY).attempt
        except (TransitionConflict, InvalidTransition, StoreContended, RerunRefused) as exc:
            # Per-job refusals; an unreachable store (StoreUnavailable) aborts the whole run.
            return BulkItem(job_id, BulkOutcome.REFUSED, str(exc))
        return BulkItem(job_id, BulkOutcome.RETRIED, attempt=attempt)


__all__ = ["BulkItem", "BulkOutcome", "Changed", "Operations", "RetrySummary"]
