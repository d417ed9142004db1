"""A delivery's job becomes a pipeline run, and a run moves on as its steps end.

The stream calls three things here, each safe to repeat and to race:

- :meth:`PipelineDriver.expand`, for a job whose pipeline is owed (its repository honours the
  commit's file), instead of its first activation. The file is read through the runtime's
  :class:`~scheduler.pipelines.PipelineFileReader`: no file, and the job runs as its one step
  (activated as before, nothing written more); a file, and its steps are made (blocked), then
  the run moves ``pending -> active`` (``expand``: no slot, no deadline) and its first fan-in
  queues the steps without needs; a bad file, and the run fails at once (``refuse``, reason
  ``pipeline_invalid``, the file's line in the detail) with no step made. A file that cannot
  be read now leaves the job as it is, owed: the promotion of its repository (the sweeper's,
  every reconciliation round) asks again, and gives up with ``pipeline_unavailable`` after
  :data:`PATIENCE_MS` (or the job's timeout, if shorter).
- :meth:`PipelineDriver.settle`, when a step ended for good (or the run was expanded or
  cancelled, or the reconciliation finds a run that may owe one): the fan-in, and the run's
  end (``passed`` when every step passed or was skipped) once every step ended. A cancelled
  run's steps are cancelled instead (each step's own cancel stops its run and frees its slot).

The steps are made blocked and only queued by a fan-in of an active run, so a run cancelled
at any point between its expansion's writes never starts one.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from functools import cached_property

from scheduler.config import RepoPolicy
from scheduler.db.models import JobModel
from scheduler.db.store import Clock, JobState, JobStore, Outcome, system_clock
from scheduler.errors import PipelineFileError, PipelineUnavailable
from scheduler.pipelines import CommitRef, PipelineFileReader, pipeline_for
from scheduler.runs.pipeline_runs import PipelineRuns
from state_machines import (
    PIPELINE_INVALID,
    PIPELINE_UNAVAILABLE,
    STEPS_FAILED,
    InvalidTransition,
    JobStatus,
    TransitionConflict,
    Trigger,
)

__all__ = ["ACTOR", "PipelineDriver"]

log = logging.getLogger(__name__)

ACTOR = "pipeline"

PolicyFor = Callable[[str], RepoPolicy]

PATIENCE_MS = 10 * 60_000
"""How long a pipeline file that cannot be read (GitHub or the remote out of reach) is asked
for again before its run fails as ``pipeline_unavailable`` (at most the job's timeout)."""


class PipelineDriver:
    """Expands pipeline runs and settles them, through the store's guarded writes."""

    def __init__(
        self,
        store: JobStore,
        reader: Callable[[], PipelineFileReader],
        policy_for: PolicyFor,
        *,
        clock: Clock = system_clock,
    ) -> None:
        """``reader`` makes the runtime's file reader when a file is first read (GitHub's
        client is not loaded by a process that never reads one)."""
        self._store = store
        self._runs = PipelineRuns(store, actor=ACTOR)
        self._make_reader = reader
        self._policy_for = policy_for
        self._clock = clock

    @cached_property
    def _reader(self) -> PipelineFileReader:
        return self._make_reader()

    def expand(self, image: JobModel) -> str:
        """Read the pipeline of an owed job (``image``, pending) and act on it.

        Returns ``config`` (no file: the caller activates it as its one step), ``expanded``,
        ``refused``, ``unavailable`` (asked again later) or ``already_done`` (it moved).
        """
        job = JobState.from_model(image)
        policy = self._policy_for(image.repo)
        commit = CommitRef(image.repo, image.sha, policy.clone_url or image.clone_url)
        try:
            pipeline = pipeline_for(policy, commit, self._reader)
        except PipelineFileError as exc:
            return self._refuse(job, Outcome(reason=PIPELINE_INVALID, detail=str(exc)))
        except PipelineUnavailable as exc:
            waited_ms = self._clock() - int(image.received_at)
            if waited_ms > min(int(image.timeout_seconds) * 1000, PATIENCE_MS):
                return self._refuse(job, Outcome(reason=PIPELINE_UNAVAILABLE, detail=str(exc)))
            log.warning("pipeline file unavailable", extra={"job_id": job.job_id, "why": str(exc)})
            return "unavailable"
        if pipeline.source == "config":
            return "config"
        try:
            made = self._runs.fan_out(image, pipeline)
            self._store.transition(job, Trigger.EXPAND, actor=ACTOR)
        except (TransitionConflict, InvalidTransition):
            return "already_done"  # expanded elsewhere, or cancelled: its steps stay blocked
        log.info("pipeline expanded", extra={"job_id": job.job_id, "steps": len(made)})
        self.settle(job.job_id)  # the roots queue now, not one stream record later
        return "expanded"

    def settle(self, run_id: str) -> str:
        """The run's fan-in and, once every step ended, its end; a cancelled run's steps are
        cancelled. Returns what it found: ``running``, ``passed``, ``failed``, ``ended``,
        ``cancelled`` or ``already_done``."""
        run = self._store.get(run_id)
        status = JobStatus(run.status)
        if run.step_count is None:
            return "ended"  # not a pipeline run (refused, or its one step was the job)
        if status is JobStatus.CANCELLED:
            if self._cancel_steps(run) and run.deadline_shard is not None:
                with contextlib.suppress(TransitionConflict):
                    self._store.leave_runs(run_id)  # nothing owed any more
            return "cancelled"
        if status is not JobStatus.ACTIVE:
            return "ended"
        fan_in = self._runs.fan_in(run)
        if fan_in.verdict == "running":
            return "running"
        passed = fan_in.verdict == "passed"
        outcome = (
            Outcome()
            if passed
            else Outcome(reason=STEPS_FAILED, detail="failed: " + ", ".join(fan_in.failed))
        )
        try:
            self._store.transition(
                JobState.from_model(run),
                Trigger.PASS if passed else Trigger.FAIL,
                actor=ACTOR,
                outcome=outcome,
            )
        except TransitionConflict:
            return "already_done"  # another step's fan-in ended it first
        log.info("pipeline ended", extra={"job_id": run_id, "verdict": fan_in.verdict})
        return fan_in.verdict

    def _cancel_steps(self, run: JobModel) -> bool:
        """Cancel the run's steps that have not ended; whether every step has ended now."""
        reason = run.reason or "cancelled"
        ended = True
        for step in self._runs.steps(run.job_id, int(run.step_count or 0)):
            if JobStatus(step.status).is_terminal:
                continue
            try:
                self._store.transition(
                    JobState.from_model(step),
                    Trigger.CANCEL,
                    actor=ACTOR,
                    outcome=Outcome(reason=reason, detail=f"its pipeline run was {reason}"),
                )
            except TransitionConflict:
                ended = False  # it moved since it was read: the next settle sees it again
        return ended

    def _refuse(self, job: JobState, outcome: Outcome) -> str:
        try:
            self._store.transition(job, Trigger.REFUSE, actor=ACTOR, outcome=outcome)
        except TransitionConflict:
            return "already_done"
        log.info("pipeline refused", extra={"job_id": job.job_id, "detail": outcome.detail})
        return "refused"
