"""Keeps active jobs honest: times out runs past their deadline, and finds runs that were lost.

Overdue jobs are found with one query on the sparse ``active_by_deadline`` index (only active
jobs carry its keys, see :meth:`scheduler.db.reads.JobReads.overdue`), never a scan. Before
failing one, the reaper asks the executor what it knows of the run, so that infrastructure is
never blamed on the job:

- a run still waiting for a runner (or for its backoff) is not late: its deadline moves on;
- a run that finished and is still reporting its outcome is left to report it;
- a job whose run was never started here (its start was lost with a previous runner) is
  started again (idempotent: the claim ``job_id#attempt`` stands); so is a claimed run that
  the executor knows it never started (:attr:`RunStatus.UNSTARTED`: a local run claimed by
  its activation that no runner took before the stack died);
- a run that ended but whose report was lost (a CodeBuild completion event, a finish that
  DynamoDB Local lost when it was killed) is reported now, as the executor tells it
  (``settle``), neither timed out nor failed as lost;
- a claimed run this runtime no longer has and cannot tell the end of (lost with a previous
  runner) fails as ``runner_lost``, which is retried automatically; a claim the executor
  never made a run of (a StartBuild that kept failing) fails as ``start_failed``, likewise;
- a run's timeout counts from when it really started, as the executor tells (a runner took
  it; a build left CodeBuild's queue): a build still queued is waiting, not late;
- only a run that really runs past its deadline is ``timed_out`` and stopped; its job keeps
  its slot until the run is known stopped (the timeout's record, or the reconciliation, asks
  the executor and asks again), so the next job never starts beside a build still going.

:meth:`Reaper.recover` applies the same judgement to every active job at once, at start-up
and after the database restarted (writes it lost), so runs lost in a restart are recognised at
once instead of at their deadline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from scheduler.db.models import JobModel
from scheduler.db.store import Clock, JobState, JobStore, Outcome, system_clock
from scheduler.runs.executor import RunStatus
from state_machines import RUNNER_LOST, START_FAILED, TIMED_OUT, GuardRefused, Trigger

__all__ = ["RUNNER_LOST", "Reaper"]

log = logging.getLogger(__name__)

ACTOR = "reaper"

StatusOf = Callable[[str], RunStatus]
"""What the runtime's executor knows of the run of an idempotency key ``job_id#attempt``."""

Restart = Callable[[JobModel, int], object]
"""Starts an active job's run again (the run hook: idempotent by ``job_id#attempt``)."""

StartedAt = Callable[[str], int | None]
"""When the executor's runner took the run of an idempotency key (epoch ms), if it runs."""

OwnsClaim = Callable[[JobModel], bool]
"""Whether an active job's claim names this runner (``RunStarter.owns_claim``)."""

Settle = Callable[[JobModel], bool]
"""Reports how an active job's run ended if the executor can tell (``RunStarter.settle``);
True if it had ended, False while it runs or when the executor cannot tell."""


class Reaper:
    def __init__(
        self,
        store: JobStore,
        *,
        cancel_run: Callable[[str], None] | None = None,
        status_of: StatusOf | None = None,
        restart: Restart | None = None,
        restart_claimed: Restart | None = None,
        settle: Settle | None = None,
        started_at: StartedAt | None = None,
        owns_claim: OwnsClaim | None = None,
        start_grace_seconds: int = 60,
        clock: Clock = system_clock,
        page_size: int = 50,
    ) -> None:
        self._store = store
        self._cancel_run = cancel_run
        self._status_of = status_of
        self._restart = restart
        self._restart_claimed = restart_claimed
        self._settle = settle
        self._started_at = started_at
        self._owns_claim = owns_claim
        self._grace_ms = start_grace_seconds * 1000
        self._clock = clock
        self._page_size = page_size

    def reap_once(self) -> list[str]:
        """Judge every overdue active job; return the ids this call timed out."""
        now = self._clock()
        reaped = []
        for job in self._store.reads.overdue(now, limit=self._page_size):
            if self._judge(job, now, overdue=True) == "timed_out":
                reaped.append(job.job_id)
        return reaped

    def recover(self) -> dict[str, str]:
        """Judge every active job now (at start-up): lost runs are failed, unstarted ones
        started; nothing is timed out early. Returns what was done, by job id."""
        now = self._clock()
        done = {}
        for job in self._store.reads.active():
            verdict = self._judge(job, now, overdue=False)
            if verdict != "left":
                done[job.job_id] = verdict
        return done

    def _judge(self, job: JobModel, now: int, *, overdue: bool) -> str:
        state = JobState.from_model(job)
        key = f"{job.job_id}#{state.attempt}"
        # The executor is asked of the run the job names (a CodeBuild build id once recorded;
        # locally the run id is the key itself), else of the attempt's key.
        run = job.run_id or key
        status = self._status_of(run) if self._status_of is not None else RunStatus.UNKNOWN
        try:
            if status is RunStatus.FINISHING:
                return "left"  # its outcome is on its way: the report decides, not the clock
            if status is RunStatus.WAITING:
                # Waiting for a runner is not the run's time (claimed by its activation or
                # not): the deadline moves on.
                return self._defer(job, state, now) if overdue else "left"
            if job.run_id is None:
                return self._unstarted(job, state, status, now, overdue=overdue)
            if status is RunStatus.UNSTARTED and job.run_id == key and self._restart_claimed:
                if self._owns_claim is not None and not self._owns_claim(job):
                    # The claim names another runner's folder (the stack restarted from
                    # elsewhere): nobody can ever start it, so it is lost with that runner.
                    return self._lost(job, state)
                # Claimed, and never started by the runner that holds the claim's key.
                return self._start_again(job, state, now, self._restart_claimed)
            if status is RunStatus.GONE:
                # It ran here and ended: as it ended, if the executor kept that (its report was
                # lost with the database); else it was lost with its runner.
                return self._settle_or(job, lambda: self._lost(job, state))
            if status is RunStatus.UNSTARTED and job.run_id == key:
                # Claimed, and the executor has no run of it (no build was ever made for the
                # claim): its start kept failing, which is not the job's time running out.
                return self._never_started(job, state)
            if status is RunStatus.UNSTARTED:
                return self._lost(job, state)
            if overdue and status is RunStatus.RUNNING and self._runs_on(job, state, run, now):
                return "deferred"
            if overdue:
                return self._settle_or(job, lambda: self._time_out(job, state))
        except GuardRefused:
            return "moved"  # it finished, was started or judged by somebody else meanwhile
        return "left"

    def _unstarted(
        self, job: JobModel, state: JobState, status: RunStatus, now: int, *, overdue: bool
    ) -> str:
        if self._restart is not None and (
            overdue or status in (RunStatus.GONE, RunStatus.UNSTARTED)
        ):
            # Nobody here is about to start it (its start was lost with a previous runner).
            return self._start_again(job, state, now, self._restart)
        if overdue:
            return self._time_out(job, state)
        return "left"

    def _runs_on(self, job: JobModel, state: JobState, run: str, now: int) -> bool:
        """Whether a run is within its timeout counted from when it really started, as the
        executor tells (a runner took it; a build left CodeBuild's queue), which no write
        marked: then its deadline moves there. A claim's own time (``started_at``) counts
        only when the executor knows no later start."""
        began = self._started_at(run) if self._started_at is not None else None
        if began is None or (job.started_at is not None and began <= int(job.started_at)):
            return False  # it started when it was claimed: the claim set the deadline
        until = began + state.timeout_seconds * 1000 + self._grace_ms
        if now >= until:
            return False
        self._store.defer_deadline(state, until)
        log.info("run within its timeout since it started", extra={"job_id": job.job_id})
        return True

    def _start_again(self, job: JobModel, state: JobState, now: int, start: Restart) -> str:
        """Ask for the run again, with a fresh deadline for the start itself (the deferral's
        version condition keeps a job that moved meanwhile from being started)."""
        self._store.defer_deadline(state, self._later(state, now))
        start(job, state.start_delay_ms)
        log.warning("run started again", extra={"job_id": job.job_id, "attempt": job.attempt})
        return "restarted"

    def _later(self, state: JobState, now: int) -> int:
        """A fresh deadline for a run that has yet to start: its timeout and the grace."""
        return now + state.timeout_seconds * 1000 + self._grace_ms + state.start_delay_ms

    def _defer(self, job: JobModel, state: JobState, now: int) -> str:
        self._store.defer_deadline(state, self._later(state, now))
        log.info("run still waiting for a runner", extra={"job_id": job.job_id})
        return "deferred"

    def _lost(self, job: JobModel, state: JobState) -> str:
        return self._fail(job, state, RUNNER_LOST, "the run was lost with its runner")

    def _never_started(self, job: JobModel, state: JobState) -> str:
        return self._fail(job, state, START_FAILED, "the run's start never succeeded")

    def _fail(self, job: JobModel, state: JobState, reason: str, detail: str) -> str:
        """Fail the attempt for an infrastructure ``reason`` (retried apart from the policy)."""
        self._store.transition(
            state, Trigger.FAIL, actor=ACTOR, outcome=Outcome(reason=reason, detail=detail)
        )
        log.warning(detail, extra={"job_id": job.job_id, "run_id": job.run_id})
        return reason

    def _settle_or(self, job: JobModel, otherwise: Callable[[], str]) -> str:
        """Report how the run ended if the executor can tell (its own report was lost), else
        do ``otherwise`` (time it out, or fail it as lost)."""
        if self._settle is not None:
            try:
                settled = self._settle(job)
            except Exception:
                # Not knowing is no reason to fail a run that may have passed: next round.
                log.exception("could not ask how the run ended", extra={"job_id": job.job_id})
                return "left"
            if settled:
                log.warning("run's lost report recovered", extra={"job_id": job.job_id})
                return "settled"
        return otherwise()

    def _time_out(self, job: JobModel, state: JobState) -> str:
        self._store.transition(
            state,
            Trigger.TIME_OUT,
            actor=ACTOR,
            outcome=Outcome(reason=TIMED_OUT, detail="deadline passed with no report"),
        )
        log.warning("job timed out", extra={"job_id": job.job_id, "run_id": job.run_id})
        if job.run_id and self._cancel_run is not None:
            try:
                self._cancel_run(job.run_id)
            except Exception:
                log.exception("could not stop run", extra={"run_id": job.run_id})
        return "timed_out"
