"""The stream dispatcher without a server: records -> transitions -> actions -> outcomes."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from scheduler.config import RetryPolicy
from scheduler.db.store import JobState
from scheduler.errors import (
    BatchInterrupted,
    MalformedStreamRecord,
    RepositoryFull,
    StoreUnavailable,
)
from scheduler.stream.decide import (
    Activate,
    PromoteQueued,
    ReleaseSlot,
    ReleaseTrigger,
    RetryFailed,
    StartRun,
    StopRun,
    decide,
    read_transition,
)
from scheduler.stream.dispatcher import Dispatcher
from state_machines import JobStatus, TransitionConflict

EVENT = json.loads(
    (Path(__file__).parents[2] / "events" / "dynamodb_stream.json").read_text(encoding="utf-8")
)
P, A, PASSED, F, C = (
    JobStatus.PENDING,
    JobStatus.ACTIVE,
    JobStatus.PASSED,
    JobStatus.FAILED,
    JobStatus.CANCELLED,
)


def state(status: JobStatus = P, version: int = 0, attempt: int = 1) -> JobState:
    return JobState("j", "o/r", status, version, attempt, 600, 1, 0)


def record(n: int) -> dict[str, Any]:
    return copy.deepcopy(EVENT["Records"][n])


@pytest.mark.parametrize(
    ("source", "dest", "expected"),
    [
        (None, P, "activate"),
        (F, P, "activate"),
        (P, A, "start"),
        (A, PASSED, "promote"),
        (A, F, "promote_and_retry"),
        (A, C, "stop_release_promote"),
        (P, C, None),
        (C, P, "activate"),
    ],
)
def test_decision_table(source: JobStatus | None, dest: JobStatus, expected: str | None) -> None:
    job = state(dest)
    retry = RetryPolicy(attempts=2, on=("timed_out",), backoff_seconds=3)
    actions = decide(source, dest, job, reason="timed_out", retry=retry)
    assert (
        actions
        == {
            "activate": [Activate(job)],
            "start": [StartRun(job)],
            "promote": [PromoteQueued("o/r")],
            "promote_and_retry": [PromoteQueued("o/r"), RetryFailed(job, delay_ms=3000)],
            "stop_release_promote": [StopRun(job, None), ReleaseSlot(job), PromoteQueued("o/r")],
            None: [],
        }[expected]
    )


def test_a_cancel_stops_the_run_before_its_slot_goes_and_releases_the_trigger() -> None:
    job = state(C)
    assert decide(A, C, job, run_id="j#1", trigger_key="k") == [
        StopRun(job, "j#1"),
        ReleaseSlot(job),
        PromoteQueued("o/r"),
        ReleaseTrigger(job, "k"),
    ]
    assert decide(P, C, job, trigger_key="k") == [ReleaseTrigger(job, "k")]


def test_a_failure_the_policy_does_not_retry_only_promotes() -> None:
    job = state(F)
    retry = RetryPolicy(attempts=2, on=("timed_out",))
    assert decide(A, F, job, reason="exit_code", retry=retry) == [PromoteQueued("o/r")]
    assert decide(A, F, job, reason="timed_out") == [PromoteQueued("o/r")]  # no policy given


def test_a_retried_attempt_starts_after_the_backoff_it_carries() -> None:
    job = JobState("j", "o/r", A, 3, 2, 600, 1, 0, start_delay_ms=4000)
    assert decide(P, A, job) == [StartRun(job, delay_ms=4000)]


def test_every_status_pair_decides_without_error() -> None:
    for source in [None, *JobStatus]:
        for dest in JobStatus:
            assert len(decide(source, dest, state(dest))) <= 3


@pytest.mark.parametrize(
    ("attempt", "reason", "allowed"),
    [(1, "timed_out", True), (2, "timed_out", False), (1, "exit_code", False), (1, None, False)],
)
def test_automatic_retry_policy(attempt: int, reason: str | None, allowed: bool) -> None:
    policy = RetryPolicy(attempts=2, on=("timed_out",))
    assert policy.allows(attempt, reason) is allowed
    assert not RetryPolicy().allows(1, "timed_out")  # 1 attempt = no automatic retry


def test_records_of_a_jobs_life_read_as_transitions() -> None:
    read = [read_transition(r) for r in EVENT["Records"]]
    assert [(t.source, t.dest) if t else None for t in read] == [
        (None, P),
        (P, A),
        None,  # same status: not a transition
        (A, PASSED),
        None,  # removal by TTL
    ]
    first = read[0]
    assert first is not None
    assert first.job == JobState("d-1", "octo-org/api", P, 0, 1, 600, 1795370000000, 0)
    assert first.sequence_number == "000000000000000000100"


def test_items_without_a_status_are_not_job_items_and_are_ignored() -> None:
    other = record(0)
    other["dynamodb"]["NewImage"] = {"job_id": {"S": "marker"}, "kind": {"S": "lease"}}
    assert read_transition(other) is None


@pytest.mark.parametrize(
    "breakage",
    [
        lambda image: image.update(status={"S": "exploded"}),
        lambda image: image.pop("timeout_seconds"),
        lambda image: image.update(version={"N": "not-a-number"}),
    ],
)
def test_unreadable_job_images_are_malformed_records(breakage: Any) -> None:
    bad = record(0)
    breakage(bad["dynamodb"]["NewImage"])
    with pytest.raises(MalformedStreamRecord, match="000000000000000000100"):
        read_transition(bad)


class FakeReads:
    """The current items, as DynamoDB JSON (what a poison record is compared with)."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}

    def raw(self, job_id: str) -> dict[str, Any] | None:
        return self.items.get(job_id)


class FakeStore:
    """Records activations; answers with scripted outcomes (the real store is tested live)."""

    def __init__(self, outcomes: list[Any]) -> None:
        self.outcomes = outcomes
        self.calls: list[tuple[str, int, int]] = []
        self.reads = FakeReads()

    def activate(
        self, job: JobState, *, slot_limit: int, actor: str, claim: Any = None, alone: bool = False
    ) -> Any:
        self.calls.append((job.job_id, job.version, slot_limit))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def dispatcher(outcomes: list[Any], started: list[Any] | None = None) -> Dispatcher:
    sink = started if started is not None else []
    return Dispatcher(
        FakeStore(outcomes),  # type: ignore[arg-type]
        slot_limit_for=lambda repo: 3 if repo == "octo-org/api" else 1,
        start_run=lambda image, delay_ms: sink.append(image),
    )


@pytest.mark.parametrize(
    ("outcome", "word"),
    [
        (state(A, 1), "activated"),
        (RepositoryFull("octo-org/api", 3), "queued"),
        (TransitionConflict("d-1", "activate"), "already_done"),
    ],
)
def test_a_new_job_is_activated_with_its_repositorys_limit(outcome: Any, word: str) -> None:
    d = dispatcher([outcome])
    assert d.handle_record(record(0)) == [word]
    assert d._store.calls == [("d-1", 0, 3)]  # type: ignore[attr-defined]


def test_activation_starts_the_run_through_the_hook() -> None:
    started: list[Any] = []
    assert dispatcher([], started).handle_record(record(1)) == ["started"]
    assert [(j.job_id, j.status, j.attempt) for j in started] == [("d-1", A, 1)]


def test_batch_stops_at_the_first_failing_record_and_reports_it() -> None:
    started: list[Any] = []
    d = dispatcher([StoreUnavailable("throttled")], started)
    response = d.handle_event(EVENT, time_left_ms=lambda: 0)  # Lambda, out of time
    assert response == {"batchItemFailures": [{"itemIdentifier": "000000000000000000100"}]}
    assert started == []  # the records after the failure were not processed


def test_a_store_failure_without_a_deadline_interrupts_the_batch_where_it_failed() -> None:
    started: list[Any] = []
    d = dispatcher([StoreUnavailable("throttled")], started)
    with pytest.raises(BatchInterrupted) as caught:
        d.handle_event(EVENT)  # the local runner: it waits for the store itself
    assert caught.value.sequence_number == "000000000000000000100"
    assert started == []


def test_a_clean_batch_reports_no_failures() -> None:
    event = {"Records": [record(0), record(1), record(2), record(4)]}
    assert dispatcher([state(A, 1)]).handle_event(event) == {"batchItemFailures": []}


def test_a_poison_record_fails_where_it_is() -> None:
    poison = record(1)
    poison["dynamodb"]["NewImage"]["status"] = {"S": "exploded"}
    poison["dynamodb"]["SequenceNumber"] = "000000000000000000201"
    event = {"Records": [record(0), poison, record(2)]}
    d = dispatcher([state(A, 1)])
    d._store.reads.items["d-1"] = poison["dynamodb"]["NewImage"]  # type: ignore[attr-defined]
    assert d.handle_event(event) == {
        "batchItemFailures": [{"itemIdentifier": "000000000000000000201"}]
    }


def test_a_poison_record_whose_item_was_repaired_or_removed_since_is_overtaken() -> None:
    poison = record(1)
    poison["dynamodb"]["NewImage"]["status"] = {"S": "exploded"}
    d = dispatcher([])
    assert d.handle_record(poison) == ["overtaken"]  # the item is gone
    d._store.reads.items["d-1"] = record(1)["dynamodb"]["NewImage"]  # type: ignore[attr-defined]
    assert d.handle_record(poison) == ["overtaken"]  # the item was repaired
