"""decide reads what follows a transition from the lifecycle's rows, not from its own chain."""

from __future__ import annotations

from dataclasses import replace

import pytest

from scheduler.config import RetryPolicy
from scheduler.db.store import JobState
from scheduler.stream.decide import (
    Action,
    Activate,
    PromoteQueued,
    ReleaseSlot,
    ReleaseTrigger,
    RetryFailed,
    SettleRetryVerdict,
    SettleRun,
    StartRun,
    StopRun,
    decide,
)
from state_machines import LIFECYCLE, JobStatus, Reaction, Row, Scope

KIND = {
    Reaction.ACTIVATE: Activate,
    Reaction.START_RUN: StartRun,
    Reaction.STOP_RUN: StopRun,
    Reaction.RELEASE_SLOT: ReleaseSlot,
    Reaction.PROMOTE_QUEUED: PromoteQueued,
    Reaction.RELEASE_TRIGGER: ReleaseTrigger,
    Reaction.RETRY_POLICY: RetryFailed,
    Reaction.SETTLE_RUN: SettleRun,
}
ROWS = [(row, source) for row in LIFECYCLE for source in row.sources]
GENEROUS = RetryPolicy(attempts=5, on=("timed_out", "exit_code"), backoff_seconds=2)


def job(status: JobStatus) -> JobState:
    return JobState("j", "o/r", status, 3, 1, 600, 1, 0)


def kinds(actions: list[Action]) -> list[type]:
    return [type(action) for action in actions]


@pytest.mark.parametrize(("row", "source"), ROWS, ids=lambda v: str(getattr(v, "trigger", v)))
def test_every_reaction_of_a_row_becomes_its_action_in_order(row: Row, source: JobStatus) -> None:
    actions = decide(
        source,
        row.dest,
        job(row.dest),
        reason=row.reason or "exit_code",
        retry=GENEROUS,
        run_id="j#1",
        trigger_key="k",
        slot_held=row.holds_slot,
        pipeline_run=row.scope is not Scope.JOB,
    )
    assert kinds(actions) == [KIND[reaction] for reaction in row.reactions]


@pytest.mark.parametrize(("row", "source"), ROWS, ids=lambda v: str(getattr(v, "trigger", v)))
def test_reactions_not_owed_by_the_record_are_left_out(row: Row, source: JobStatus) -> None:
    # No trigger guard to release, the slot already handed on, no retry policy.
    run = row.scope is not Scope.JOB  # a run's image has its step count
    actions = decide(
        source,
        row.dest,
        job(row.dest),
        reason="exit_code",
        slot_held=row.holds_slot,
        pipeline_run=run,
    )
    left_out = {Reaction.RELEASE_TRIGGER, Reaction.PROMOTE_QUEUED, Reaction.RETRY_POLICY}
    expected = [KIND[r] for r in row.reactions if r not in left_out]
    handed = decide(
        source,
        row.dest,
        job(row.dest),
        reason="exit_code",
        slot_held=row.holds_slot,
        handed_on=True,
        pipeline_run=run,
    )
    assert kinds(handed) == expected
    promote = [PromoteQueued] if Reaction.PROMOTE_QUEUED in row.reactions else []
    assert sorted(kinds(actions), key=str) == sorted(expected + promote, key=str)


def test_a_change_no_row_makes_calls_for_nothing() -> None:
    assert decide(JobStatus.PASSED, JobStatus.PENDING, job(JobStatus.PENDING)) == []
    assert decide(JobStatus.PENDING, JobStatus.PASSED, job(JobStatus.PASSED)) == []
    assert decide(None, JobStatus.ACTIVE, job(JobStatus.ACTIVE)) == []


def test_a_retry_verdict_carries_the_policys_backoff() -> None:
    failed = job(JobStatus.FAILED)
    actions = decide(JobStatus.ACTIVE, JobStatus.FAILED, failed, reason="exit_code", retry=GENEROUS)
    assert actions == [PromoteQueued("o/r"), RetryFailed(failed, delay_ms=2000)]
    second = JobState("j", "o/r", JobStatus.FAILED, 3, 2, 600, 1, 0)
    retried = decide(JobStatus.ACTIVE, JobStatus.FAILED, second, reason="exit_code", retry=GENEROUS)
    assert retried[-1] == RetryFailed(second, delay_ms=4000)  # doubled


def test_a_steps_end_moves_its_run_on_once_no_retry_is_owed() -> None:
    failed = job(JobStatus.FAILED)
    no_retry = decide(
        JobStatus.ACTIVE, JobStatus.FAILED, failed, reason="exit_code", run_of="run-1"
    )
    assert no_retry == [PromoteQueued("o/r"), SettleRetryVerdict(failed), SettleRun("run-1")]
    retried = decide(
        JobStatus.ACTIVE,
        JobStatus.FAILED,
        failed,
        reason="exit_code",
        retry=GENEROUS,
        run_of="run-1",
    )
    assert kinds(retried) == [PromoteQueued, RetryFailed]  # it runs again: not ended
    passed = decide(JobStatus.ACTIVE, JobStatus.PASSED, job(JobStatus.PASSED), run_of="run-1")
    assert passed == [PromoteQueued("o/r"), SettleRun("run-1")]
    skipped = decide(JobStatus.BLOCKED, JobStatus.SKIPPED, job(JobStatus.SKIPPED), run_of="run-1")
    assert skipped == [SettleRun("run-1")]
    # A step that starts owes its run nothing.
    assert decide(JobStatus.BLOCKED, JobStatus.PENDING, job(JobStatus.PENDING), run_of="r") == [
        Activate(job(JobStatus.PENDING))
    ]


def test_a_rerun_settles_the_run_itself_and_a_reset_step_its_run() -> None:
    """A re-run run's record owes its own fan-in; a step sent back to blocked owes its run's
    (a step re-run in a running run may be runnable at once), never a settle of itself."""
    reopened = job(JobStatus.ACTIVE)
    assert decide(JobStatus.FAILED, JobStatus.ACTIVE, reopened, pipeline_run=True) == [
        SettleRun("j")
    ]
    for source in (JobStatus.FAILED, JobStatus.SKIPPED, JobStatus.PASSED, JobStatus.CANCELLED):
        reset = decide(source, JobStatus.BLOCKED, job(JobStatus.BLOCKED), run_of="run-1")
        assert reset == [SettleRun("run-1")], source
    # An ordinary job's failed -> active is no row: nothing follows.
    assert decide(JobStatus.FAILED, JobStatus.ACTIVE, reopened) == []


def test_a_grouped_finish_promotes_even_when_it_handed_its_slot_on() -> None:
    """A step of a concurrency group frees its group when it ends: the group's queued jobs are
    owed a promotion although the finish handed its slot to the (ungrouped) head itself."""
    grouped = replace(job(JobStatus.PASSED), concurrency_group="deploy")
    for dest in (JobStatus.PASSED, JobStatus.FAILED):
        ended = replace(grouped, status=dest)
        assert PromoteQueued("o/r") in decide(
            JobStatus.ACTIVE, dest, ended, reason="exit_code", handed_on=True
        ), dest
        ungrouped = replace(ended, concurrency_group=None)
        handed = decide(JobStatus.ACTIVE, dest, ungrouped, reason="exit_code", handed_on=True)
        assert PromoteQueued not in kinds(handed), dest  # the hand-off was its promotion
    # A grouped job's finish that handed nothing on promotes once, as any other.
    alone = decide(JobStatus.ACTIVE, JobStatus.PASSED, grouped)
    assert alone.count(PromoteQueued("o/r")) == 1
