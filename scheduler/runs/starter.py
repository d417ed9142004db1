"""Starting runs exactly once per attempt, and turning their results into transitions."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from scheduler.db.models import JobModel
from scheduler.db.store import JobState, JobStore, Outcome
from scheduler.errors import JobNotFound, RunAlreadyClaimed
from scheduler.runs.executor import Executor, RunRequest, RunResult
from state_machines import TIMED_OUT, TransitionConflict, Trigger

log = logging.getLogger(__name__)

CommandFor = Callable[[str], Sequence[str]]
"""The configured argv of a repository (``owner/name``)."""


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
        actor: str = "executor",
    ) -> None:
        self._store = store
        self.executor = executor
        self._command_for = command_for
        self._actor = actor

    def start(self, job: JobModel, delay_ms: int = 0) -> str | None:
        """Start (or queue) the run of an active job; its key is claimed right before it starts.

        ``delay_ms`` is an automatic retry's backoff (decided with the transition). Returns the
        run id, or None when the key was claimed already.
        """
        request = RunRequest.from_job(job, self._command_for(job.repo), delay_ms / 1000)
        state = JobState.from_model(job)

        def claim() -> bool:
            log_location = self.executor.log_location(request)
            try:
                self._store.claim_run(state, request.idempotency_key, log_location)
            except RunAlreadyClaimed:
                log.info(
                    "run already claimed", extra={"job_id": job.job_id, "attempt": job.attempt}
                )
                return False
            return True

        run_id = self.executor.start(request, claim)
        if run_id is not None and run_id != request.idempotency_key:
            # The executor named the run itself (a CodeBuild build id): keep it for cancels.
            try:
                self._store.record_run_id(
                    job.job_id, request.attempt, request.idempotency_key, run_id
                )
            except RunAlreadyClaimed:
                log.info("run id not recorded: the attempt moved on", extra={"job_id": job.job_id})
        return run_id

    def finished(self, result: RunResult) -> JobState | None:
        """Report a run's result; None when the report is moot (late, duplicate, cancelled)."""
        trigger, outcome = outcome_of(result)
        if trigger is Trigger.CANCEL:
            return None  # the cancel transition already happened; it is why the run stopped
        try:
            done = self._store.report(
                result.job_id, result.attempt, trigger, actor=self._actor, outcome=outcome
            )
        except (TransitionConflict, JobNotFound):
            return None
        log.info(
            "run finished",
            extra={"job_id": result.job_id, "attempt": result.attempt, "status": done.status},
        )
        return done
