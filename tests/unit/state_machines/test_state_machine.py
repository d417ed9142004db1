"""The transition table, decided without I/O."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

from state_machines import (
    INITIAL_STATUSES,
    TIMED_OUT,
    InvalidTransition,
    JobStatus,
    Trigger,
    may,
    plan,
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
}


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


def test_only_retry_starts_a_new_attempt_and_time_out_names_its_reason() -> None:
    assert [pair for pair in LEGAL if plan(*pair).next_attempt] == [
        (JobStatus.FAILED, Trigger.RETRY),
        (JobStatus.CANCELLED, Trigger.RETRY),
    ]
    assert plan(JobStatus.ACTIVE, Trigger.TIME_OUT).reason == TIMED_OUT
    assert plan(JobStatus.ACTIVE, Trigger.FAIL).reason is None


def test_terminal_statuses_only_allow_retry_of_failed_and_cancelled() -> None:
    assert triggers_from(JobStatus.PASSED) == []
    assert triggers_from(JobStatus.CANCELLED) == [Trigger.RETRY]
    assert triggers_from(JobStatus.FAILED) == [Trigger.RETRY]
    assert JobStatus.PASSED.is_terminal and not JobStatus.ACTIVE.is_terminal


def test_a_waiting_job_is_approved_into_the_queue_or_cancelled_and_nothing_else() -> None:
    assert triggers_from(JobStatus.WAITING) == [Trigger.APPROVE, Trigger.CANCEL]
    approve = plan(JobStatus.WAITING, Trigger.APPROVE)
    # The same attempt: approval is no retry, and it names no failure reason.
    assert not approve.next_attempt and approve.reason is None and not approve.holds_slot
    # Approval only comes from waiting: a second approval (a race lost) is refused.
    assert [status for status in JobStatus if may(status, Trigger.APPROVE)] == [JobStatus.WAITING]
    assert not JobStatus.WAITING.is_terminal
    assert {JobStatus.PENDING, JobStatus.WAITING} == INITIAL_STATUSES


def test_strings_are_accepted_and_unknown_names_rejected() -> None:
    assert plan("pending", "activate").dest is JobStatus.ACTIVE
    with pytest.raises(ValueError):
        plan("paused", "activate")


FORBIDDEN = {"boto3", "botocore", "pynamodb", "aws_xray_sdk", "scheduler"}


def test_state_machines_package_is_pure() -> None:
    package = Path(__file__).resolve().parents[3] / "state_machines"
    for source in package.glob("*.py"):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{source.name} imports {name}"
