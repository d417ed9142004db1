"""The stream's side of pipeline runs against DynamoDB Local, record by record: an expansion
replayed, a run superseded while its steps run, a step's end record lost (the reconciliation
settles the run), a file that cannot be read now (asked again, then given up)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from stream_records import image, record

from scheduler.config import RepoPolicy
from scheduler.db.models import JobModel, RepoModel
from scheduler.db.store import JobStore, NewJob
from scheduler.errors import PipelineUnavailable
from scheduler.pipelines import CommitRef
from scheduler.runs.pipeline_driver import PipelineDriver
from scheduler.runs.pipeline_runs import step_id
from scheduler.stream.dispatcher import OWED_GRACE_MS, Dispatcher
from scheduler.stream.reconciler import Reconciler
from scheduler.stream.sweeper import QueueSweeper
from state_machines import JobStatus, Trigger

REPO = "octo-org/pipes"
FILE = b"""
steps:
  - {key: build, command: [make]}
  - {key: test, command: [make, test], needs: [build], matrix: {n: ["1", "2"]}}
  - {key: report, command: [make, report], needs: [test]}
"""


class Files:
    """GitHub's contents API (or the mirror) as the engine's port sees it: the file of each
    commit, or an error to raise; every read recorded."""

    def __init__(self, by_sha: dict[str, bytes | Exception]) -> None:
        self.by_sha = by_sha
        self.reads: list[str] = []

    def read(self, commit: CommitRef, path: str, max_bytes: int) -> bytes | None:
        assert path == ".scheduler/pipeline.yml" and commit.repo == REPO
        self.reads.append(commit.sha)
        found = self.by_sha.get(commit.sha)
        if isinstance(found, Exception):
            raise found
        return found


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000_000

    def __call__(self) -> int:
        return self.now


def engine(
    store: JobStore, files: Files, clock: Clock | None = None, supersede: Any = "off"
) -> Dispatcher:
    policy = RepoPolicy(supersede=supersede)
    clock = clock or Clock()
    return Dispatcher(
        store,
        slot_limit_for=lambda _repo: 2,
        supersede_for=lambda _repo: policy.supersede,
        pipelines=PipelineDriver(store, lambda: files, lambda _repo: policy, clock=clock),
        clock=clock,
    )


def deliver(store: JobStore, job_id: str, sha: str, received_at: int | None = None) -> None:
    store.create(
        NewJob(
            job_id=job_id,
            repo=REPO,
            event="push",
            sha=sha,
            timeout_seconds=600,
            ref="refs/heads/main",
            branch="main",
            pipeline_owed=True,
        ),
        now=received_at,
    )


def statuses(store: JobStore, run_id: str) -> dict[str, str]:
    count = int(store.get(run_id).step_count or 0)
    return {
        str(item.step_key): str(item.status)
        for item in (store.get(step_id(run_id, n)) for n in range(1, count + 1))
    }


def counters_match_items() -> None:
    counted = RepoModel.get(REPO, consistent_read=True)
    items = Counter(str(j.status) for j in JobModel.scan(consistent_read=True) if j.repo == REPO)
    for status in JobStatus:
        assert int(getattr(counted, f"n_{status.value}") or 0) == items[status.value], status
    slots = sum(1 for j in JobModel.scan(consistent_read=True) if j.repo == REPO and j.slot_held)
    active_steps = sum(
        1
        for j in JobModel.scan(consistent_read=True)
        if j.repo == REPO and str(j.status) == "active" and j.step_count is None
    )
    assert int(counted.running or 0) == active_steps + slots  # a run holds no slot


def settling_reconciler(store: JobStore, dispatcher: Dispatcher) -> Reconciler:
    """The engine's reconciliation with no grace: it settles every running pipeline now."""
    return Reconciler(
        store,
        dispatcher.promote,
        QueueSweeper(store, dispatcher.promote),
        None,
        settle_run=dispatcher.settle_run,
        retry_grace_ms=0,
    )


def test_an_expansion_replayed_makes_each_step_once_and_queues_the_root(store: JobStore) -> None:
    files = Files({"a" * 40: FILE})
    dispatcher = engine(store, files)
    deliver(store, "run-1", "a" * 40)
    insert = record("run-1")
    assert dispatcher.handle_record(insert) == ["pipeline:expanded"]
    assert dispatcher.handle_record(insert) == ["pipeline:already_done"]  # the replay
    run = store.get("run-1")
    assert (str(run.status), int(run.step_count), run.pipeline_owed) == ("active", 4, None)
    assert [h.dest for h in run.history].count("active") == 1
    assert statuses(store, "run-1") == {
        "build": "pending",  # queued by the expansion's own fan-in
        "test[n=1]": "blocked",
        "test[n=2]": "blocked",
        "report": "blocked",
    }
    assert run.deadline_shard == "run" and run.queue_repo is None
    counters_match_items()


def test_a_superseded_run_cancels_its_steps_and_no_step_supersedes_a_run(
    store: JobStore,
) -> None:
    files = Files({"a" * 40: FILE, "b" * 40: FILE})
    clock = Clock()
    dispatcher = engine(store, files, clock, supersede="all")
    deliver(store, "old", "a" * 40, received_at=clock.now)
    dispatcher.handle_record(record("old"))
    build = store.state(step_id("old", 1))
    store.transition(build, Trigger.ACTIVATE, actor="test", slot_limit=2)  # its build runs
    clock.now += 1000
    deliver(store, "new", "b" * 40, received_at=clock.now)
    before = image("old")
    outcomes = dispatcher.handle_record(record("new"))
    assert outcomes[0] == "superseded:1" and outcomes[-1] == "pipeline:expanded", outcomes
    old = store.get("old")
    assert (str(old.status), old.reason) == ("cancelled", "superseded")
    # The cancel's record cancels the old run's steps (the running one holds its slot until
    # its run is known stopped, as any cancelled job).
    dispatcher.handle_record(record("old", before))
    assert set(statuses(store, "old").values()) == {"cancelled"}
    assert str(store.get("new").status) == "active"  # the old run's steps never cancel it
    assert statuses(store, "new")["build"] == "pending"
    counters_match_items()


def test_a_lost_step_end_record_is_made_good_by_the_reconciliation(store: JobStore) -> None:
    files = Files({"a" * 40: FILE})
    dispatcher = engine(store, files)
    deliver(store, "run-2", "a" * 40)
    dispatcher.handle_record(record("run-2"))
    reconciler = settling_reconciler(store, dispatcher)
    # Each step's end is written, and none of their records is delivered (all lost): each
    # round makes the fan-in they owed.
    for wave in ((1,), (2, 3), (4,)):
        for index in wave:
            job = store.state(step_id("run-2", index))
            if job.status is JobStatus.PENDING:  # else promoted by the round's sweep
                job = store.transition(job, Trigger.ACTIVATE, actor="test", slot_limit=2)
            assert job.status is JobStatus.ACTIVE, (index, statuses(store, "run-2"))
            store.transition(job, Trigger.PASS, actor="test")
        if wave != (4,):
            assert reconciler.run_once().runs_ended == []  # the next wave is queued
    assert reconciler.run_once().runs_ended == ["run-2"]
    assert str(store.get("run-2").status) == "passed"
    assert reconciler.run_once().runs_ended == []  # ended: out of the index
    counters_match_items()


def test_an_unreadable_file_is_asked_again_then_given_up(store: JobStore) -> None:
    down = PipelineUnavailable(REPO, "a" * 40, "GitHub answered 502")
    files = Files({"a" * 40: down, "c" * 40: down})
    clock = Clock()
    dispatcher = engine(store, files, clock)
    deliver(store, "run-3", "a" * 40, received_at=clock.now)
    assert dispatcher.handle_record(record("run-3")) == ["pipeline:unavailable"]
    assert store.get("run-3").pipeline_owed and str(store.get("run-3").status) == "pending"
    assert dispatcher.promote(REPO) == 0  # passed over: owed, and its record had no grace yet
    assert files.reads == ["a" * 40]
    clock.now += OWED_GRACE_MS + 1
    files.by_sha["a" * 40] = None  # GitHub is back: the commit has no file
    assert dispatcher.promote(REPO) == 1  # the sweep's promotion reads it and runs the job
    job = store.get("run-3")
    assert (str(job.status), job.pipeline_owed, job.step_count) == ("active", None, None)

    deliver(store, "run-4", "c" * 40, received_at=clock.now)
    dispatcher.handle_record(record("run-4"))
    clock.now += 11 * 60_000  # past the patience (10 minutes)
    dispatcher.promote(REPO)
    job = store.get("run-4")
    assert (str(job.status), job.reason) == ("failed", "pipeline_unavailable")
    assert "502" in str(job.detail)
    counters_match_items()


@pytest.mark.parametrize("text", [b"steps:\n  - {key: a, command: [true], needs: [b]}\n"])
def test_a_bad_file_fails_the_run_with_its_line_and_makes_no_step(
    store: JobStore, text: bytes
) -> None:
    dispatcher = engine(store, Files({"d" * 40: text}))
    deliver(store, "run-5", "d" * 40)
    assert dispatcher.handle_record(record("run-5")) == ["pipeline:refused"]
    job = store.get("run-5")
    assert (str(job.status), job.reason, job.step_count) == ("failed", "pipeline_invalid", None)
    assert str(job.detail).startswith(".scheduler/pipeline.yml:2:"), job.detail
    assert JobModel.count(step_id("run-5", 1)) == 0
    counters_match_items()


def test_a_cancelled_runs_lost_record_still_cancels_its_steps(store: JobStore) -> None:
    """A run is cancelled and its cancel's record is lost while its steps are queued or run:
    the reconciliation cancels them (the run stays in its index until its steps ended)."""
    files = Files({"a" * 40: FILE})
    dispatcher = engine(store, files)
    deliver(store, "run-6", "a" * 40)
    dispatcher.handle_record(record("run-6"))
    build = store.state(step_id("run-6", 1))
    store.transition(build, Trigger.ACTIVATE, actor="test", slot_limit=2)
    store.transition(store.state("run-6"), Trigger.CANCEL, actor="operator")  # record lost
    reconciler = settling_reconciler(store, dispatcher)
    reconciler.run_once()
    assert set(statuses(store, "run-6").values()) == {"cancelled"}
    assert store.get("run-6").deadline_shard is None  # its steps ended: out of the index
    counters_match_items()


def test_a_refused_file_is_read_again_by_an_operators_retry(store: JobStore) -> None:
    """A bad file fails the run; once it is fixed (here: the commit's file now reads well), an
    operator's retry reads it again and runs its steps, never the repository's command."""
    files = Files({"f" * 40: b"steps:\n  - {key: a, command: [true], needs: [b]}\n"})
    dispatcher = engine(store, files)
    deliver(store, "run-7", "f" * 40)
    dispatcher.handle_record(record("run-7"))
    failed = store.get("run-7")
    assert (str(failed.reason), failed.pipeline_owed) == ("pipeline_invalid", True)
    files.by_sha["f" * 40] = FILE
    before = image("run-7")
    store.transition(store.state("run-7"), Trigger.RETRY, actor="operator")
    assert dispatcher.handle_record(record("run-7", before)) == ["pipeline:expanded"]
    run = store.get("run-7")
    assert (str(run.status), int(run.step_count), int(run.attempt)) == ("active", 4, 2)
    counters_match_items()


def test_an_owed_job_of_a_full_repository_tries_no_activation(store: JobStore) -> None:
    """No file and the repository known full: the job only stops being owed (one write) and
    waits in its queue; its activation, which could only be refused, is not sent."""
    files = Files({})
    dispatcher = engine(store, files)
    for job_id in ("busy-1", "busy-2", "waits"):
        deliver(store, job_id, "9" * 40 if job_id == "waits" else "8" * 40)
    assert dispatcher.handle_record(record("busy-1")) == ["activated"]
    assert dispatcher.handle_record(record("busy-2")) == ["activated"]  # the limit is 2
    store.create(  # a third job finds the repository full (and the dispatcher learns it)
        NewJob(job_id="plain", repo=REPO, event="push", sha="7" * 40, timeout_seconds=600)
    )
    assert dispatcher.handle_record(record("plain")) == ["queued"]
    writes: list[str] = []
    store.connection.client.meta.events.register(
        "before-call.dynamodb",
        lambda model, **_: writes.append(model.name) if "Write" in model.name else None,
    )
    assert dispatcher.handle_record(record("waits")) == ["queued"]
    assert writes == [] and store.get("waits").pipeline_owed is None
    counters_match_items()
