"""Every legal and illegal transition against DynamoDB Local: items, history and counters."""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

import pytest

from scheduler.db.models import JobModel, RepoModel
from scheduler.db.store import JobState, JobStore, NewJob, Outcome, RunClaimed
from scheduler.errors import JobExists, RepositoryFull
from state_machines import TIMED_OUT, InvalidTransition, JobStatus, TransitionConflict, Trigger

REPO = "octo-org/api"


def new_job(job_id: str, repo: str = REPO) -> NewJob:
    return NewJob(
        job_id=job_id,
        repo=repo,
        event="push",
        sha="a" * 40,
        timeout_seconds=60,
        ref="refs/heads/main",
        branch="main",
        sender="octocat",
        delivery_id=job_id,
    )


def counters(repo: str = REPO) -> dict[str, int]:
    item = RepoModel.get(repo, consistent_read=True)
    return {
        name: int(getattr(item, name) or 0)
        for name in ("running", "n_pending", "n_active", "n_passed", "n_failed", "n_cancelled")
    }


def raw_item(job_id: str) -> dict[str, Any]:
    """The item as plain data (attribute names as stored), read consistently."""
    return JobModel.get(job_id, consistent_read=True).to_simple_dict()


def reach(store: JobStore, job_id: str, status: JobStatus) -> JobState:
    """A job driven to ``status`` through legal transitions."""
    initial = status if status in (JobStatus.WAITING, JobStatus.BLOCKED) else None
    if status is JobStatus.SKIPPED:
        initial = JobStatus.BLOCKED
    job = store.create(replace(new_job(job_id), status=initial) if initial else new_job(job_id))
    path = {
        JobStatus.WAITING: [],
        JobStatus.BLOCKED: [],
        JobStatus.SKIPPED: [Trigger.SKIP],
        JobStatus.PENDING: [],
        JobStatus.ACTIVE: [Trigger.ACTIVATE],
        JobStatus.PASSED: [Trigger.ACTIVATE, Trigger.PASS],
        JobStatus.FAILED: [Trigger.ACTIVATE, Trigger.FAIL],
        JobStatus.CANCELLED: [Trigger.CANCEL],
    }[status]
    for trigger in path:
        result = store.transition(job, trigger, actor="test", slot_limit=10)
        assert isinstance(result, JobState)
        job = result
    return job


def test_create_writes_a_pending_queued_job_and_counts_it(store: JobStore) -> None:
    job = store.create(new_job("j1"))
    item = raw_item("j1")
    assert (job.status, job.version, job.attempt) == (JobStatus.PENDING, 0, 1)
    assert item["status"] == "pending" and item["queue_repo"] == REPO
    assert item["queue_shard"] == "queued"
    assert [(h.get("from"), h["to"], h["actor"]) for h in item["history"]] == [
        (None, "pending", "webhook")
    ]
    assert counters()["n_pending"] == 1
    with pytest.raises(JobExists):
        store.create(new_job("j1"))
    assert counters()["n_pending"] == 1  # the duplicate changed nothing


def test_an_activation_that_claims_its_run_gets_the_timeout_and_the_grace(
    store: JobStore,
) -> None:
    store.activate(store.create(new_job("j1")), slot_limit=1, claim=RunClaimed("j1#1"))
    item = raw_item("j1")
    assert item["run_id"] == "j1#1"
    # timeout 60 s + the start grace of 60 s: the claimed run may still wait for a runner
    assert item["deadline_at"] == item["activated_at"] + 120_000


def test_activation_takes_a_slot_sets_a_deadline_and_leaves_the_queue(store: JobStore) -> None:
    job = store.activate(store.create(new_job("j1")), slot_limit=1)
    assert isinstance(job, JobState) and job.status is JobStatus.ACTIVE and job.version == 1
    item = raw_item("j1")
    assert "queue_repo" not in item and item["deadline_shard"] == "active"
    assert "queue_shard" not in item
    # No claim in the activation's write: only the default start grace of 60 s, by when the
    # claim (which sets the timeout's deadline) is due, or the reaper starts the run itself.
    assert item["deadline_at"] == item["activated_at"] + 60_000
    assert counters() == {
        "running": 1,
        "n_pending": 0,
        "n_active": 1,
        "n_passed": 0,
        "n_failed": 0,
        "n_cancelled": 0,
    }


def test_full_repository_is_refused_and_writes_nothing(store: JobStore) -> None:
    store.activate(store.create(new_job("j1")), slot_limit=1)
    second = store.create(new_job("j2"))
    before = raw_item("j2")
    with pytest.raises(RepositoryFull) as full:
        store.activate(second, slot_limit=1)
    assert (full.value.repo, full.value.limit) == (REPO, 1)
    assert raw_item("j2") == before
    assert counters()["running"] == 1
    # A raised limit applies to the very next activation.
    assert isinstance(store.activate(second, slot_limit=2), JobState)
    assert counters()["running"] == 2


@pytest.mark.parametrize(
    ("trigger", "dest", "outcome"),
    [
        (Trigger.PASS, JobStatus.PASSED, None),
        (Trigger.FAIL, JobStatus.FAILED, Outcome(reason="exit_code", detail="boom", exit_code=3)),
        (Trigger.TIME_OUT, JobStatus.FAILED, None),
        (Trigger.CANCEL, JobStatus.CANCELLED, Outcome(reason="operator")),
    ],
)
def test_finishing_an_active_job_frees_its_slot(
    store: JobStore, trigger: Trigger, dest: JobStatus, outcome: Outcome | None
) -> None:
    job = reach(store, "j1", JobStatus.ACTIVE)
    done = store.transition(job, trigger, actor="runner", outcome=outcome)
    assert isinstance(done, JobState) and done.status is dest and done.version == 2
    item = raw_item("j1")
    assert item["status"] == dest.value and item["finished_at"] >= item["activated_at"]
    assert "deadline_shard" not in item and item["expires_at"] > item["finished_at"] // 1000
    assert item["history"][-1]["from"] == "active" and item["history"][-1]["to"] == dest.value
    if trigger is Trigger.TIME_OUT:
        assert item["reason"] == TIMED_OUT
    if outcome and outcome.exit_code is not None:
        assert (item["exit_code"], item["detail"]) == (3, "boom")
    if trigger in (Trigger.CANCEL, Trigger.TIME_OUT):
        # A cancel, and the reaper's timeout, keep the slot until the run is stopped;
        # releasing it is a second, once-only write (a repeat is a TransitionConflict and
        # changes nothing). A failure then waits for the reconciliation's retry verdict.
        assert counters()["running"] == 1 and item["slot_held"] is True
        store.release_slot(done)
        with pytest.raises(TransitionConflict):
            store.release_slot(done)
        assert "slot_held" not in raw_item("j1")
        assert raw_item("j1").get("held_shard") == ("retry" if dest is JobStatus.FAILED else None)
    assert counters()["running"] == 0 and counters()["n_active"] == 0
    assert counters()[f"n_{dest.value}"] == 1


def test_cancelling_a_pending_job_moves_counts_but_no_slot(store: JobStore) -> None:
    job = store.create(new_job("j1"))
    done = store.transition(job, Trigger.CANCEL, actor="operator")
    assert isinstance(done, JobState) and done.status is JobStatus.CANCELLED
    assert "queue_repo" not in raw_item("j1") and "queue_shard" not in raw_item("j1")
    assert counters() == {
        "running": 0,
        "n_pending": 0,
        "n_active": 0,
        "n_passed": 0,
        "n_failed": 0,
        "n_cancelled": 1,
    }


def waiting_count(repo: str = REPO) -> int:
    return int(RepoModel.get(repo, consistent_read=True).n_waiting or 0)


def test_a_job_created_waiting_is_counted_but_not_queued(store: JobStore) -> None:
    job = store.create(
        replace(new_job("j1"), event="pull_request", fork=True, status=JobStatus.WAITING)
    )
    item = raw_item("j1")
    assert (job.status, job.version, job.attempt) == (JobStatus.WAITING, 0, 1)
    assert (item["status"], item["fork"], item["waiting_repo"]) == ("waiting", True, REPO)
    # Out of the queue's sparse indexes: neither promotion nor the sweeper can pick it.
    assert not {"queue_repo", "queue_shard", "queue_key", "deadline_shard"} & set(item)
    assert [(h.get("from"), h["to"]) for h in item["history"]] == [(None, "waiting")]
    assert waiting_count() == 1 and counters()["n_pending"] == 0 and counters()["running"] == 0
    assert list(store.reads.queued(REPO, limit=10, page_size=10)) == []
    with pytest.raises(ValueError, match="cannot be created active"):
        store.create(replace(new_job("j2"), status=JobStatus.ACTIVE))


def test_approving_a_waiting_job_queues_it_in_the_same_attempt(store: JobStore) -> None:
    job = reach(store, "j1", JobStatus.WAITING)
    approved = store.transition(job, Trigger.APPROVE, actor="operator")
    assert (approved.status, approved.attempt, approved.version) == (JobStatus.PENDING, 1, 1)
    item = raw_item("j1")
    assert "waiting_repo" not in item and item["queue_repo"] == REPO
    assert item["queue_shard"] == "queued"
    assert [(h.get("from"), h["to"], h["actor"]) for h in item["history"]] == [
        (None, "waiting", "webhook"),
        ("waiting", "pending", "operator"),
    ]
    assert waiting_count() == 0 and counters()["n_pending"] == 1 and counters()["running"] == 0
    assert [m.job_id for m in store.reads.queued(REPO, limit=10, page_size=10)] == ["j1"]
    with pytest.raises(TransitionConflict):
        store.transition(job, Trigger.APPROVE, actor="operator")  # a second, stale approval
    with pytest.raises(InvalidTransition):
        store.transition(approved, Trigger.APPROVE, actor="operator")


def test_cancelling_a_waiting_job_moves_counts_but_no_slot(store: JobStore) -> None:
    job = reach(store, "j1", JobStatus.WAITING)
    done = store.transition(job, Trigger.CANCEL, actor="operator")
    assert done.status is JobStatus.CANCELLED
    item = raw_item("j1")
    assert "waiting_repo" not in item and "queue_repo" not in item and "expires_at" in item
    assert waiting_count() == 0 and counters()["n_cancelled"] == 1 and counters()["running"] == 0


def test_retry_starts_a_new_attempt_and_keeps_history(store: JobStore) -> None:
    failed = store.transition(
        reach(store, "j1", JobStatus.ACTIVE),
        Trigger.FAIL,
        actor="runner",
        outcome=Outcome(reason="exit_code", exit_code=1),
    )
    assert isinstance(failed, JobState)
    retried = store.transition(failed, Trigger.RETRY, actor="operator")
    assert isinstance(retried, JobState)
    assert (retried.status, retried.attempt, retried.version) == (JobStatus.PENDING, 2, 3)
    item = raw_item("j1")
    assert item["queue_repo"] == REPO and "exit_code" not in item and "expires_at" not in item
    assert [(h["to"], h["attempt"]) for h in item["history"]] == [
        ("pending", 1),
        ("active", 1),
        ("failed", 1),
        ("pending", 2),
    ]
    assert counters()["n_pending"] == 1 and counters()["n_failed"] == 0


ILLEGAL = [
    (status, trigger)
    for status, trigger in itertools.product(JobStatus, Trigger)
    if not (
        (status, trigger)
        in {
            (JobStatus.WAITING, Trigger.APPROVE),
            (JobStatus.WAITING, Trigger.CANCEL),
            (JobStatus.PENDING, Trigger.ACTIVATE),
            (JobStatus.PENDING, Trigger.CANCEL),
            (JobStatus.FAILED, Trigger.RETRY),
            (JobStatus.CANCELLED, Trigger.RETRY),
            (JobStatus.BLOCKED, Trigger.UNBLOCK),
            (JobStatus.BLOCKED, Trigger.SKIP),
            (JobStatus.BLOCKED, Trigger.CANCEL),
            # A delivery's job whose pipeline is owed: it expands, or its file is refused
            # (for any other job the store's condition refuses them, below).
            (JobStatus.PENDING, Trigger.EXPAND),
            (JobStatus.PENDING, Trigger.REFUSE),
        }
        # A re-run step: legal from an end, refused by the store for a job of no run (below).
        or (status.is_terminal and trigger is Trigger.REBLOCK)
        or (
            status is JobStatus.ACTIVE
            and trigger is not Trigger.ACTIVATE
            and trigger is not Trigger.RETRY
        )
    )
]


@pytest.mark.parametrize(("status", "trigger"), ILLEGAL)
def test_illegal_transitions_are_refused_and_write_nothing(
    store: JobStore, status: JobStatus, trigger: Trigger
) -> None:
    job = reach(store, "j1", status)
    before_item, before_counts = raw_item("j1"), counters()
    with pytest.raises(InvalidTransition):
        store.transition(job, trigger, actor="test", slot_limit=10)
    assert raw_item("j1") == before_item
    assert counters() == before_counts


@pytest.mark.parametrize(
    ("status", "trigger"),
    [
        *((s, Trigger.REBLOCK) for s in (JobStatus.PASSED, JobStatus.FAILED, JobStatus.SKIPPED)),
        (JobStatus.CANCELLED, Trigger.REBLOCK),
        (JobStatus.PENDING, Trigger.EXPAND),
        (JobStatus.PENDING, Trigger.REFUSE),
    ],
)
def test_a_pipelines_own_triggers_are_refused_for_other_jobs(
    store: JobStore, status: JobStatus, trigger: Trigger
) -> None:
    """``reblock`` is a step's (a job of no pipeline run would never be unblocked again),
    ``expand`` and ``refuse`` a job's whose pipeline file is owed (expanded, a job of the
    operator's command would run nothing): the store's condition refuses them, nothing is
    written."""
    job = reach(store, "j1", status)
    before_item, before_counts = raw_item("j1"), counters()
    with pytest.raises(TransitionConflict):
        store.transition(job, trigger, actor="test")
    assert raw_item("j1") == before_item
    assert counters() == before_counts


def test_stale_reader_loses_with_a_conflict_and_writes_nothing(store: JobStore) -> None:
    stale = store.create(new_job("j1"))
    assert isinstance(store.activate(stale, slot_limit=5), JobState)
    before_item, before_counts = raw_item("j1"), counters()
    with pytest.raises(TransitionConflict):
        store.activate(stale, slot_limit=5)  # a duplicate stream record of the creation
    with pytest.raises(TransitionConflict):
        store.transition(stale, Trigger.CANCEL, actor="operator")
    assert raw_item("j1") == before_item and counters() == before_counts
