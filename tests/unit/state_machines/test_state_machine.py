"""The transition table, decided without I/O."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

from state_machines import (
    INITIAL_STATUSES,
    LIFECYCLE,
    TIMED_OUT,
    TRANSITION_TABLE,
    Effect,
    InvalidTransition,
    JobStatus,
    Reaction,
    Scope,
    Trigger,
    may,
    plan,
    plan_between,
    triggers_from,
)

LEGAL = {
    (JobStatus.WAITING, Trigger.APPROVE): JobStatus.PENDING,
    (JobStatus.WAITING, Trigger.CANCEL): JobStatus.CANCELLED,
    (JobStatus.PENDING, Trigger.ACTIVATE): JobStatus.ACTIVE,
    (JobStatus.ACTIVE, Trigger.PASS): JobStatus.PASSED,
    (JobStatus.ACTIVE, Trigger.FAIL): JobStatus.FAILED,
    (JobStatus.ACTIVE, Trigger.TIME_OUT): JobStatus.FAILED,
    (JobStatus.PENDING, Trigger.CANCEL): JobStatus.CANCELLED,
    (JobStatus.ACTIVE, Trigger.CANCEL): JobStatus.CANCELLED,
    (JobStatus.FAILED, Trigger.RETRY): JobStatus.PENDING,
    (JobStatus.CANCELLED, Trigger.RETRY): JobStatus.PENDING,
    (JobStatus.BLOCKED, Trigger.UNBLOCK): JobStatus.PENDING,
    (JobStatus.BLOCKED, Trigger.SKIP): JobStatus.SKIPPED,
    (JobStatus.BLOCKED, Trigger.CANCEL): JobStatus.CANCELLED,
    (JobStatus.PENDING, Trigger.EXPAND): JobStatus.ACTIVE,
    (JobStatus.PENDING, Trigger.REFUSE): JobStatus.FAILED,
    (JobStatus.FAILED, Trigger.REBLOCK): JobStatus.BLOCKED,
    (JobStatus.CANCELLED, Trigger.REBLOCK): JobStatus.BLOCKED,
    (JobStatus.PASSED, Trigger.REBLOCK): JobStatus.BLOCKED,
    (JobStatus.SKIPPED, Trigger.REBLOCK): JobStatus.BLOCKED,
}

RUN_LEGAL = {
    (JobStatus.PENDING, Trigger.EXPAND): JobStatus.ACTIVE,
    (JobStatus.PENDING, Trigger.REFUSE): JobStatus.FAILED,
    (JobStatus.PENDING, Trigger.CANCEL): JobStatus.CANCELLED,
    (JobStatus.ACTIVE, Trigger.PASS): JobStatus.PASSED,
    (JobStatus.ACTIVE, Trigger.FAIL): JobStatus.FAILED,
    (JobStatus.ACTIVE, Trigger.CANCEL): JobStatus.CANCELLED,
    (JobStatus.FAILED, Trigger.RERUN): JobStatus.ACTIVE,
    (JobStatus.CANCELLED, Trigger.RERUN): JobStatus.ACTIVE,
    (JobStatus.PASSED, Trigger.RERUN): JobStatus.ACTIVE,
}


def test_a_pipeline_run_moves_only_by_its_own_rows_never_holding_a_slot() -> None:
    """A run (its steps made) is never activated, timed out or retried as a whole, never takes
    or frees a slot, and its cancel cancels its steps; its failure is its steps'. It is
    re-run (a new attempt of it) once steps of it were reset."""
    for source, trigger in itertools.product(JobStatus, Trigger):
        legal = (source, trigger) in RUN_LEGAL
        assert may(source, trigger, pipeline_run=True) is legal, (source, trigger)
        if not legal:
            continue
        step = plan(source, trigger, pipeline_run=True)
        assert step.dest is RUN_LEGAL[(source, trigger)]
        assert step.slot_delta == 0 and not step.holds_slot
        assert step.next_attempt is (trigger is Trigger.RERUN)
        assert Reaction.RETRY_POLICY not in step.reactions
    assert plan(JobStatus.ACTIVE, Trigger.FAIL, pipeline_run=True).reason == "steps_failed"
    assert (
        Reaction.SETTLE_RUN in plan(JobStatus.ACTIVE, Trigger.CANCEL, pipeline_run=True).reactions
    )
    assert Reaction.SETTLE_RUN in plan(JobStatus.PENDING, Trigger.EXPAND).reactions
    # The stream tells a run's failure from a job's by the image's step count.
    failed = plan_between(JobStatus.ACTIVE, JobStatus.FAILED, slot_held=False, pipeline_run=True)
    assert failed is not None and failed.reactions == ()


def test_a_rerun_reopens_the_run_and_sends_its_steps_back_to_their_fan_in() -> None:
    """A re-run run is active again with no finish and a new attempt, and its fan-in follows;
    a re-run step waits (blocked) again, a new attempt only if it ran, its run settled."""
    for source in (JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.PASSED):
        run = plan(source, Trigger.RERUN, pipeline_run=True)
        assert run.effects == (Effect.REOPEN, Effect.RUN_STEPS)
        assert run.reactions == (Reaction.SETTLE_RUN,) and run.slot_delta == 0
        step = plan(source, Trigger.REBLOCK)
        assert step.dest is JobStatus.BLOCKED and step.next_attempt and step.slot_delta == 0
        assert Effect.REOPEN in step.effects and Effect.FORGET_RUN in step.effects
        assert step.reactions == (Reaction.SETTLE_RUN,)
        # An ordinary job is never re-run as a run, nor a run's step retried as a run.
        assert not may(source, Trigger.RERUN)
    skipped = plan(JobStatus.SKIPPED, Trigger.REBLOCK)
    assert not skipped.next_attempt  # it never ran: its attempt is still unused
    assert not may(JobStatus.SKIPPED, Trigger.REBLOCK, pipeline_run=True)
    # Nothing running, queued or waiting is re-run.
    for source in (JobStatus.ACTIVE, JobStatus.PENDING, JobStatus.BLOCKED, JobStatus.WAITING):
        assert not may(source, Trigger.REBLOCK)
        assert not may(source, Trigger.RERUN, pipeline_run=True)
    # The stream reads a re-run back to its row by the image's step count.
    back = plan_between(JobStatus.FAILED, JobStatus.ACTIVE, slot_held=False, pipeline_run=True)
    assert back is not None and back.trigger is Trigger.RERUN
    assert plan_between(JobStatus.FAILED, JobStatus.ACTIVE, slot_held=False) is None


@pytest.mark.parametrize(("source", "trigger"), list(LEGAL))
def test_legal_transitions_have_a_plan(source: JobStatus, trigger: Trigger) -> None:
    step = plan(source, trigger)
    assert (step.source, step.trigger, step.dest) == (source, trigger, LEGAL[(source, trigger)])
    assert may(source, trigger)


ILLEGAL = [pair for pair in itertools.product(JobStatus, Trigger) if pair not in LEGAL]


@pytest.mark.parametrize(("source", "trigger"), ILLEGAL)
def test_illegal_transitions_raise(source: JobStatus, trigger: Trigger) -> None:
    assert not may(source, trigger)
    with pytest.raises(InvalidTransition) as raised:
        plan(source, trigger, "job-1")
    assert raised.value.job_id == "job-1"
    assert str(trigger) in str(raised.value) and str(source) in str(raised.value)
    assert raised.value.http_status == 409 and raised.value.exit_code == 1


def test_slots_are_taken_on_activation_and_freed_when_leaving_active() -> None:
    deltas = {pair: plan(*pair).slot_delta for pair in LEGAL}
    assert deltas[(JobStatus.PENDING, Trigger.ACTIVATE)] == 1
    assert deltas[(JobStatus.PENDING, Trigger.CANCEL)] == 0
    # A fork's pull request waiting for approval never holds a slot, approved or cancelled.
    assert deltas[(JobStatus.WAITING, Trigger.APPROVE)] == 0
    assert deltas[(JobStatus.WAITING, Trigger.CANCEL)] == 0
    assert deltas[(JobStatus.FAILED, Trigger.RETRY)] == 0
    assert deltas[(JobStatus.CANCELLED, Trigger.RETRY)] == 0
    for trigger in (Trigger.PASS, Trigger.FAIL):
        assert deltas[(JobStatus.ACTIVE, trigger)] == -1
    # A cancelled run, and one the reaper timed out, may still go: each keeps its slot until
    # it is known to be stopped (released separately).
    assert deltas[(JobStatus.ACTIVE, Trigger.CANCEL)] == 0
    assert deltas[(JobStatus.ACTIVE, Trigger.TIME_OUT)] == 0
    assert sorted(pair for pair in LEGAL if plan(*pair).holds_slot) == sorted(
        [(JobStatus.ACTIVE, Trigger.CANCEL), (JobStatus.ACTIVE, Trigger.TIME_OUT)]
    )


def test_only_retry_and_a_rerun_start_a_new_attempt_and_time_out_names_its_reason() -> None:
    assert [pair for pair in LEGAL if plan(*pair).next_attempt] == [
        (JobStatus.FAILED, Trigger.RETRY),
        (JobStatus.CANCELLED, Trigger.RETRY),
        (JobStatus.FAILED, Trigger.REBLOCK),
        (JobStatus.CANCELLED, Trigger.REBLOCK),
        (JobStatus.PASSED, Trigger.REBLOCK),
    ]
    assert plan(JobStatus.ACTIVE, Trigger.TIME_OUT).reason == TIMED_OUT
    assert plan(JobStatus.ACTIVE, Trigger.FAIL).reason is None


def test_terminal_statuses_only_allow_retry_of_failed_and_cancelled_and_a_rerun() -> None:
    assert triggers_from(JobStatus.PASSED) == [Trigger.REBLOCK]
    assert triggers_from(JobStatus.CANCELLED) == [Trigger.RETRY, Trigger.REBLOCK]
    assert triggers_from(JobStatus.FAILED) == [Trigger.RETRY, Trigger.REBLOCK]
    assert triggers_from(JobStatus.SKIPPED) == [Trigger.REBLOCK]
    assert triggers_from(JobStatus.FAILED, pipeline_run=True) == [Trigger.RERUN]
    assert JobStatus.PASSED.is_terminal and not JobStatus.ACTIVE.is_terminal


def test_a_waiting_job_is_approved_into_the_queue_or_cancelled_and_nothing_else() -> None:
    assert triggers_from(JobStatus.WAITING) == [Trigger.APPROVE, Trigger.CANCEL]
    approve = plan(JobStatus.WAITING, Trigger.APPROVE)
    # The same attempt: approval is no retry, and it names no failure reason.
    assert not approve.next_attempt and approve.reason is None and not approve.holds_slot
    # Approval only comes from waiting: a second approval (a race lost) is refused.
    assert [status for status in JobStatus if may(status, Trigger.APPROVE)] == [JobStatus.WAITING]
    assert not JobStatus.WAITING.is_terminal
    assert {JobStatus.PENDING, JobStatus.WAITING, JobStatus.BLOCKED} == INITIAL_STATUSES


def test_a_blocked_step_is_unblocked_into_the_queue_skipped_or_cancelled_and_nothing_else() -> None:
    assert triggers_from(JobStatus.BLOCKED) == [Trigger.UNBLOCK, Trigger.SKIP, Trigger.CANCEL]
    unblock = plan(JobStatus.BLOCKED, Trigger.UNBLOCK)
    assert unblock.effects == (Effect.ENTER_QUEUE,) and unblock.reactions == (Reaction.ACTIVATE,)
    assert unblock.slot_delta == 0 and not unblock.next_attempt
    skip = plan(JobStatus.BLOCKED, Trigger.SKIP)
    assert skip.effects == (Effect.FINISH,) and skip.reactions == () and skip.slot_delta == 0
    assert JobStatus.SKIPPED.is_terminal and not JobStatus.BLOCKED.is_terminal
    # Only a blocked step is unblocked or skipped: a second fan-in's write is refused.
    assert [s for s in JobStatus if may(s, Trigger.UNBLOCK)] == [JobStatus.BLOCKED]
    assert [s for s in JobStatus if may(s, Trigger.SKIP)] == [JobStatus.BLOCKED]


def test_strings_are_accepted_and_unknown_names_rejected() -> None:
    assert plan("pending", "activate").dest is JobStatus.ACTIVE
    with pytest.raises(ValueError):
        plan("paused", "activate")


FORBIDDEN = {"boto3", "botocore", "pynamodb", "aws_xray_sdk", "scheduler"}


def test_state_machines_package_is_pure() -> None:
    package = Path(__file__).resolve().parents[3] / "state_machines"
    sources = sorted(package.glob("*.py"))
    assert len(sources) >= 3, package  # the package is found where it is looked for
    for source in sources:
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{source.name} imports {name}"


def test_each_row_means_what_its_destination_and_slot_say() -> None:
    """The rows are the one description: their meaning agrees with itself (a new row that
    contradicts it, e.g. a finish that writes no outcome, fails here)."""
    for step in (plan(*pair) for pair in LEGAL):
        effects = set(step.effects)
        if step.trigger in (Trigger.EXPAND, Trigger.REFUSE):
            continue  # a pipeline run's: no slot, no run, no retry (see the run's own test)
        if step.trigger is Trigger.REBLOCK:
            continue  # a re-run step: see its own test
        assert (Effect.ENTER_ACTIVE in effects) == (step.dest is JobStatus.ACTIVE)
        assert (Effect.ENTER_QUEUE in effects) == (step.dest is JobStatus.PENDING)
        assert (Effect.FINISH in effects) == step.dest.is_terminal
        assert (Effect.HOLD_SLOT in effects) == step.holds_slot
        # A slot is taken on entering active and freed on leaving it, unless kept.
        leaves = step.source is JobStatus.ACTIVE and not step.holds_slot
        assert step.slot_delta == (step.dest is JobStatus.ACTIVE) - leaves
        # A kept slot is released by the stream only after the run is stopped.
        if step.holds_slot:
            assert list(step.reactions[:2]) == [Reaction.STOP_RUN, Reaction.RELEASE_SLOT]
        else:
            assert Reaction.STOP_RUN not in step.reactions
        # A failure's verdict is owed (marked) unless its kept slot carries it; the retry of
        # a failure takes the mark off.
        assert (Effect.MARK_RETRY in effects) == (
            step.dest is JobStatus.FAILED and not step.holds_slot
        )
        assert (Effect.CLEAR_RETRY_MARK in effects) == (
            step.source is JobStatus.FAILED and step.next_attempt
        )


def test_the_machine_table_is_derived_from_the_rows() -> None:
    jobs = [row for row in LIFECYCLE if row.scope is not Scope.RUN]
    pairs = {(source, row.trigger) for row in jobs for source in row.sources}
    assert pairs == set(LEGAL)
    # A run's rows add only the pairs no job's row names (its re-run), each pair once.
    named = [(source, row["trigger"]) for row in TRANSITION_TABLE for source in row["source"]]
    assert len(named) == len(set(named))
    assert set(named) == set(LEGAL) | set(RUN_LEGAL)
    triggers = [row["trigger"] for row in TRANSITION_TABLE]
    assert [t for t in triggers if t is not Trigger.RERUN] == [row.trigger for row in jobs]
    assert triggers.count(Trigger.RERUN) == 1


def test_a_status_change_is_read_back_to_the_row_that_made_it() -> None:
    active, failed = JobStatus.ACTIVE, JobStatus.FAILED
    assert plan_between(active, failed, slot_held=False) == plan(active, Trigger.FAIL)
    assert plan_between(active, failed, slot_held=True) == plan(active, Trigger.TIME_OUT)
    # A cancel always keeps the slot; the item's flag does not change which row made it.
    for held in (False, True):
        found = plan_between(active, JobStatus.CANCELLED, slot_held=held)
        assert found == plan(active, Trigger.CANCEL)
    assert plan_between(JobStatus.PASSED, JobStatus.PENDING, slot_held=False) is None
    for (source, trigger), dest in LEGAL.items():
        # An expansion's record shows the step count it wrote before it (a pipeline run).
        run = trigger is Trigger.EXPAND
        found = plan_between(
            source, dest, slot_held=plan(source, trigger).holds_slot, pipeline_run=run
        )
        assert found is not None and found.trigger is trigger
