"""Starting runs exactly once per attempt, and turning their results into transitions."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from scheduler.db.models import JobModel
from scheduler.db.store import JobState, JobStore, Outcome
from scheduler.runs.executor import Executor, RunRequest, RunResult
from scheduler.stream.dispatcher import RETRY_ACTOR
from state_machines import TIMED_OUT, JobStatus, Trigger

log = logging.getLogger(__name__)

CommandFor = Callable[[str], Sequence[str]]
"""The configured argv of a repository (``owner/name``)."""

DelayFor = Callable[[str, int], float]
"""Backoff before the run of (repository, attempt) when the attempt is an automatic retry."""


def outcome_of(result: RunResult) -> tuple[Trigger, Outcome]:
    """The transition a run result asks for (pure)."""
    if result.passed:
        return Trigger.PASS, Outcome(detail=result.summary or None, exit_code=0)
    if result.timed_out:
        return Trigger.TIME_OUT, Outcome(reason=TIMED_OUT, detail=result.summary or None)
    if result.cancelled:
        return Trigger.CANCEL, Outcome(reason="cancelled", detail=result.summary or None)
    reason = "exit_code" if result.exit_code is not None else "error"
    return Trigger.FAIL, Outcome(reason=reason, detail=result.summary, exit_code=result.exit_code)


class RunStarter:
    def __init__(
        self,
        store: JobStore,
        executor: Executor,
        command_for: CommandFor,
        *,
        delay_for: DelayFor = lambda _repo, _attempt: 0.0,
        actor: str = "executor",
    ) -> None:
        self._store = store
        self._executor = executor
        self._command_for = command_for
        self._delay_for = delay_for
        self._actor = actor

    def start(self, job: JobModel) -> str | None:
        """Start (or queue) the run of an active job; its key is claimed right before it starts.

        Returns the run id, or None when the executor found the key claimed already.
        """
        delay = self._delay_for(job.repo, int(job.attempt)) if _retried_by_policy(job) else 0.0
        request = RunRequest.from_job(job, self._command_for(job.repo), delay)
        state = JobState.from_model(job)

        def claim() -> bool:
            log_location = self._executor.log_location(request)
            if self._store.claim_run(state, request.idempotency_key, log_location):
                return True
            log.info("run already claimed", extra={"job_id": job.job_id, "attempt": job.attempt})
            return False

        run_id = self._executor.start(request, claim)
        if run_id is not None and run_id != request.idempotency_key:
            # The executor named the run itself (a CodeBuild build id): keep it for cancels.
            self._store.record_run_id(job.job_id, request.attempt, request.idempotency_key, run_id)
        return run_id

    def finished(self, result: RunResult) -> JobState | None:
        """Report a run's result; late or duplicate reports change nothing."""
        trigger, outcome = outcome_of(result)
        if trigger is Trigger.CANCEL:
            return None  # the cancel transition already happened; it is why the run stopped
        done = self._store.report(
            result.job_id, result.attempt, trigger, actor=self._actor, outcome=outcome
        )
        if done is not None and done.status is not JobStatus.ACTIVE:
            log.info(
                "run finished",
                extra={"job_id": result.job_id, "attempt": result.attempt, "status": done.status},
            )
        return done


def _retried_by_policy(job: JobModel) -> bool:
    """Whether this attempt was queued by the automatic retry policy (not by an operator)."""
    queued = [entry for entry in job.history or [] if entry.dest == JobStatus.PENDING.value]
    return bool(queued) and queued[-1].actor == RETRY_ACTOR
