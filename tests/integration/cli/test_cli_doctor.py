"""``scheduler doctor`` through the real console script against DynamoDB Local: counters that
drift from their jobs and stranded jobs are listed (exit 1), a healthy system exits 0, and a
system moving while it is read is not reported for its moves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from scheduler.db.models import RepoModel, group_key
from scheduler.db.queries import Queries
from scheduler.db.store import JobState, JobStore, NewJob
from scheduler.runs.doctor import Doctor
from state_machines import Trigger

SCRIPT = Path(sys.executable).with_name("scheduler")
REPO = "octo-org/doctor"


def doctor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), "doctor", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
        check=False,
    )


def new_job(store: JobStore, job_id: str, repo: str = REPO) -> JobState:
    return store.create(NewJob(job_id, repo, "push", "f" * 40, 600, ref="refs/heads/main"))


def finished(store: JobStore, job_id: str, repo: str = REPO) -> None:
    job = store.activate(new_job(store, job_id, repo), slot_limit=2)
    store.transition(job, Trigger.PASS, actor="runner")


def test_a_healthy_system_exits_0(store: JobStore) -> None:
    finished(store, "fine-1")
    store.activate(new_job(store, "fine-2"), slot_limit=2)  # active, within its deadline

    result = doctor("--json")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["healthy"] is True
    assert (found["repositories"], found["jobs"]) == (1, 2)
    assert found["drift"] == [] and found["stranded"] == []

    human = doctor()
    assert human.returncode == 0 and human.stdout.startswith("healthy: 1 repositories, 2 jobs")


def test_drift_and_stranded_jobs_are_listed_and_exit_1(store: JobStore) -> None:
    finished(store, "drift-1")
    # A cancel whose record was lost: the job still holds its slot.
    held = store.activate(new_job(store, "held-1"), slot_limit=1)
    store.transition(held, Trigger.CANCEL, actor="operator")
    # A queued job of a repository with a free slot whose promotion was lost.
    new_job(store, "queued-1", "octo-org/idle")
    # A counter moved by hand.
    RepoModel(REPO).update(actions=[RepoModel.n_passed.add(1)])

    result = doctor("--json", "--stranded-after", "0s")
    assert result.returncode == 1, result.stderr
    found = json.loads(result.stdout)
    assert found["healthy"] is False
    assert found["drift"] == [{"repo": REPO, "counter": "n_passed", "recorded": 2, "actual": 1}]
    problems = {(s["job_id"], s["problem"]) for s in found["stranded"]}
    assert problems == {
        ("held-1", "holds_slot_after_finish"),
        ("queued-1", "queued_with_free_slot"),
    }

    # Younger than the threshold: not stranded yet (the drift stays).
    later = json.loads(doctor("--json", "--stranded-after", "1h").stdout)
    assert later["stranded"] == [] and len(later["drift"]) == 1

    human = doctor("--stranded-after", "0s")
    assert human.returncode == 1
    assert "3 problems" in human.stdout and "holds slot after finish" in human.stdout


def test_active_jobs_past_their_deadline_are_stranded(ticking_store: JobStore) -> None:
    # The ticking clock starts half an hour ago: the 600 s deadline (and its grace) is long past.
    ticking_store.activate(new_job(ticking_store, "late-1"), slot_limit=2)
    found = json.loads(doctor("--json").stdout)
    assert [(s["job_id"], s["problem"]) for s in found["stranded"]] == [("late-1", "past_deadline")]


def test_a_bad_age_is_a_usage_error_on_one_line(tables: Any) -> None:
    result = doctor("--stranded-after", "soon")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --stranded-after"), result.stderr


def test_a_system_moving_while_it_is_read_shows_no_drift(store: JobStore) -> None:
    """Threads create, activate and finish jobs of several repositories while doctors read."""
    repos = [f"octo-org/busy{n}" for n in range(3)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn(repo: str) -> None:
        n = 0
        try:
            while not stop.is_set():
                finished(store, f"{repo.rsplit('/', 1)[1]}-{n}", repo)
                n += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(repo,)) for repo in repos]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)
        diagnoses = [
            Doctor(Queries(), clock=lambda: time.time_ns() // 1_000_000).diagnose()
            for _ in range(3)
        ]
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert not errors, errors
    for diagnosis in diagnoses:
        assert diagnosis.drift == [], diagnosis.drift
        assert diagnosis.stranded == []
    settled = Doctor(Queries(), clock=lambda: time.time_ns() // 1_000_000).diagnose()
    assert settled.healthy and settled.busy == [] and settled.repositories == len(repos)


def test_a_concurrency_groups_overlap_is_drift_and_its_waiting_job_is_not_stranded(
    store: JobStore,
) -> None:
    """The group's item is no repository; a job waiting for its held group is not stranded
    (a slot free or not); two jobs of a group holding slots (its item edited by hand) is a
    drift of the group, and then exit 1."""

    for job_id in ("deploy-1", "deploy-2"):
        store.create(NewJob(job_id, REPO, "push", "f" * 40, 600, concurrency_group="deploy"))
    store.activate(store.state("deploy-1"), slot_limit=5)  # deploy-2 waits, four slots free
    found = json.loads(doctor("--json", "--stranded-after", "0s").stdout)
    assert (found["healthy"], found["repositories"], found["jobs"]) == (True, 1, 2)

    RepoModel(group_key(REPO, "deploy")).delete()  # by hand: the group's holder forgotten
    store.activate(store.state("deploy-2"), slot_limit=5)
    result = doctor("--json")
    assert result.returncode == 1
    found = json.loads(result.stdout)
    assert found["drift"] == [{"repo": REPO, "counter": "group:deploy", "recorded": 1, "actual": 2}]
