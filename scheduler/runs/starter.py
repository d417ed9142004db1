"""Starting runs exactly once per attempt, and turning their results into transitions."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Sequence

from scheduler.db.models import JobModel
from scheduler.db.store import (
    Clock,
    HandOff,
    JobState,
    JobStore,
    Outcome,
    RunClaimed,
    system_clock,
)
from scheduler.errors import HandOffRefused, JobNotFound, RunAlreadyClaimed
from scheduler.runs.executor import (
    UNCLAIMED,
    ClaimResult,
    Executor,
    RunClaim,
    RunRequest,
    RunResult,
    Source,
    StartRefused,
)
from scheduler.runs.queue_heads import QueueHeads
from scheduler.runs.reservations import Reservations
from state_machines import START_FAILED, TIMED_OUT, JobStatus, TransitionConflict, Trigger

log = logging.getLogger(__name__)

CommandFor = Callable[[str], Sequence[str]]
"""The configured argv of a repository (``owner/name``)."""
SourceFor = Callable[[str], Source]
"""Whether (and from where) a repository's runs check out their commit."""
SlotLimitFor = Callable[[str], int]
"""A repository's configured concurrency (its slot limit)."""

STOPPED = "stopped"
"""Failure reason of a run stopped outside the scheduler (a build stopped from the console)."""

DETAIL_CHARS = 300


def outcome_of(result: RunResult) -> tuple[Trigger, Outcome]:
    """The transition a run result asks for (pure)."""
    if result.passed:
        return Trigger.PASS, Outcome(detail=result.summary or None, exit_code=0)
    if result.reason is not None:
        return Trigger.FAIL, Outcome(reason=result.reason, detail=result.summary or None)
    if result.timed_out:
        # The run reports its own timeout: it ended, so its slot is free now (the reaper's
        # TIME_OUT is for a run that may still go, and keeps the slot until it is stopped).
        return Trigger.FAIL, Outcome(reason=TIMED_OUT, detail=result.summary or None)
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
        source_for: SourceFor | None = None,
        hand_off_for: SlotLimitFor | None = None,
        reservations: Reservations | None = None,
        actor: str = "executor",
        clock: Clock = system_clock,
    ) -> None:
        """``hand_off_for`` (a runtime whose activations claim runs for this runner): a
        finish hands its slot to the head of its repository's queue in its own write; the job
        it hands on is held in ``reservations`` (shared with the dispatcher's promotions)
        while the write is in flight. A hand-off proves nothing about the other slots (the
        head may be a job whose own record has yet to activate it into a free one), so it
        never marks the repository full (:mod:`scheduler.stream.full_repos`)."""
        self._store = store
        self.executor = executor
        self._command_for = command_for
        self._source_for = source_for or (lambda _repo: Source(checkout=False, sandbox=False))
        self._hand_off = (
            (QueueHeads(store.reads, reservations=reservations, clock=clock), hand_off_for)
            if hand_off_for
            else None
        )
        self._actor = actor
        self._clock = clock

    def start(self, job: JobModel, delay_ms: int = 0) -> str | None:
        """Start (or queue) the run of an active job; its key is claimed right before it starts.

        ``delay_ms`` is an automatic retry's backoff (decided with the transition). Returns the
        run id, or None when the key was claimed already or the run could not be started (the
        attempt then fails as ``start_failed``, which is retried automatically).
        """
        request = self.request_for(job, delay_ms)
        state = JobState.from_model(job)
        claim = RunClaim(lambda resumable_for_ms: self._claim(state, request, resumable_for_ms))
        try:
            run_id = self.executor.start(request, claim)
        except StartRefused as exc:
            self._start_failed(request, exc)
            return None
        if run_id is not None and run_id != request.idempotency_key:
            self._record(request, run_id)
        return run_id

    def claim_for(self, job: JobModel) -> RunClaimed:
        """The claim of ``job``'s current attempt by this runner, for its activation to write
        (:meth:`JobStore.activate`): the run id and the log location, which names the runner
        (its folder). :meth:`start_claimed` then starts it, with no write before the run."""
        return self._claim_of(self.request_for(job))

    def _claim_of(self, request: RunRequest) -> RunClaimed:
        return RunClaimed(request.idempotency_key, self.executor.log_location(request))

    def start_claimed(self, job: JobModel, delay_ms: int = 0) -> str | None:
        """Start the run of an active job whose activation claimed it, if the claim names
        this runner; the executor starts an attempt's run at most once however often it is
        asked. Returns the run id, or None when it started nothing (another runner's claim,
        a run that already ran, or a start the executor refused: the attempt then fails as
        ``start_failed``)."""
        request = self.request_for(job, delay_ms)
        mine = self._claim_of(request)
        if (job.run_id, job.log_location) != (mine.run_id, mine.log_location):
            log.info("run claimed by another runner", extra={"job_id": job.job_id})
            return None
        activated_at = int(job.activated_at) if job.activated_at is not None else None
        return self._start_claimed_here(request, activated_at)

    def owns_claim(self, job: JobModel) -> bool:
        """Whether ``job``'s claim names this runner (its run id and its log location, which
        names the runner's folder): a claim naming another folder (the stack restarted from
        elsewhere) can never be started here."""
        mine = self._claim_of(self.request_for(job))
        return (job.run_id, job.log_location) == (mine.run_id, mine.log_location)

    def _start_claimed_here(self, request: RunRequest, activated_at: int | None) -> str | None:
        """Start a run this runner's claim names.

        The executor never runs an attempt twice. If it ran this one and the run ended before
        this activation (``activated_at``) was made, the activation's first write was lost
        with DynamoDB Local and made again: the run's report could not finish it, so the
        outcome the executor kept is reported now, as the run ended.
        """
        try:
            run_id = self.executor.start(request, UNCLAIMED)
        except StartRefused as exc:
            self._start_failed(request, exc)
            return None
        if run_id is None and activated_at is not None:
            ran = self.executor.result_of(request.idempotency_key)
            if ran is not None and ran.ended_at is not None and ran.ended_at < activated_at:
                log.warning(
                    "outcome of a run that ended before its activation reported again",
                    extra={"job_id": request.job_id, "attempt": request.attempt},
                )
                self.finished(ran)
        return run_id

    def request_for(self, job: JobModel, delay_ms: int = 0) -> RunRequest:
        """The run of ``job``'s current attempt, as its repository's configuration says."""
        return RunRequest.from_job(
            job, self._command_for(job.repo), delay_ms / 1000, self._source_for(job.repo)
        )

    def _record(self, request: RunRequest, run_id: str) -> None:
        """Keep the run id the executor named itself (a CodeBuild build id), for cancels and
        the reaper; stop the run if its attempt ended while it was being started.

        A cancel, a timeout or a retry that landed between the claim and the executor's
        answer could only name the claim, not this run: nobody else would ever stop it, and
        its slot is handed on already.
        """
        try:
            # Refused: another starter of this attempt (the reaper's restart, a late record)
            # resumed the same claim with the same token and may have recorded the same run
            # first; the job says whose run it is.
            with contextlib.suppress(RunAlreadyClaimed):
                self._store.record_run_id(
                    request.job_id, request.attempt, request.idempotency_key, run_id
                )
            job = self._store.get(request.job_id)
            current = (
                job.status == JobStatus.ACTIVE.value
                and int(job.attempt) == request.attempt
                and job.run_id == run_id
            )
        except JobNotFound:
            current = False
        if current:
            return
        log.warning(
            "the attempt ended while its run started: stopping the run",
            extra={"job_id": request.job_id, "attempt": request.attempt, "run_id": run_id},
        )
        try:
            self.executor.cancel(run_id)
        except Exception:
            log.exception("could not stop the run of an ended attempt", extra={"run_id": run_id})

    def _claim(self, state: JobState, request: RunRequest, resumable_for_ms: int) -> ClaimResult:
        key = request.idempotency_key
        try:
            self._store.claim_run(state, key, self.executor.log_location(request))
        except RunAlreadyClaimed:
            if resumable_for_ms > 0 and self._unfinished_start(request, resumable_for_ms):
                return ClaimResult.CLAIMED_BEFORE_NOT_STARTED
            log.info(
                "run already claimed", extra={"job_id": state.job_id, "attempt": state.attempt}
            )
            return ClaimResult.TAKEN
        return ClaimResult.CLAIMED

    def _unfinished_start(self, request: RunRequest, within_ms: int) -> bool:
        """Whether the attempt's claim stands with no run id of the executor's own, made less
        than ``within_ms`` ago: an earlier start failed between the claim and its answer."""
        try:
            job = self._store.get(request.job_id)
        except JobNotFound:
            return False
        return (
            job.status == JobStatus.ACTIVE.value
            and int(job.attempt) == request.attempt
            and job.run_id == request.idempotency_key
            and job.started_at is not None
            and self._clock() - int(job.started_at) < within_ms
        )

    def _start_failed(self, request: RunRequest, error: StartRefused) -> None:
        """The executor refused the run for good: fail the attempt as ``start_failed`` (an
        infrastructure failure, retried automatically) rather than leave it to its deadline."""
        log.warning(
            "run could not be started: %s",
            error,
            extra={"job_id": request.job_id, "attempt": request.attempt},
        )
        outcome = Outcome(reason=START_FAILED, detail=str(error)[:DETAIL_CHARS])
        try:
            self._store.finish_run(
                request.job_id,
                request.repo,
                request.attempt,
                Trigger.FAIL,
                actor=self._actor,
                outcome=outcome,
            )
        except (TransitionConflict, JobNotFound):
            log.info("start failure moot: the attempt moved on", extra={"job_id": request.job_id})

    def finished(self, result: RunResult) -> JobStatus | None:
        """Report a run's result: the job's new status, or None when the report is moot (late,
        duplicate, cancelled).

        A run is stopped by the scheduler only after its job left ``active`` (a cancel, a
        timeout), so a stopped run's report is moot then. A run that stopped while its attempt
        is still active was stopped from outside (a build stopped from the console): the job
        fails now, as ``stopped``, instead of waiting for its deadline.
        """
        trigger, outcome = outcome_of(result)
        if trigger is Trigger.CANCEL:
            trigger = Trigger.FAIL
            detail = "stopped outside the scheduler" + (
                f" ({result.summary})" if result.summary else ""
            )
            outcome = Outcome(reason=STOPPED, detail=detail[:DETAIL_CHARS])
        try:
            if result.repo is None:
                done = self._store.report(
                    result.job_id, result.attempt, trigger, actor=self._actor, outcome=outcome
                ).status
            else:
                done = self._finish(result, result.repo, trigger, outcome)
        except (TransitionConflict, JobNotFound):
            return None
        log.info(
            "run finished",
            extra={"job_id": result.job_id, "attempt": result.attempt, "status": done},
        )
        return done

    def _finish(
        self, result: RunResult, repo: str, trigger: Trigger, outcome: Outcome
    ) -> JobStatus:
        """The finish, handing the slot to the head of the queue when there is one; if that
        job moved meanwhile (a promotion, a cancel), the finish is made on its own and its
        record promotes the queue as usual."""
        finish = functools.partial(
            self._store.finish_run,
            result.job_id,
            repo,
            result.attempt,
            trigger,
            actor=self._actor,
            outcome=outcome,
            started_at=result.started_at,
        )
        if self._hand_off is None:
            return finish()
        heads, slot_limit_for = self._hand_off
        head = heads.take(repo, finishing=result.job_id)
        if head is None:
            return finish()
        queued = head.job
        try:
            state = JobState.from_model(queued)
            request = self.request_for(queued, state.start_delay_ms)
            claim = self._claim_of(request)
            done: JobStatus | None = finish(hand_off=HandOff(state, claim, slot_limit_for(repo)))
        except HandOffRefused:
            done = None
        finally:
            heads.settled(queued.job_id)  # before a lone finish: others may take it
        if done is None:
            log.info("slot not handed on: the queue moved", extra={"job_id": result.job_id})
            heads.forget(repo)
            return finish()
        # Started at once, not one stream round trip later: its record's start finds it
        # started. Were the write lost with DynamoDB Local, the job is made active again
        # with the same claim, and the executor never runs the attempt twice.
        try:
            self._start_claimed_here(request, self._clock())
        except Exception:
            log.exception(
                "handed-on run not started: its record starts it", extra={"run_id": claim.run_id}
            )
        return done

    def settle(self, job: JobModel) -> bool:
        """Report how the job's current run ended, if its executor can tell (the run's own
        report was lost, e.g. a CodeBuild completion event): asked by the reaper before it
        times a run out.

        True if the run had ended (its result is reported now, or moot as the job moved on);
        False while it runs, or when the executor cannot tell.
        """
        if job.run_id is None:
            return False
        result = self.executor.result_of(job.run_id)
        if result is None or (result.job_id, result.attempt) != (job.job_id, int(job.attempt)):
            return False
        self.finished(result)
        return True
