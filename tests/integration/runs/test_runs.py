"""Runs start once per attempt, report through guarded transitions, and are reaped when lost."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest

from scheduler.db.models import RepoModel
from scheduler.db.store import JobState, JobStore, NewJob
from scheduler.errors import JobNotFound
from scheduler.local import executor as executor_module
from scheduler.local.executor import LocalExecutor, run_id_for
from scheduler.runs.executor import RunRequest, RunResult
from scheduler.runs.reaper import Reaper
from scheduler.runs.starter import RunStarter
from state_machines import JobStatus, TransitionConflict, Trigger

# A command that records each start (the side effect counted by the tests) and its environment,
# in a folder per attempt outside its work directory (which is removed when the run ends).
RECORDER = (
    "import json, os, sys, time; "
    "e = os.environ; "
    "d = os.path.join(sys.argv[3], e['SCHEDULER_JOB_ID'], e['SCHEDULER_ATTEMPT']); "
    "os.makedirs(d, exist_ok=True); "
    "open(os.path.join(d, 'starts.log'), 'a').write(os.environ['SCHEDULER_JOB_ID'] + '\\n'); "
    "json.dump(dict(os.environ), open(os.path.join(d, 'env.json'), 'w')); "
    "print('hello from the run'); "
    "time.sleep(float(sys.argv[1])); sys.exit(int(sys.argv[2]))"
)


RECORDS = Path("records")  # set per test (see the ``records`` fixture)


@pytest.fixture(autouse=True)
def records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where this test's commands record their starts: ``records/<job_id>/<attempt>/``."""
    monkeypatch.setattr(sys.modules[__name__], "RECORDS", tmp_path / "records")
    return tmp_path / "records"


def command(sleep: float = 0.0, exit_code: int = 0) -> tuple[str, ...]:
    return (sys.executable, "-c", RECORDER, str(sleep), str(exit_code), str(RECORDS))


def request(job_id: str = "j1", **changes: object) -> RunRequest:
    fields: dict[str, object] = {
        "job_id": job_id,
        "repo": "o/r",
        "sha": "a" * 40,
        "attempt": 1,
        "command": command(),
        "timeout_seconds": 30,
        "ref": "refs/heads/main",
    }
    fields.update(changes)
    return RunRequest(**fields)  # type: ignore[arg-type]


class Results:
    def __init__(self) -> None:
        self.items: list[RunResult] = []
        self.event = threading.Event()

    def __call__(self, result: RunResult) -> None:
        self.items.append(result)
        self.event.set()


@pytest.fixture
def results() -> Results:
    return Results()


@pytest.fixture
def executor(tmp_path: Path, results: Results) -> Iterator[LocalExecutor]:
    ex = LocalExecutor(
        tmp_path,
        results,
        max_parallel=4,
        base_env={"PATH": "/usr/bin:/bin", "GITHUB_WEBHOOK_SECRET": "s3cret"},
    )
    yield ex
    ex.close()


def test_a_run_gets_job_data_as_environment_and_a_log(
    executor: LocalExecutor, results: Results, tmp_path: Path
) -> None:
    run_id = executor.start(request(command=command(exit_code=0), pr_number=7))
    assert executor.wait(run_id, 60)
    assert results.items[0].passed
    env = json.loads((tmp_path / "records" / "j1" / "1" / "env.json").read_text())
    assert env["SCHEDULER_REPO"] == "o/r" and env["SCHEDULER_PR_NUMBER"] == "7"
    assert "GITHUB_WEBHOOK_SECRET" not in env  # secrets never reach user commands
    log = executor.log_path(request()).read_text()
    assert "hello from the run" in log


def test_failure_reports_exit_code_and_summary(executor: LocalExecutor, results: Results) -> None:
    assert executor.wait(executor.start(request(command=command(exit_code=3))), 30)
    result = results.items[0]
    assert result.exit_code == 3 and not result.passed
    assert result.summary.startswith("exit code 3: hello from the run")


def test_same_key_starts_one_process(executor: LocalExecutor, tmp_path: Path) -> None:
    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(lambda _: executor.start(request(command=command(0.2))), range(8)))
    assert ids == {run_id_for(request())}
    assert executor.wait(ids.pop(), 60)
    assert (tmp_path / "records" / "j1" / "1" / "starts.log").read_text().splitlines() == ["j1"]
    assert not (tmp_path / "work" / "j1").exists()  # a passed run's work directory is removed


def test_timeout_kills_the_whole_process_group(executor: LocalExecutor, results: Results) -> None:
    spawner = (
        "import subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "print(child.pid, flush=True); time.sleep(60)"
    )
    req = request(command=(sys.executable, "-c", spawner), timeout_seconds=1)
    assert executor.wait(executor.start(req), 60)
    assert results.items[0].timed_out
    child_pid = int(executor.log_path(req).read_text().split()[0])
    deadline = time.monotonic() + 60
    while psutil.pid_exists(child_pid) and time.monotonic() < deadline:
        if psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE:
            break
        time.sleep(0.05)
    assert not psutil.pid_exists(child_pid) or psutil.Process(child_pid).status() == "zombie"


def test_cancel_stops_a_run(executor: LocalExecutor, results: Results) -> None:
    run_id = executor.start(request(command=command(sleep=60)))
    time.sleep(0.3)
    executor.cancel(run_id)
    assert executor.wait(run_id, 60)
    assert results.items[0].cancelled


# -- with the store: claims, reports, the reaper --------------------------------------------


def active_job(store: JobStore, job_id: str, timeout: int = 30) -> JobState:
    job = store.create(NewJob(job_id, "o/r", "push", "a" * 40, timeout, ref="refs/heads/main"))
    result = store.activate(job, slot_limit=10)
    assert isinstance(result, JobState)
    return result


def test_two_starters_race_and_one_run_happens(store: JobStore, tmp_path: Path) -> None:
    active_job(store, "race")
    finished = Results()
    # Two executors stand for two runner processes; the claim in DynamoDB arbitrates.
    executors = [LocalExecutor(tmp_path / f"runner-{n}", finished) for n in range(2)]
    starters = [RunStarter(store, ex, lambda _repo: command(0.2)) for ex in executors]
    image = store.get("race")
    barrier = threading.Barrier(8)

    def start(n: int) -> str | None:
        barrier.wait()
        return starters[n % 2].start(image)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(start, range(8)))
    assert finished.event.wait(60)
    for ex in executors:
        ex.close()
    starts = (tmp_path / "records" / "race" / "1" / "starts.log").read_text().splitlines()
    assert starts == ["race"]
    job = store.get("race")
    assert job.run_id == "race#1" and job.started_at is not None
    assert job.log_location is not None and job.log_location.endswith("race/attempt-1.log")


def test_report_finishes_once_and_late_reports_change_nothing(store: JobStore) -> None:
    active_job(store, "rep")
    starter = RunStarter(store, LocalExecutor(Path("/nonexistent"), lambda _r: None), lambda _r: ())
    done = starter.finished(RunResult("rep", 1, 0, summary="exit code 0"))
    assert done is JobStatus.PASSED
    before = store.get("rep").to_simple_dict()
    assert starter.finished(RunResult("rep", 1, 1)) is None  # duplicate/late report
    assert starter.finished(RunResult("rep", 7, 0)) is None  # another attempt's report
    assert store.get("rep").to_simple_dict() == before


def test_a_read_free_finish_races_a_cancel_and_reports_and_one_wins(store: JobStore) -> None:
    """``finish_run`` (the local runner's report, no read first) against a cancel and copies
    of itself: exactly one transition lands, and the counters move once."""
    for round_ in range(6):
        job = active_job(store, f"free{round_}")
        barrier = threading.Barrier(5)

        def finish(n: int, job: JobState = job, barrier: threading.Barrier = barrier) -> str:
            barrier.wait()
            try:
                if n == 0:
                    store.transition(job, Trigger.CANCEL, actor="operator")
                    return "cancelled"
                store.finish_run(job.job_id, "o/r", 1, Trigger.PASS, actor="executor")
                return "passed"
            except TransitionConflict:
                return "lost"

        with ThreadPoolExecutor(5) as pool:
            outcomes = sorted(pool.map(finish, range(5)))
        assert outcomes.count("lost") == 4, outcomes
        final = store.get(job.job_id)
        assert final.status == ("cancelled" if "cancelled" in outcomes else "passed")
        assert len(final.history) == 3  # created, activated, and one finish
        assert int(final.version) == job.version + 1
    counters = RepoModel.get("o/r", consistent_read=True)
    finished = int(counters.n_passed) + int(counters.n_cancelled)
    assert (finished, int(counters.n_active)) == (6, 0)


def test_a_read_free_finish_names_the_attempt_and_the_repository(store: JobStore) -> None:
    active_job(store, "named")
    with pytest.raises(TransitionConflict):  # another attempt's report
        store.finish_run("named", "o/r", 2, Trigger.PASS, actor="executor")
    with pytest.raises(TransitionConflict):  # a repository that is not the job's
        store.finish_run("named", "other/repo", 1, Trigger.PASS, actor="executor")
    with pytest.raises(TransitionConflict):  # no such job: nothing is created
        store.finish_run("ghost", "o/r", 1, Trigger.PASS, actor="executor")
    assert store.get("named").status == "active"
    assert store.finish_run("named", "o/r", 1, Trigger.FAIL, actor="executor") is JobStatus.FAILED
    with pytest.raises(RepoModel.DoesNotExist):  # the refused finish wrote no counters
        RepoModel.get("other/repo", consistent_read=True)
    with pytest.raises(JobNotFound):
        store.get("ghost")


def test_reaper_times_out_overdue_jobs_and_stops_their_runs(
    store: JobStore, settings: object
) -> None:
    overdue = active_job(store, "late", timeout=1)
    active_job(store, "fine", timeout=3600)
    store.claim_run(overdue, "late#1")
    cancelled: list[str] = []
    now = int(time.time() * 1000) + 5_000
    reaper = Reaper(store, cancel_run=cancelled.append, clock=lambda: now)
    assert reaper.reap_once() == ["late"]
    assert reaper.reap_once() == []  # a second pass finds nothing: it is idempotent
    late = store.get("late")
    assert (late.status, late.reason) == ("failed", "timed_out")
    assert cancelled == ["late#1"]
    assert store.get("fine").status == "active"
    # A run's report after the reaper is moot.
    with pytest.raises(TransitionConflict):
        store.report("late", 1, Trigger.PASS, actor="executor")


def _failed_then_retried(store: JobStore, job_id: str, actor: str, delay_ms: int) -> None:
    job = active_job(store, job_id)
    failed = store.transition(job, Trigger.FAIL, actor="executor")
    retried = store.transition(failed, Trigger.RETRY, actor=actor, start_delay_ms=delay_ms)
    store.activate(retried, slot_limit=10)


@pytest.mark.parametrize(
    ("actor", "delay_ms", "delayed"), [("retry-policy", 1000, True), ("operator", 0, False)]
)
def test_backoff_delays_only_automatic_retries(
    store: JobStore, tmp_path: Path, actor: str, delay_ms: int, delayed: bool
) -> None:
    job_id = f"backoff-{actor}"
    _failed_then_retried(store, job_id, actor, delay_ms)
    image = store.get(job_id)
    # The backoff travels with the job, so the stream's StartRun carries it to the starter.
    assert JobState.from_model(image).start_delay_ms == delay_ms
    finished = Results()
    executor = LocalExecutor(tmp_path, finished)
    asked: list[float] = []  # the delay each run request carries to the executor
    start = executor.start

    def recorded(run: RunRequest, *args: Any) -> str | None:
        asked.append(run.delay_seconds)
        return start(run, *args)

    executor.start = recorded  # type: ignore[method-assign]
    starter = RunStarter(store, executor, lambda _repo: command())
    began = time.monotonic()
    starter.start(image, delay_ms=JobState.from_model(image).start_delay_ms)
    assert finished.event.wait(60)
    executor.close()
    # Asked for the backoff (or none) and, when asked, waited at least that long; how soon an
    # undelayed run starts is the machine's speed, not this test's.
    assert asked == [delay_ms / 1000]
    if delayed:
        assert time.monotonic() - began >= 1.0
    starter.finished(finished.items[0])
    assert (store.get(job_id).status, store.get(job_id).attempt) == ("passed", 2)


def test_work_directories_and_old_logs_stay_bounded(tmp_path: Path, results: Results) -> None:
    executor = LocalExecutor(tmp_path, results, max_parallel=2, keep_failed_workdirs=2)
    try:
        for n in range(6):
            code = 1 if n % 2 else 0  # three pass, three fail
            run_id = executor.start(request(f"w{n}", command=command(exit_code=code)))
            assert executor.wait(run_id, 60)
        work = sorted(p.name for p in (tmp_path / "work").iterdir())
        assert work == ["w3", "w5"]  # the last two failed runs; passed ones are removed
        assert executor._runs == {}  # ended runs are forgotten: memory stays bounded
        assert executor.prune_logs(3600) == 0  # logs are kept for the retention
        assert executor.prune_logs(0) == 6
        assert list((tmp_path / "logs").iterdir()) == []
    finally:
        executor.close()


def test_pruning_spares_the_log_folder_of_a_run_about_to_write_its_first_line(
    tmp_path: Path, results: Results
) -> None:
    """A run makes its job's log folder, then opens its log in it: a prune in between (the
    stack prunes once right after it starts, as runs start) must see a new folder, not an
    empty one as old as the epoch. Removing it failed the run as ``error``."""
    executor = LocalExecutor(tmp_path, results)
    try:
        fresh = tmp_path / "logs" / "starting"
        fresh.mkdir(parents=True)
        old = tmp_path / "logs" / "old"
        old.mkdir()
        (old / "attempt-1.log").write_text("done\n")
        past = time.time() - 7200
        os.utime(old / "attempt-1.log", (past, past))
        assert executor.prune_logs(3600) == 1
        assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["starting"]
    finally:
        executor.close()


def test_a_group_is_signalled_only_while_its_leader_is_unreaped(
    executor: LocalExecutor, results: Results, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Signalled after the reap, a group's number may already be another run's (pids wrap
    within minutes on a busy machine): that run would end as killed, exit code -15 or -9."""
    late: list[int] = []
    real = os.killpg

    def killpg(pgid: int, signum: int) -> None:
        try:  # still our child, exited or not, and not reaped: the number is still ours
            os.waitid(os.P_PID, pgid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            late.append(signum)
        real(pgid, signum)

    monkeypatch.setattr(os, "killpg", killpg)
    timed_out = executor.start(request("slow", command=command(sleep=60), timeout_seconds=1))
    cancelled = executor.start(request("cancelled", command=command(sleep=60)))
    time.sleep(0.5)
    executor.cancel(cancelled)
    assert executor.wait(timed_out, 60) and executor.wait(cancelled, 60)
    assert sorted((r.job_id, r.timed_out, r.cancelled) for r in results.items) == [
        ("cancelled", False, True),
        ("slow", True, False),
    ]
    assert late == []


def test_an_error_after_the_spawn_leaves_nothing_of_the_run_running(
    executor: LocalExecutor, results: Results, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run fails as an executor error, and its process is killed and reaped before its
    run record goes (which would otherwise be what finds it after a restart)."""
    groups: list[int] = []

    class Recorded(executor_module.ProcessGroup):
        def __init__(self, process: Any) -> None:
            super().__init__(process)
            groups.append(process.pid)

    def no_thread(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(executor_module, "ProcessGroup", Recorded)
    monkeypatch.setattr(executor_module, "OutputPump", no_thread)
    run_id = executor.start(request(command=command(sleep=60)))
    assert executor.wait(run_id, 60)
    assert results.items[0].summary == "executor error"
    (pid,) = groups
    assert not psutil.pid_exists(pid)
    assert executor.records.kill_leftovers() == []  # no run record left behind
