"""Defects 3, 4 and 7: restarts, SIGKILL, store errors and a full runner pool never fail,
lose or repeat honest work."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import httpx
from harness import (
    UNSANDBOXED,
    LocalStackProcess,
    assert_doctor_reports_nothing,
    kill_leftovers,
    run_command,
    wait_for,
)
from processes import pid_alive

from scheduler.db.store import JobStore, NewJob
from scheduler.errors import StoreUnavailable
from scheduler.local.executor import LocalExecutor
from scheduler.runs.executor import RunResult
from scheduler.runs.starter import RunStarter


def _all_done(
    stack: LocalStackProcess, client: httpx.Client, ids: list[str], ends: tuple[str, ...]
) -> bool:
    return all(stack.job(client, job_id)["status"] in ends for job_id in ids)


def test_kill_9_of_the_stack_mid_run_then_restart_kills_the_orphans_and_passes_every_job(
    tmp_path: Path,
) -> None:
    """Defect 7: SIGKILL while four runs (``sh -c`` trees) are going: their grandchildren would
    live on and the jobs wait for their deadline. After the restart the orphans are killed at
    once, the lost attempts fail as ``runner_lost`` and are retried automatically (the policy
    allows no retry), every job passes, and no attempt's command ran twice."""
    stack = LocalStackProcess(tmp_path, config="")
    stack.config = (
        f"[defaults]\ncheckout = false\ncommand = {run_command(stack.effects, 4, via_shell=True)}\n"
        + UNSANDBOXED
        + "concurrency = 4\ntimeout_seconds = 600\n[defaults.retry]\nattempts = 1\n"
    )
    stack.start()
    orphans: list[int] = []
    try:
        with httpx.Client(timeout=30) as client:
            ids = [
                stack.deliver(client, "chaos/restart", f"restart-{n}", f"{n + 1:040x}").json()[
                    "job_id"
                ]
                for n in range(4)
            ]
            first = wait_for("four runs to start", lambda: len(stack.starts()) == 4, 30)
            assert first
            orphans = [start.pid for start in stack.starts()]
            stack.kill()
            assert all(pid_alive(pid) for pid in orphans)  # PDEATHSIG did not reach them
            began = time.monotonic()
            stack.start()
            # At the restart, not at their 10-minute deadline (a loaded machine may take a
            # minute or two to start the stack; the deadline is far beyond that).
            wait_for("the orphans to be killed", lambda: not any(map(pid_alive, orphans)), 180)
            assert time.monotonic() - began < 180
            # ``failed`` is no end here: a lost attempt fails as runner_lost, then is retried.
            wait_for(
                "every job to pass", lambda: _all_done(stack, client, ids, ("passed",)), 90, 0.5
            )
            for job_id in ids:
                job = stack.job(client, job_id)
                assert (job["status"], job["attempt"]) == ("passed", 2), job
                reasons = [entry.get("reason") for entry in job["history"]]
                assert "runner_lost" in reasons, job["history"]
        starts = Counter((s.job_id, s.attempt) for s in stack.starts())
        assert set(starts.values()) == {1}, starts  # no attempt ran twice
        assert sorted(starts) == sorted((job_id, n) for job_id in ids for n in (1, 2))
        assert_doctor_reports_nothing(stack)
    finally:
        stack.stop()
        kill_leftovers(orphans)
    assert not any(pid_alive(start.pid) for start in stack.starts())


def test_more_active_jobs_than_runners_are_never_timed_out_for_waiting(tmp_path: Path) -> None:
    """Defect 4: one runner, three repositories, 4 s timeouts, runs of 2 s: jobs wait for the
    runner far longer than their timeout, and none may be failed for it."""
    stack = LocalStackProcess(
        tmp_path, config="", max_runs=1, env={"SCHEDULER_START_GRACE_SECONDS": "1"}
    )
    stack.config = (
        f"[defaults]\ncheckout = false\ncommand = {run_command(stack.effects, 2)}\n"
        + UNSANDBOXED
        + "concurrency = 3\ntimeout_seconds = 4\n[defaults.retry]\nattempts = 1\n"
    )
    stack.start()
    try:
        with httpx.Client(timeout=30) as client:
            ids = [
                stack.deliver(client, f"chaos/pool-{n % 3}", f"pool-{n}", f"{n + 1:040x}").json()[
                    "job_id"
                ]
                for n in range(6)
            ]
            ended = ("passed", "failed")
            wait_for("every job to finish", lambda: _all_done(stack, client, ids, ended), 120, 0.5)
            jobs = [stack.job(client, job_id) for job_id in ids]
        assert [(j["status"], j["attempt"]) for j in jobs] == [("passed", 1)] * 6, jobs
        assert len(stack.starts()) == 6
        assert_doctor_reports_nothing(stack)
    finally:
        stack.stop()


def test_an_outcome_that_cannot_be_recorded_at_once_is_recorded_later_not_falsified(
    store: JobStore, tmp_path: Path
) -> None:
    """Defect 3: the store is unavailable when a passing run reports (and when it claims): the
    claim and the report are tried again; the job ends passed, never "executor error"."""
    job = store.activate(
        store.create(NewJob("flaky", "o/r", "push", "a" * 40, 60, ref="refs/heads/main")),
        slot_limit=5,
    )
    failures = {"claim": 1, "report": 2}
    reported = threading.Event()
    starter: RunStarter | None = None

    def finished(result: RunResult) -> None:
        if failures["report"]:
            failures["report"] -= 1
            raise StoreUnavailable("the store is restarting")
        assert starter is not None
        starter.finished(result)
        reported.set()

    class FlakyClaims(JobStore):
        def claim_run(self, *args: object, **kwargs: object) -> None:
            if failures["claim"]:
                failures["claim"] -= 1
                raise StoreUnavailable("the store is restarting")
            super().claim_run(*args, **kwargs)  # type: ignore[arg-type]

    flaky = FlakyClaims(store.connection)
    executor = LocalExecutor(tmp_path, finished)
    starter = RunStarter(flaky, executor, lambda _repo: ["true"])
    starter.start(store.get(job.job_id))
    assert reported.wait(30)
    executor.close()
    done = store.get("flaky")
    assert (done.status, done.attempt, done.reason) == ("passed", 1, None)
    assert failures == {"claim": 0, "report": 0}
    assert executor.records.unreported_results() == []  # nothing left for a restart to report
