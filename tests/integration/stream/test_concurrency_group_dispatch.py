"""The dispatcher's side of concurrency groups against DynamoDB Local, record by record: a
promotion passes over the queued jobs of a held group (one refused write per group and pass)
and gives the free slots to the jobs behind them; a holder's end (a finish, also one that
handed its slot on, or a cancel once its run is stopped) promotes its group's next job; a
grouped head of the queue is never handed a slot; a grouped job's own record that finds its
group held leaves it queued without marking its repository full. Then the same on the real
stream with hand-offs and redelivered batches (a group's runs never overlap), and two
branches' pipeline runs whose deploy steps share a group."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from redelivering_stream import most_at_once, run_until, runs_of
from stream_records import image, record

from scheduler.config import RepoPolicy
from scheduler.db.models import RepoModel, group_key
from scheduler.db.store import HandOff, JobState, JobStore, NewJob, RunClaimed
from scheduler.db.store import system_clock as now_ms
from scheduler.local.executor import LocalExecutor
from scheduler.pipelines import CommitRef
from scheduler.runs.executor import RunResult
from scheduler.runs.pipeline_driver import PipelineDriver
from scheduler.runs.pipeline_runs import step_id
from scheduler.runs.queue_heads import QueueHeads
from scheduler.runs.starter import RunStarter
from scheduler.settings import Settings
from scheduler.stream.dispatcher import Dispatcher
from scheduler.stream.events import StreamEvent, StreamRecord
from scheduler.stream.full_repos import FullRepos
from scheduler.stream.reconciler import Reconciler
from scheduler.stream.sweeper import QueueSweeper
from state_machines import JobStatus, Trigger
from tests.conftest import counting_activations

REPO = "octo-org/deploys"


def new_job(store: JobStore, job_id: str, group: str | None = None) -> JobState:
    """A pending job of REPO (ids sort in the order the jobs are made: the queue's order)."""
    return store.create(
        NewJob(job_id, REPO, "push", "d" * 40, 60, ref="refs/heads/main", concurrency_group=group)
    )


def running(store: JobStore, job_id: str, group: str | None, limit: int) -> JobState:
    """A job of REPO made and activated, its run claimed (its id names the run)."""
    new_job(store, job_id, group)
    return store.activate(store.state(job_id), slot_limit=limit, claim=RunClaimed(f"{job_id}#1"))


def status(store: JobStore, job_id: str) -> str:
    return str(store.get(job_id).status)


def holder(group: str) -> str | None:
    """The job the group's item names (the last to take it)."""
    return RepoModel.get(group_key(REPO, group), consistent_read=True).holder


def slots_in_use() -> int:
    return int(RepoModel.get(REPO, consistent_read=True).running or 0)


def finish(store: JobStore, job_id: str, hand_off: HandOff | None = None) -> StreamRecord:
    """The job's run passes (as a runner reports it); the finish's stream record."""
    old = image(job_id)
    store.finish_run(job_id, REPO, 1, Trigger.PASS, actor="runner", hand_off=hand_off)
    return record(job_id, old)


def test_a_promotion_passes_over_held_groups_trying_each_once(store: JobStore) -> None:
    """Five slots, two held by the holders of ``deploy`` and ``docs``. The queue's head is
    theirs: each held group is refused once (its refusal memoized for the pass), and the
    three free slots go to the ungrouped jobs and the free group's job behind them."""
    running(store, "held-deploy", "deploy", 5)
    running(store, "held-docs", "docs", 5)
    queue = [
        ("q0", "deploy"),
        ("q1", "docs"),
        ("q2", "deploy"),
        ("q3", None),
        ("q4", "docs"),
        ("q5", "lint"),  # a group nobody holds
        ("q6", None),
        ("q7", None),
    ]
    for job_id, group in queue:
        new_job(store, job_id, group)
    attempts = counting_activations(store)
    dispatcher = Dispatcher(store, slot_limit_for=lambda _repo: 5)

    assert dispatcher.promote(REPO) == 3
    assert attempts == ["GroupBusy", "GroupBusy", "ok", "ok", "ok"]
    active = [job_id for job_id, _group in queue if status(store, job_id) == "active"]
    assert active == ["q3", "q5", "q6"]
    assert holder("lint") == "q5" and holder("deploy") == "held-deploy"
    assert slots_in_use() == 5

    # An ungrouped job ends: the next pass refuses each held group once again, then q7.
    attempts.clear()
    dispatcher.handle_record(finish(store, "q3"))
    assert attempts == ["GroupBusy", "GroupBusy", "ok"]
    assert status(store, "q7") == "active"
    assert [status(store, j) for j in ("q0", "q1", "q2", "q4")] == ["pending"] * 4


def test_more_than_a_promotions_reach_of_a_held_group_does_not_strand_the_job_behind(
    store: JobStore,
) -> None:
    """30 queued jobs of a held group (a promotion reads 25 jobs) ahead of an ungrouped one,
    a slot free: the ungrouped job is promoted, after one refused write for the group."""
    running(store, "held", "deploy", 2)
    for n in range(30):
        new_job(store, f"q{n:02d}", "deploy")
    new_job(store, "q30")
    attempts = counting_activations(store)
    queries: list[int] = []
    store.connection.client.meta.events.register(
        "after-call.dynamodb.Query", lambda **_: queries.append(1)
    )

    promoted = Dispatcher(store, slot_limit_for=lambda _repo: 2, promote_max=25).promote(REPO)
    assert (promoted, attempts) == (1, ["GroupBusy", "ok"])
    assert len(queries) == 3  # pages of 5, 10 and 20 jobs: each twice the last
    assert status(store, "q30") == "active"
    assert {status(store, f"q{n:02d}") for n in range(30)} == {"pending"}


def test_the_holders_finish_record_promotes_its_groups_next_job(store: JobStore) -> None:
    """Its record, handled by the dispatcher, activates the job that waited for the group."""
    dispatcher = Dispatcher(store, slot_limit_for=lambda _repo: 3)
    running(store, "g0", "deploy", 3)
    new_job(store, "g1", "deploy")
    assert dispatcher.handle_record(record("g1")) == ["queued"]  # its group is held

    outcomes = dispatcher.handle_record(finish(store, "g0"))
    assert outcomes == ["promoted:1"]
    assert status(store, "g1") == "active" and holder("deploy") == "g1"


def test_a_grouped_finish_that_handed_its_slot_on_still_promotes_its_group(
    store: JobStore,
) -> None:
    """Two slots: g0 (deploy) and u0 run; u1 then v1 (deploy) are queued. u0 ends, its record
    still in another lane; g0's finish hands its slot to u1, the head of the queue. The slot
    u0 freed is v1's now that g0 freed the group: g0's record promotes it (an ungrouped
    finish that handed its slot on owes no promotion)."""
    dispatcher = Dispatcher(store, slot_limit_for=lambda _repo: 2)
    running(store, "g0", "deploy", 2)
    running(store, "u0", None, 2)
    new_job(store, "u1")
    new_job(store, "v1", "deploy")
    finish(store, "u0")  # its record is not handled here
    hand_off = HandOff(store.state("u1"), RunClaimed("u1#1"), slot_limit=2)

    outcomes = dispatcher.handle_record(finish(store, "g0", hand_off))
    assert store.get("g0").history[-1].handed_to == "u1"
    assert outcomes == ["promoted:1"]
    assert (status(store, "u1"), status(store, "v1")) == ("active", "active")
    assert holder("deploy") == "v1" and slots_in_use() == 2


def test_a_new_job_does_not_overtake_the_group_job_its_holders_end_frees(store: JobStore) -> None:
    """Two slots: g0 (deploy) and u0 run, g1 (deploy) waits for its group. In one batch, g0's
    finish and then a new job's record: the promotion g0's finish owes runs first, so the
    slot goes to g1, whose group is free now, and the new job stays queued behind it."""
    dispatcher = Dispatcher(store, slot_limit_for=lambda _repo: 2)
    running(store, "g0", "deploy", 2)
    running(store, "u0", None, 2)
    new_job(store, "g1", "deploy")
    assert dispatcher.handle_record(record("g1")) == ["queued"]
    finished = finish(store, "g0")
    new_job(store, "newer")
    attempts = counting_activations(store)

    event = cast(StreamEvent, {"Records": [finished, record("newer")]})
    assert dispatcher.handle_event(event) == {"batchItemFailures": []}
    assert (status(store, "g1"), status(store, "newer")) == ("active", "pending")
    assert attempts == ["ok", "RepositoryFull"]  # g1 promoted; then no slot is left


class LateStops:
    """The executor's stop as CodeBuild's StopBuild gives it: asked, the run stops later."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.done: set[str] = set()

    def cancel(self, run_id: str) -> None:
        self.asked.append(run_id)

    def stopped(self, run_id: str) -> bool:
        return run_id in self.done


def test_a_cancelled_holder_keeps_its_group_until_its_slot_is_released(store: JobStore) -> None:
    """g0 (deploy) is cancelled while its run goes: its slot, and so its group, stay held
    until the run is known stopped. A promotion meanwhile passes g1 (deploy) over for u1;
    the reconciliation that frees g0's slot promotes g1."""
    stops = LateStops()
    dispatcher = Dispatcher(
        store, slot_limit_for=lambda _repo: 3, stop_run=stops.cancel, run_stopped=stops.stopped
    )
    running(store, "g0", "deploy", 3)
    new_job(store, "g1", "deploy")
    new_job(store, "u1")
    old = image("g0")
    store.transition(store.state("g0"), Trigger.CANCEL, actor="operator")
    assert store.get("g0").slot_held

    outcomes = dispatcher.handle_record(record("g0", old))
    assert outcomes[0] == "stopping" and stops.asked == ["g0#1"]
    assert dispatcher.promote(REPO) == 1  # a sweep, say: the free slot goes past g1
    assert (status(store, "g1"), status(store, "u1")) == ("pending", "active")
    reconciler = Reconciler(
        store, dispatcher.promote, QueueSweeper(store, dispatcher.promote), stops
    )
    assert reconciler.run_once().released == []  # still stopping: nothing moves
    assert status(store, "g1") == "pending" and holder("deploy") == "g0"

    stops.done.add("g0#1")
    done = reconciler.run_once()
    assert done.released == ["g0"] and done.promoted == {REPO: 1}
    assert status(store, "g1") == "active" and holder("deploy") == "g1"
    assert slots_in_use() == 2


@pytest.fixture
def executor(tmp_path: Path) -> Iterator[LocalExecutor]:
    made = LocalExecutor(tmp_path / "runs", lambda _result: None, max_parallel=2)
    yield made
    made.close()


def test_a_grouped_head_of_the_queue_is_never_handed_a_slot(
    store: JobStore, executor: LocalExecutor
) -> None:
    """One slot: g0 (deploy) runs; g1 (deploy) then u1 are queued. The queue's head is
    grouped and g0's finish frees its group: QueueHeads gives no job (not u1 either, which
    would overtake it), g0's finish is made alone and its record promotes g1. Then the head
    is u1: g1's finish hands it on."""
    running(store, "g0", "deploy", 1)
    new_job(store, "g1", "deploy")
    new_job(store, "u1")
    assert QueueHeads(store.reads).take(REPO, finishing="g0") is None
    clock = [now_ms()]
    starter = RunStarter(
        store,
        executor,
        lambda _repo: ("true",),
        hand_off_for=lambda _repo: 1,
        clock=lambda: clock[0],
    )
    dispatcher = Dispatcher(
        store, slot_limit_for=lambda _repo: 1, start_run=starter.start, claiming_starter=starter
    )

    old = image("g0")
    result = RunResult("g0", 1, exit_code=0, repo=REPO, started_at=clock[0])
    assert starter.finished(result) is JobStatus.PASSED
    assert store.get("g0").history[-1].handed_to is None  # made alone
    assert (status(store, "g1"), status(store, "u1")) == ("pending", "pending")
    assert dispatcher.handle_record(record("g0", old)) == ["promoted:1"]
    assert (status(store, "g1"), status(store, "u1")) == ("active", "pending")

    # The queue read that found g1 at its head is kept for 2 s (g1 stays its head there):
    # once it is read again, u1 heads it.
    clock[0] += 2_001
    old = image("g1")
    assert starter.finished(RunResult("g1", 1, exit_code=0, repo=REPO)) is JobStatus.PASSED
    assert store.get("g1").history[-1].handed_to == "u1"
    assert status(store, "u1") == "active"
    # Grouped, it promotes all the same (nothing is left to promote: u1 has the one slot).
    assert dispatcher.handle_record(record("g1", old)) == ["promoted:0"]


def test_a_hand_off_passes_over_a_job_whose_group_is_held_and_stops_at_a_free_one(
    store: JobStore,
) -> None:
    """g0 (deploy) runs and stays; another job's finish asks for a head: g1 (deploy) waits for
    its group, so u1 behind it is handed the slot. A grouped head whose group is free (docs)
    stops the hand-off: its finish's record promotes the queue in order."""
    running(store, "g0", "deploy", 3)
    running(store, "u0", None, 3)
    new_job(store, "g1", "deploy")
    new_job(store, "u1")
    reads = count_group_reads(store)
    heads = QueueHeads(store.reads)

    head = heads.take(REPO, finishing="u0")
    assert head is not None and head.job.job_id == "u1"
    heads.settled("u1")
    store.activate(store.state("u1"), slot_limit=3)  # as the hand-off would have
    assert reads == ["deploy"]
    new_job(store, "d1", "docs")
    heads.forget(REPO)
    assert heads.take(REPO, finishing="u0") is None  # d1: its group is free
    assert reads == ["deploy", "docs"]  # deploy's holder still known from the last read


def count_group_reads(store: JobStore) -> list[str]:
    """The concurrency groups whose holder ``store``'s reads look up, in order."""
    calls: list[str] = []
    group_holder = store.reads.group_holder

    def counted(repo: str, group: str) -> str | None:
        calls.append(group)
        return group_holder(repo, group)

    store.reads.group_holder = counted  # type: ignore[method-assign]
    return calls


def test_a_jobs_own_record_that_finds_its_group_held_leaves_it_queued_not_full(
    store: JobStore,
) -> None:
    """g1's own record finds its group held with slots free: "queued", and the repository is
    not marked full (a job queued before that moment is still tried when its record comes).
    Found full, for want of a slot, it is (the same path marks it)."""
    limit = [3]
    later = [now_ms() + 5_000]  # the records are read well after the jobs queued
    full = FullRepos(margin_ms=0, clock=lambda: later[0])
    dispatcher = Dispatcher(
        store, slot_limit_for=lambda _repo: limit[0], full_repos=full, clock=lambda: later[0]
    )
    running(store, "g0", "deploy", 3)
    new_job(store, "g1", "deploy")

    assert dispatcher.handle_record(record("g1")) == ["queued"]
    assert not full.joined_before_full(REPO, 0)  # never found full
    new_job(store, "u1")  # queued before `later`: a full mark would skip its record
    assert dispatcher.handle_record(record("u1")) == ["activated"]
    assert (status(store, "g1"), status(store, "u1")) == ("pending", "active")

    limit[0] = 2  # both slots taken now: g2's refusal is the repository's
    new_job(store, "g2", "deploy")
    assert dispatcher.handle_record(record("g2")) == ["queued"]
    assert full.joined_before_full(REPO, now_ms())


def test_a_groups_runs_never_overlap_under_hand_offs_and_redelivered_records(
    store: JobStore, tmp_path: Path, settings: Settings, ddb: Any
) -> None:
    """Eighteen jobs, three slots, seven of them ``deploy`` steps. As the local stack runs
    them: the records come from the table's real stream in two lanes, each batch again later
    (a duplicate), finishes hand their slots on (never to a deploy) and race the promotions
    the records owe. No sweeper runs, so a job stranded (a group never free again, a
    promotion not owed) fails the deadline: every job runs once, never more than three at a
    time, and no two deploys at once."""
    effects = tmp_path / "effects.log"
    script = (
        'echo "$SCHEDULER_JOB_ID start $(date +%s%N)" >> "$1"; sleep 0.05; '
        'echo "$SCHEDULER_JOB_ID end $(date +%s%N)" >> "$1"'
    )
    starter: list[RunStarter] = []

    def report(result: RunResult) -> None:
        starter[0].finished(result)

    executor = LocalExecutor(tmp_path / "runs", report, max_parallel=4)
    starter.append(
        RunStarter(
            store,
            executor,
            lambda _repo: ("sh", "-c", script, "sh", str(effects)),
            hand_off_for=lambda _repo: 3,
        )
    )
    dispatcher = Dispatcher(
        store,
        slot_limit_for=lambda _repo: 3,
        start_run=starter[0].start,
        claiming_starter=starter[0],
        stop_run=executor.cancel,
        full_repos=FullRepos(margin_ms=0),
    )
    ids = [f"j{n:02d}" for n in range(18)]
    deploys = ids[4:7] + ids[10:14]  # queued side by side: three slots would run them so

    def make_jobs() -> None:
        for job_id in ids:
            new_job(store, job_id, "deploy" if job_id in deploys else None)

    try:
        run_until(
            lambda: all(status(store, j) == "passed" for j in ids),
            dispatcher.handle_event,
            ddb=ddb,
            settings=settings,
            checkpoint="group-race",
            begin=make_jobs,
            stranded=lambda: [(j, status(store, j)) for j in ids],
        )
    finally:
        executor.close()

    marks = runs_of(effects)
    assert sorted(marks) == ids
    assert all([what for what, _at in m] == ["start", "end"] for m in marks.values())
    assert most_at_once(effects) <= 3
    assert most_at_once(effects, deploys) == 1
    handed = {store.get(j).history[-1].handed_to for j in ids} - {None}
    assert not handed & set(deploys)  # a slot is never passed on to a deploy
    for job_id in ids:
        assert [h.dest for h in store.get(job_id).history] == ["pending", "active", "passed"]
    repo = RepoModel.get(REPO, consistent_read=True)
    assert (repo.running, repo.n_active, repo.n_pending, repo.n_passed) == (0, 0, 0, 18)


PIPELINE = b"""
steps:
  - {key: build, command: [make]}
  - {key: deploy, command: [make, deploy], needs: [build], concurrency_group: production}
"""


class Files:
    """The commits' pipeline files, as the engine's port reads them."""

    def read(self, commit: CommitRef, path: str, max_bytes: int) -> bytes | None:
        assert path == ".scheduler/pipeline.yml" and commit.repo == REPO
        return PIPELINE


def test_two_runs_deploy_steps_take_their_group_in_turn(store: JobStore) -> None:
    """Two branches' runs, each a build then a ``production`` deploy (the step's group is
    copied to its job at fan-out), three slots: both builds run at once; once they passed,
    one deploy runs and the other waits for the group with slots free, until the first
    one's end record promotes it; both runs pass."""
    policy = RepoPolicy()
    dispatcher = Dispatcher(
        store,
        slot_limit_for=lambda _repo: 3,
        pipelines=PipelineDriver(store, Files, lambda _repo: policy),
    )
    for run, sha in (("run-a", "a" * 40), ("run-b", "b" * 40)):
        store.create(
            NewJob(run, REPO, "push", sha, 600, ref=f"refs/heads/{run}", pipeline_owed=True)
        )
        assert dispatcher.handle_record(record(run)) == ["pipeline:expanded"]
    builds = [step_id(run, 1) for run in ("run-a", "run-b")]
    deploys = [step_id(run, 2) for run in ("run-a", "run-b")]
    assert {store.get(j).concurrency_group for j in deploys} == {"production"}  # copied
    assert store.get(builds[0]).concurrency_group is None
    assert dispatcher.promote(REPO) == 2  # the builds, side by side

    blocked = image(deploys[1])
    ends = [dispatcher.handle_record(finish(store, job_id)) for job_id in builds]
    # build-a's fan-in unblocked deploy-a; build-b's end promoted it, then unblocked deploy-b,
    # whose own record finds the group held: it waits, with two slots free.
    assert ends == [["promoted:0", "run:running"], ["promoted:1", "run:running"]]
    assert [status(store, j) for j in deploys] == ["active", "pending"]
    assert dispatcher.handle_record(record(deploys[1], blocked)) == ["queued"]
    assert dispatcher.promote(REPO) == 0  # a sweep: still waiting
    assert holder("production") == deploys[0] and slots_in_use() == 1

    outcomes = dispatcher.handle_record(finish(store, deploys[0]))
    assert outcomes[0] == "promoted:1", outcomes
    assert status(store, deploys[1]) == "active" and holder("production") == deploys[1]
    dispatcher.handle_record(finish(store, deploys[1]))
    assert [status(store, run) for run in ("run-a", "run-b")] == ["passed", "passed"]
    first, second = (store.get(j) for j in deploys)
    assert int(second.activated_at) >= int(first.finished_at)  # one after the other
