"""The local runtime's activation claims the run: its winner, and nobody else, starts it.

Real DynamoDB Local, real processes. Dispatchers race on the same records as stream lanes and
runner processes would; a restart finds claimed runs that never started and starts them, and
fails only the runs that were lost while they ran.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import pytest
from stream_records import image, lambda_record, record

from scheduler.db.models import JobModel
from scheduler.db.store import JobState, JobStore, NewJob, RunClaimed, system_clock
from scheduler.local.executor import LocalExecutor
from scheduler.local.run_log import LOGS_FOLDER, log_file
from scheduler.local.run_records import RunRecords
from scheduler.runs.executor import RunResult, RunStatus
from scheduler.runs.reaper import Reaper
from scheduler.runs.starter import RunStarter
from scheduler.stream.dispatcher import Dispatcher
from state_machines import JobStatus

REPO = "o/claims"


class Runner:
    """One runner process's parts: an executor on its own folder, a starter, a dispatcher."""

    def __init__(
        self,
        store: JobStore,
        folder: Path,
        starts: Path,
        *,
        sleep: float = 0.0,
        slots: int = 4,
        hangs: str = "none",
    ) -> None:
        self.store = store
        self.executor = LocalExecutor(folder, self._report, max_parallel=slots)
        # Job ``hangs`` sleeps until it is stopped; the others ``sleep`` seconds.
        script = (
            f'echo "$SCHEDULER_JOB_ID#$SCHEDULER_ATTEMPT" >> "$1"; '
            f'case "$SCHEDULER_JOB_ID" in {hangs}) sleep 60;; *) sleep {sleep};; esac'
        )
        self.starter = RunStarter(
            store, self.executor, lambda _repo: ("sh", "-c", script, "sh", str(starts))
        )
        self.dispatcher = Dispatcher(
            store,
            slot_limit_for=lambda _repo: 10,
            start_run=self.starter.start,
            claiming_starter=self.starter,
            stop_run=self.executor.cancel,
        )

    def _report(self, result: RunResult) -> None:
        self.starter.finished(result)  # made after the executor, which takes this callback

    def reaper(self, now: int | None = None, start_grace_seconds: int = 60) -> Reaper:
        """The reaper of this runner, wired as the local stack wires it (``now``: its clock)."""
        return Reaper(
            self.store,
            cancel_run=self.executor.cancel,
            status_of=self.executor.status,
            restart=self.starter.start,
            restart_claimed=self.starter.start_claimed,
            settle=self.starter.settle,
            started_at=self.executor.started_at,
            owns_claim=self.starter.owns_claim,
            start_grace_seconds=start_grace_seconds,
            clock=system_clock if now is None else lambda: now,
        )


@pytest.fixture
def starts(tmp_path: Path) -> Path:
    return tmp_path / "starts.log"


@pytest.fixture
def runners(store: JobStore, tmp_path: Path, starts: Path) -> Iterator[list[Runner]]:
    with ExitStack() as stack:
        made = [Runner(store, tmp_path / f"runner-{n}", starts) for n in range(4)]
        for runner in made:
            stack.callback(runner.executor.close)
        yield made


def new_job(store: JobStore, job_id: str, timeout: int = 60) -> JobState:
    return store.create(NewJob(job_id, REPO, "push", "a" * 40, timeout, ref="refs/heads/main"))


def started(starts: Path) -> list[str]:
    return starts.read_text().split() if starts.exists() else []


def wait_for(condition: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def activate(runner: Runner, job_id: str) -> JobModel:
    """Hand ``runner`` the new job's record, then the activation's record, as the stream
    does; returns the item as the activation left it."""
    pending = image(job_id)
    assert runner.dispatcher.handle_record(record(job_id)) == ["activated"]
    activated = record(job_id, old=pending)
    assert runner.dispatcher.handle_record(activated) == ["started"]
    return JobModel.from_raw_data(activated["dynamodb"]["NewImage"])


def test_racing_runners_activate_once_and_only_the_winner_starts_the_run(
    store: JobStore, runners: list[Runner], starts: Path
) -> None:
    """Four runners, each handed the new job's record twice at once (a redelivery, a second
    lane): one activation lands and claims the run for its runner. The activation's record,
    handed to every runner twice at once, starts the run there only, once."""
    for round_ in range(5):
        job_id = f"race-{round_}"
        new_job(store, job_id)
        pending = image(job_id)
        created = record(job_id)
        barrier = threading.Barrier(8)

        def deliver(n: int, one: object, barrier: threading.Barrier = barrier) -> list[str]:
            barrier.wait()
            return runners[n % 4].dispatcher.handle_record(one)  # type: ignore[arg-type]

        with ThreadPoolExecutor(8) as pool:
            outcomes = sorted(w for ws in pool.map(deliver, range(8), [created] * 8) for w in ws)
        assert outcomes.count("activated") == 1, outcomes
        assert set(outcomes) <= {"activated", "already_done"}, outcomes
        claimed = store.get(job_id)
        assert claimed.run_id == f"{job_id}#1" and claimed.log_location is not None
        assert claimed.started_at is None  # nothing ran yet: only the record starts it
        activated = record(job_id, old=pending)
        with ThreadPoolExecutor(8) as pool:
            assert set(w for ws in pool.map(deliver, range(8), [activated] * 8) for w in ws) == {
                "started"
            }
        wait_for(lambda job_id=job_id: store.get(job_id).status == JobStatus.PASSED.value)
        job = store.get(job_id)
        assert job.started_at is not None and int(job.started_at) >= int(job.activated_at)
        assert [h.dest for h in job.history] == ["pending", "active", "passed"]
    assert sorted(started(starts)) == sorted(f"race-{n}#1" for n in range(5))


def test_an_attempt_that_ran_is_never_started_again(
    store: JobStore, runners: list[Runner], starts: Path, tmp_path: Path
) -> None:
    """The activation's record redelivered after its run ended (a replay, a stream that
    resumed from an older checkpoint), to the runner or to one restarted on its folder;
    and a starter that claims for itself: the attempt's command ran once."""
    new_job(store, "quiet")
    pending = JobModel.from_raw_data(image("quiet"))
    active = lambda_record(pending, activate(runners[0], "quiet"))  # the activation's record
    wait_for(lambda: store.get("quiet").status == JobStatus.PASSED.value)
    wait_for(lambda: runners[0].executor.status("quiet#1") is RunStatus.GONE)
    restarted = Runner(store, tmp_path / "runner-0", starts)
    try:
        for runner in (runners[0], restarted, *runners[1:]):
            assert runner.dispatcher.handle_record(active) == ["started"]  # type: ignore[arg-type]
        image_then = JobModel.from_raw_data(active["dynamodb"]["NewImage"])
        assert restarted.starter.start_claimed(image_then) is None
        # A starter that claims for itself loses to the activation's claim.
        queued = runners[1].starter.start(image_then)
        assert queued is not None and runners[1].executor.wait(queued, 10)
        time.sleep(0.3)
    finally:
        restarted.executor.close()
    assert store.get("quiet").status == JobStatus.PASSED.value
    assert started(starts) == ["quiet#1"]


def test_an_activation_the_database_lost_is_promoted_again_and_runs_once(
    store: JobStore, runners: list[Runner], starts: Path
) -> None:
    """DynamoDB Local can lose a write it acknowledged when it is killed, and the write's
    stream record with it. A lost activation left no run behind (the run waits for that
    record), and the job, pending again at the head of its queue, is promoted again and
    runs once."""
    new_job(store, "forgotten")
    pending = store.get("forgotten")
    assert runners[0].dispatcher.handle_record(record("forgotten")) == ["activated"]
    pending.save()  # the activation is lost, and its record
    assert runners[0].dispatcher.promote(REPO) == 1
    activated = record("forgotten", old=pending.serialize())
    assert runners[0].dispatcher.handle_record(activated) == ["started"]
    wait_for(lambda: store.get("forgotten").status == JobStatus.PASSED.value)
    assert started(starts) == ["forgotten#1"]


def test_a_claimed_run_waiting_for_a_runner_is_deferred_not_timed_out(
    store: JobStore, tmp_path: Path, starts: Path
) -> None:
    runner = Runner(store, tmp_path / "one", starts, sleep=1.5, slots=1)
    try:
        new_job(store, "first", timeout=3600)
        activate(runner, "first")
        new_job(store, "second", timeout=5)  # after first's record: nothing queued ahead
        activate(runner, "second")
        wait_for(lambda: runner.executor.status("first#1") is RunStatus.RUNNING)
        assert runner.executor.status("second#1") is RunStatus.WAITING
        waiting = store.get("second")
        assert waiting.run_id == "second#1"  # claimed by its activation, not yet taken
        later = int(waiting.deadline_at) + 1_000
        assert runner.reaper(later).reap_once() == []
        deferred = store.get("second")
        assert deferred.status == JobStatus.ACTIVE.value
        assert int(deferred.deadline_at) > later
        wait_for(lambda: store.get("second").status == JobStatus.PASSED.value)
        assert started(starts) == ["first#1", "second#1"]
    finally:
        runner.executor.close()


def test_a_restart_starts_claimed_runs_that_never_spawned_and_fails_lost_ones(
    store: JobStore, tmp_path: Path, starts: Path
) -> None:
    """The stack died after two activations that claimed their runs: one run had been taken
    by a runner (its log was made, its process spawned), the other still waited for one.
    After the restart the first is ``runner_lost`` (retried by the policy), the second simply
    runs, once."""
    folder = tmp_path / "runs"
    for job_id in ("spawned", "waiting"):
        job = new_job(store, job_id)
        claim = RunClaimed(f"{job_id}#1", str(log_file(folder / LOGS_FOLDER, job_id, 1)))
        store.activate(job, slot_limit=10, claim=claim)
    log = log_file(folder / LOGS_FOLDER, "spawned", 1)
    log.parent.mkdir(parents=True)
    log.write_text("output of a run whose runner died\n")
    RunRecords(folder).starting("spawned#1")  # recorded before its spawn; the process died

    runner = Runner(store, folder, starts)
    try:
        assert runner.executor.records.kill_leftovers() == ["spawned#1"]
        assert runner.executor.status("spawned#1") is RunStatus.GONE
        assert runner.executor.status("waiting#1") is RunStatus.UNSTARTED
        reaper = runner.reaper()
        assert reaper.recover() == {"spawned": "runner_lost", "waiting": "restarted"}
        wait_for(lambda: store.get("waiting").status == JobStatus.PASSED.value)
        waiting = store.get("waiting")
        assert [h.dest for h in waiting.history] == ["pending", "active", "passed"]
        assert store.get("spawned").reason == "runner_lost"
        assert started(starts) == ["waiting#1"]
        # Judged again (a second recovery, a reaper round): nothing more happens.
        assert reaper.recover() == {}
    finally:
        runner.executor.close()


def test_a_claim_naming_another_folder_after_a_restart_is_lost_not_deferred_forever(
    store: JobStore, tmp_path: Path, starts: Path
) -> None:
    """Issue 23, item 5: the stack died with a claimed run waiting for a runner, and starts
    again from another folder: the claim names the old folder's log, which no runner here
    can start. It fails as ``runner_lost`` (retried automatically) at once, instead of being
    restarted (and started by nobody) at every round."""
    old = tmp_path / "old"
    job = new_job(store, "moved")
    claim = RunClaimed("moved#1", str(log_file(old / LOGS_FOLDER, "moved", 1)))
    store.activate(job, slot_limit=10, claim=claim)

    runner = Runner(store, tmp_path / "new", starts)
    try:
        assert runner.executor.status("moved#1") is RunStatus.UNSTARTED
        assert not runner.starter.owns_claim(store.get("moved"))
        assert runner.reaper().recover() == {"moved": "runner_lost"}
        assert runner.reaper().recover() == {}
        assert started(starts) == []
    finally:
        runner.executor.close()


def test_a_run_whose_finish_the_database_lost_is_reported_again_as_it_ended(
    store: JobStore, tmp_path: Path, starts: Path
) -> None:
    """DynamoDB Local can lose a write it acknowledged when it is killed: here the finish of
    a run that ended. The job is active again with its claim, and no runner has its run. It is
    never started again as the same attempt, by the runner that ran it or by one started after
    a restart: its outcome, kept by the runner, is reported again (neither ``runner_lost`` nor
    a timeout), whether a reaper round or a recovery finds it."""
    folder = tmp_path / "runs"
    runner = Runner(store, folder, starts)
    try:
        new_job(store, "lost")
        active = activate(runner, "lost")
        wait_for(lambda: store.get("lost").status == JobStatus.PASSED.value)
        wait_for(lambda: runner.executor.status("lost#1") is not RunStatus.FINISHING)
        passed = store.get("lost")
        for judge in ("overdue", "recovery after a restart"):
            active.save()  # the finish is lost: the item is as the activation left it
            if judge == "overdue":
                reaper = runner.reaper(int(active.deadline_at) + 1_000)
                assert reaper.reap_once() == []
            else:
                runner.executor.close()
                runner = Runner(store, folder, starts)  # a new runner on the same folder
                assert runner.executor.status("lost#1") is RunStatus.GONE
                assert runner.reaper().recover() == {"lost": "settled"}
            again = store.get("lost")
            assert again.status == JobStatus.PASSED.value, judge
            assert again.reason == passed.reason and again.exit_code == 0
        time.sleep(0.3)
        assert started(starts) == ["lost#1"]
    finally:
        runner.executor.close()


def test_a_run_lost_with_no_outcome_kept_fails_as_runner_lost(
    store: JobStore, tmp_path: Path, starts: Path
) -> None:
    """A claimed run that a runner took but whose outcome it never kept (its log exists, the
    runner died with the run) fails as ``runner_lost`` and is not started again."""
    folder = tmp_path / "runs"
    job = new_job(store, "orphan")
    claim = RunClaimed("orphan#1", str(log_file(folder / LOGS_FOLDER, "orphan", 1)))
    store.activate(job, slot_limit=10, claim=claim)
    log = log_file(folder / LOGS_FOLDER, "orphan", 1)
    log.parent.mkdir(parents=True)
    log.write_text("output of a run whose runner died\n")
    runner = Runner(store, folder, starts)
    try:
        assert runner.reaper().recover() == {"orphan": "runner_lost"}
        assert store.get("orphan").reason == "runner_lost"
        time.sleep(0.3)
        assert started(starts) == []
    finally:
        runner.executor.close()


def test_a_claimed_run_times_out_from_when_a_runner_took_it(
    store: JobStore, tmp_path: Path, starts: Path
) -> None:
    """No write marks a claimed run's start, so its activation's deadline may pass while it
    runs within its timeout (it waited for the runner): the reaper then counts the timeout
    from when the runner took it, and times it out only after that."""
    runner = Runner(store, tmp_path / "one", starts, sleep=0.5, slots=1, hangs="second")
    try:
        new_job(store, "first", timeout=3600)
        activate(runner, "first")
        new_job(store, "second", timeout=30)  # after first's record: nothing queued ahead
        activate(runner, "second")
        wait_for(lambda: runner.executor.status("second#1") is RunStatus.RUNNING)
        began = runner.executor.started_at("second#1")
        assert began is not None
        activation_deadline = int(store.get("second").deadline_at)

        assert runner.reaper(activation_deadline + 1_000, 120).reap_once() == []
        until = began + 30_000 + 120_000
        assert int(store.get("second").deadline_at) == until
        assert runner.reaper(until + 1_000, 120).reap_once() == ["second"]
        timed_out = store.get("second")
        assert (timed_out.status, timed_out.reason) == ("failed", "timed_out")
        assert runner.executor.status("second#1") is not RunStatus.RUNNING
    finally:
        runner.executor.close()
