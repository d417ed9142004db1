"""A finish hands its slot to the head of its repository's queue, in its own write.

Real DynamoDB Local, real processes. The hand-off activates the next job and claims its run in
the finish's transaction; it loses cleanly to anybody who moved that job first (a promotion,
a cancel), races with promotions without ever running a job twice or exceeding the limit, and
survives DynamoDB Local losing it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from redelivering_stream import most_at_once, run_until, runs_of
from stream_records import record

from scheduler.db.models import RepoModel
from scheduler.db.store import HandOff, JobState, JobStore, NewJob, RunClaimed
from scheduler.errors import HandOffRefused
from scheduler.local.executor import LocalExecutor
from scheduler.runs.executor import RunResult
from scheduler.runs.queue_heads import QueueHeads
from scheduler.runs.reservations import Reservations
from scheduler.runs.starter import RunStarter
from scheduler.settings import Settings
from scheduler.stream.dispatcher import Dispatcher
from scheduler.stream.full_repos import FullRepos
from state_machines import JobStatus, Trigger
from tests.conftest import counting_queue_reads

REPO = "o/hand-off"


def new_job(store: JobStore, job_id: str) -> JobState:
    return store.create(NewJob(job_id, REPO, "push", "b" * 40, 60, ref="refs/heads/main"))


def counters() -> RepoModel:
    return RepoModel.get(REPO, consistent_read=True)


def test_a_finish_activates_the_head_of_the_queue_in_its_own_write(store: JobStore) -> None:
    for job_id in ("first", "next", "last"):
        new_job(store, job_id)
    store.activate(store.state("first"), slot_limit=1)
    claim = RunClaimed("next#1", "/runs/logs/next/1.log")

    done = store.finish_run(
        "first",
        REPO,
        1,
        Trigger.PASS,
        actor="executor",
        hand_off=HandOff(store.state("next"), claim, slot_limit=1),
    )

    assert done is JobStatus.PASSED
    first, handed = store.get("first"), store.get("next")
    assert first.history[-1].handed_to == "next"  # its record owes no promotion
    assert handed.status == JobStatus.ACTIVE.value and handed.activated_at is not None
    assert (handed.run_id, handed.log_location) == ("next#1", "/runs/logs/next/1.log")
    assert handed.queue_repo is None  # out of the queue index
    repo = counters()
    assert (repo.running, repo.n_active, repo.n_pending, repo.n_passed) == (1, 1, 1, 1)


def test_a_hand_off_to_a_job_that_moved_or_over_a_lowered_limit_writes_nothing(
    store: JobStore,
) -> None:
    for job_id in ("a", "b", "taken", "queued"):
        new_job(store, job_id)
    for job_id in ("a", "b"):
        store.activate(store.state(job_id), slot_limit=2)
    read = store.state("taken")  # read from the queue, then promoted by somebody else
    store.activate(read, slot_limit=3)
    before = counters().attribute_values
    claim = RunClaimed("taken#1")
    with pytest.raises(HandOffRefused):
        store.finish_run("a", REPO, 1, Trigger.PASS, actor="t", hand_off=HandOff(read, claim, 3))
    # The limit went down to 2 while three run: the slot is not handed on.
    lowered = HandOff(store.state("queued"), RunClaimed("queued#1"), slot_limit=2)
    with pytest.raises(HandOffRefused):
        store.finish_run("a", REPO, 1, Trigger.PASS, actor="t", hand_off=lowered)
    assert store.get("a").status == JobStatus.ACTIVE.value
    assert store.get("queued").status == JobStatus.PENDING.value
    assert counters().attribute_values == before


class Runner:
    """A runner's parts as the local stack wires them, with hand-offs; every run records when
    it started and ended."""

    def __init__(self, store: JobStore, folder: Path, effects: Path, limit: int) -> None:
        script = (
            'echo "$SCHEDULER_JOB_ID start $(date +%s%N)" >> "$1"; sleep 0.05; '
            'echo "$SCHEDULER_JOB_ID end $(date +%s%N)" >> "$1"'
        )
        self.executor = LocalExecutor(folder, self._report, max_parallel=4)
        full = FullRepos(margin_ms=0)
        self.starter = RunStarter(
            store,
            self.executor,
            lambda _repo: ("sh", "-c", script, "sh", str(effects)),
            hand_off_for=lambda _repo: limit,
        )
        self.dispatcher = Dispatcher(
            store,
            slot_limit_for=lambda _repo: limit,
            start_run=self.starter.start,
            claiming_starter=self.starter,
            stop_run=self.executor.cancel,
            full_repos=full,
        )

    def _report(self, result: RunResult) -> None:
        self.starter.finished(result)


@pytest.fixture
def effects(tmp_path: Path) -> Path:
    return tmp_path / "effects.log"


@pytest.fixture
def runner(store: JobStore, tmp_path: Path, effects: Path) -> Iterator[Runner]:
    made = Runner(store, tmp_path / "runs", effects, limit=3)
    yield made
    made.executor.close()


def test_hand_offs_racing_promotions_run_every_job_once_within_the_limit(
    store: JobStore, runner: Runner, effects: Path, settings: Settings, ddb: Any
) -> None:
    """Twenty jobs, three slots. Nothing promotes but what the protocol owes: the jobs'
    records come from the table's real stream (in two lanes, as the mapping's parallelization
    runs them), each batch again later (a duplicate), and the runs' finishes hand their slots
    on (starting the next run at once), racing the promotions the other finishes' records
    owe. No sweeper runs, so a job stranded with free slots fails the deadline: every job
    runs once, never more than three at a time, and the counters end where the jobs are."""
    ids = [f"j{n:02d}" for n in range(20)]

    def make_jobs() -> None:
        for job_id in ids:
            new_job(store, job_id)

    run_until(
        lambda: all(store.get(j).status == JobStatus.PASSED.value for j in ids),
        runner.dispatcher.handle_event,
        ddb=ddb,
        settings=settings,
        checkpoint="hand-off-race",
        begin=make_jobs,
        stranded=lambda: [(j, store.get(j).status) for j in ids],
    )

    runs = runs_of(effects)
    assert sorted(runs) == ids
    assert all([what for what, _at in marks] == ["start", "end"] for marks in runs.values())
    assert most_at_once(effects) <= 3
    handed = [j for j in ids if store.get(j).history[-1].handed_to is not None]
    assert handed  # the slots did pass from finish to finish
    for job_id in ids:
        assert [h.dest for h in store.get(job_id).history] == ["pending", "active", "passed"]
    repo = counters()
    assert (repo.running, repo.n_active, repo.n_pending, repo.n_passed) == (0, 0, 0, 20)


def test_a_hand_off_the_database_lost_runs_the_next_job_once(
    store: JobStore, runner: Runner, effects: Path
) -> None:
    """DynamoDB Local loses the hand-off it acknowledged: the first job is active again with
    its run over, the next one pending again although its run ran. Activated again, the
    next job is not run twice: the outcome its run left is reported, as it ended."""
    new_job(store, "first")
    assert runner.dispatcher.handle_record(record("first")) == ["activated"]
    new_job(store, "next")  # queued behind first (a free slot aside: its record waits)
    first_active, next_pending = store.get("first"), store.get("next")
    repo_before = counters()
    runner.starter.start_claimed(first_active)  # the activation's record
    deadline = time.monotonic() + 30
    while store.get("next").status != JobStatus.PASSED.value:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert store.get("first").history[-1].handed_to == "next"
    time.sleep(0.3)  # the last report moved its outcome aside

    for lost in (first_active, next_pending, repo_before):
        lost.save()  # the hand-off and all that followed are gone
    # The reaper finds first's run gone here, and reports how it ended: the finish hands
    # the slot to next again, whose run ran before this activation.
    assert runner.starter.settle(store.get("first"))
    assert store.get("first").status == JobStatus.PASSED.value
    assert store.get("next").status == JobStatus.PASSED.value
    assert len(store.get("next").history) == 3  # pending, active, passed: once
    assert sorted(runs_of(effects)) == ["first", "next"]
    assert [what for what, _at in runs_of(effects)["next"]] == ["start", "end"]
    repo = counters()
    assert (repo.running, repo.n_active, repo.n_pending, repo.n_passed) == (0, 0, 0, 2)


def test_the_queue_is_read_a_few_jobs_ahead_and_each_head_given_once(store: JobStore) -> None:
    """Finishes of one repository share one read of its queue: each is given a different
    job, oldest first; a head that proved stale, or a read past its lifetime, reads again, and
    skips the jobs still given out (their hand-offs are in flight)."""
    for n in range(10):
        new_job(store, f"q{n}")
    now = [1_000]
    queries = counting_queue_reads(store)
    heads = QueueHeads(store.reads, read_ahead=4, max_age_ms=2_000, clock=lambda: now[0])
    with ThreadPoolExecutor(4) as pool:
        taken = list(pool.map(lambda _n: heads.take(REPO), range(4)))
    assert sorted(h.job.job_id for h in taken if h is not None) == ["q0", "q1", "q2", "q3"]
    assert len(queries) == 1 and {h.read_at for h in taken if h is not None} == {1_000}
    heads.forget(REPO)  # q0 was promoted by somebody else, say
    store.activate(store.state("q0"), slot_limit=10)
    # q1..q3 are still pending: their hand-offs have not committed yet. Given again, two
    # finishes would race for each and one of them would be refused.
    now[0] += 500
    again = heads.take(REPO)
    assert again is not None and again.job.job_id == "q4" and len(queries) == 2
    heads.settled("q2")  # its hand-off was refused, or failed: it may be given again
    heads.forget(REPO)
    assert (head := heads.take(REPO)) is not None and head.job.job_id == "q2"
    assert len(queries) == 3
    now[0] += 2_001  # too old: read again; a job given that long ago is given again
    assert (head := heads.take(REPO)) is not None and head.job.job_id == "q1"
    assert len(queries) == 4


def test_hand_offs_and_promotions_skip_the_jobs_the_other_is_activating(store: JobStore) -> None:
    """Both read the same queue head: a job one of them is activating is left to it, instead
    of a second activation that could only be refused."""
    for n in range(3):
        new_job(store, f"r{n}")
    writes: list[str] = []
    activate = store.activate

    def counted(job: JobState, **kwargs: Any) -> JobState:
        writes.append(job.job_id)
        return activate(job, **kwargs)

    store.activate = counted  # type: ignore[method-assign]
    reservations = Reservations()
    heads = QueueHeads(store.reads, reservations=reservations)
    held = heads.take(REPO)  # a finish's hand-off to r0 is in flight
    assert held is not None and held.job.job_id == "r0"
    dispatcher = Dispatcher(store, slot_limit_for=lambda _repo: 10, reservations=reservations)
    assert dispatcher.promote(REPO) == 2
    assert writes == ["r1", "r2"]  # no write for r0, which stays its hand-off's
    assert store.get("r0").status == JobStatus.PENDING.value
    heads.settled("r0")
    new_job(store, "r3")
    assert reservations.reserve("r0")  # now a promotion is activating r0
    heads.forget(REPO)
    assert (head := heads.take(REPO)) is not None and head.job.job_id == "r3"


def test_a_hand_off_with_a_slot_to_spare_does_not_mark_the_repository_full(
    store: JobStore, tmp_path: Path, effects: Path
) -> None:
    """Issue 23, item 5: limit 2, one job running; B and C queue while their INSERT records
    are still in another lane. A's finish hands its slot to B; a slot is still free, so C's
    record, when it comes, activates C (it was skipped as "queued" when the hand-off marked
    the repository full, and waited for a sweep that nothing here runs)."""
    runner = Runner(store, tmp_path / "runs", effects, limit=2)
    try:
        new_job(store, "a")
        assert runner.dispatcher.handle_record(record("a")) == ["activated"]
        new_job(store, "b")
        new_job(store, "c")
        c_insert = record("c")
        runner.starter.start_claimed(store.get("a"))  # a's activation record: a runs, ends
        deadline = time.monotonic() + 30
        while store.get("a").status != JobStatus.PASSED.value:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert store.get("a").history[-1].handed_to == "b"
        assert counters().running == 1  # b has a's slot; one is free

        assert runner.dispatcher.handle_record(c_insert) == ["activated"]
        assert store.get("c").status == JobStatus.ACTIVE.value
        assert counters().running == 2
    finally:
        runner.executor.close()
