"""The CLI on pipeline runs, through its real console script against DynamoDB Local: re-run
a run's failed steps or one step (``retry RUN_ID --failed``, ``retry STEP_ID``), with one
error line and exit 1 for what cannot be re-run."""

from __future__ import annotations

from typing import Any

from scheduler.db.store import JobStore
from scheduler.runs.pipeline_runs import step_id
from tests import failed_pipeline
from tests.integration.cli.test_cli import refused, run, run_json

REPO = "octo-org/steps"


def red_run(store: JobStore, job_id: str = "gh-red") -> str:
    return failed_pipeline.red_run(store, REPO, job_id)


def test_retry_failed_reruns_the_failed_steps_once(store: JobStore) -> None:
    run_id = red_run(store)
    done = run_json("retry", run_id, "--failed")
    assert done == {
        "job_id": run_id,
        "run_id": run_id,
        "repo": REPO,
        "previous_status": "failed",
        "status": "active",
        "attempt": 2,
        "steps": ["unit", "e2e"],
        "reset": [step_id(run_id, 2), step_id(run_id, 3)],
    }
    assert str(store.get(step_id(run_id, 1)).status) == "passed"  # lint keeps its result
    assert (
        str(store.get(step_id(run_id, 2)).status),
        int(store.get(step_id(run_id, 2)).attempt),
    ) == (
        "blocked",
        2,
    )
    # Twice: refused, one line, nothing written.
    refused(run("retry", run_id, "--failed"), 1, run_id, "active, not failed")
    refused(run("retry", "no-such-run", "--failed"), 1, "not found")
    refused(run("retry", run_id), 1, "pipeline run", "--failed")
    refused(run("retry", step_id(run_id, 1), "--failed"), 1, "a pipeline's step")
    refused(run("retry", "--failed"), 2, "--failed needs")


def test_retry_one_step_and_a_plain_job(store: JobStore, make_job: Any) -> None:
    run_id = red_run(store, "gh-red-2")
    human = run("retry", step_id(run_id, 1))
    assert human.returncode == 0, human.stderr
    assert human.stdout.strip() == (
        f"re-ran 1 step (step {step_id(run_id, 1)} of run {run_id}, {REPO}):"
        " run failed -> active, attempt 2: lint"
    )
    refused(run("retry", step_id(run_id, 1)), 1, "the step is blocked")
    make_job("plain-failed", "failed")
    refused(run("retry", "plain-failed", "--failed"), 1, "not a pipeline run")
    retried = run_json("retry", "plain-failed")
    assert (retried["status"], retried["attempt"]) == ("pending", 2)


def test_show_lists_a_runs_steps_and_a_step_names_its_run(store: JobStore) -> None:
    run_id = red_run(store, "gh-show")
    data = run_json("show", run_id)
    assert [(s["step_key"], s["status"], s["attempt"]) for s in data["steps"]] == [
        ("lint", "passed", 1),
        ("unit", "failed", 1),
        ("e2e", "skipped", 1),
    ]
    lint = data["steps"][0]
    assert lint["job_id"] == step_id(run_id, 1) and lint["reason"] is None
    assert lint["duration_ms"] == lint["finished_at"] - lint["activated_at"] >= 0
    assert data["steps"][2]["duration_ms"] is None  # never ran
    assert "log_tail" not in data  # a run runs no command of its own
    human = run("show", run_id)
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert any(line.split() == ["steps", "3/3", "steps,", "1", "failed"] for line in lines)
    header = next(
        i for i, line in enumerate(lines) if line.split()[:3] == ["STEP", "KEY", "STATUS"]
    )
    rows = [line.split() for line in lines[header + 2 : header + 5]]
    assert [row[:4] for row in rows] == [
        [step_id(run_id, 1), "lint", "passed", "1"],
        [step_id(run_id, 2), "unit", "failed", "1"],
        [step_id(run_id, 3), "e2e", "skipped", "1"],
    ]
    assert rows[1][-1] == "exit_code" and rows[2][4] == "-"
    step = run("show", step_id(run_id, 2))
    assert step.returncode == 0, step.stderr
    assert any(line.split() == ["pipeline", "run", run_id] for line in step.stdout.splitlines())
    assert any(line.split() == ["step", "unit"] for line in step.stdout.splitlines())


def test_status_shows_a_runs_progress(store: JobStore) -> None:
    run_id = red_run(store, "gh-status")
    run("retry", step_id(run_id, 1))  # lint runs again: 2 of 3 steps ended
    data = run_json("status", REPO)
    by_id = {job["job_id"]: job for job in data["jobs"]}
    assert by_id[run_id]["progress"] == {"total": 3, "ended": 2, "failed": 1}
    assert by_id[run_id]["step_count"] == 3
    assert by_id[step_id(run_id, 2)]["step_key"] == "unit"
    assert "progress" not in by_id[step_id(run_id, 2)]
    human = run("status", REPO)
    assert human.returncode == 0, human.stderr
    lines = {line.split()[0]: line for line in human.stdout.splitlines() if line.strip()}
    assert "PIPELINE" in lines["JOB"]
    assert "2/3 steps, 1 failed" in lines[run_id]
    assert "step unit" in lines[step_id(run_id, 2)]


def test_show_names_a_steps_concurrency_group(store: JobStore) -> None:
    text = (
        "steps:\n"
        "  - {key: build, command: make}\n"
        "  - {key: deploy, command: ./deploy, needs: [build], concurrency_group: prod}\n"
    )
    run_id = failed_pipeline.expanded_run(store, text, repo=REPO, job_id="gh-group")
    deploy = run_json("show", step_id(run_id, 2))
    assert deploy["concurrency_group"] == "prod"
    assert run_json("show", step_id(run_id, 1))["concurrency_group"] is None
    human = run("show", step_id(run_id, 2))
    assert human.returncode == 0, human.stderr
    assert any(
        line.split()[:4] == ["concurrency", "group", "prod", "(one"]
        for line in human.stdout.splitlines()
    ), human.stdout
