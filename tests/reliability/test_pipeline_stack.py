"""A repository's ``.scheduler/pipeline.yml`` runs as steps through the real stack (``scheduler
up``, DynamoDB Local, the stream runner, real processes): fan-out to a matrix, fan-in, a step
that fails and is retried by its own policy, a failed need that skips its dependents while an
``always()`` step runs, and a bad file that fails the run with its line and makes no step."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import httpx
from git_origin import make_origin
from harness import UNSANDBOXED, LocalStackProcess, assert_doctor_reports_nothing, wait_for
from pipeline_stack import RECORD, commit_pipeline, ended

# Each step records its start (key, attempt) in the effects folder; ``test`` variant n=2 fails
# its first attempt.

GREEN = """\
steps:
  - key: build
    command: '{record}'
    env: {{STEP: build}}
  - key: test
    needs: [build]
    matrix: {{n: ["1", "2", "3"]}}
    env: {{STEP: test}}
    retry: {{attempts: 2, on: [exit_code]}}
    command: '{record}; [ "$n" != 2 ] || [ "$SCHEDULER_ATTEMPT" != 1 ] || exit 3'
  - key: report
    needs: [test]
    env: {{STEP: report}}
    command: '{record}'
"""

RED = """\
steps:
  - key: a
    env: {{STEP: a}}
    command: '{record}; exit 1'
  - key: b
    needs: [a]
    env: {{STEP: b}}
    command: '{record}'
  - key: c
    needs: [a]
    if: always()
    env: {{STEP: c}}
    command: '{record}'
"""

BAD = """\
steps:
  - key: a
    command: [true]
  - key: b
    needs: [nowhere]
    command: [true]
"""


def steps_of(stack: LocalStackProcess, client: httpx.Client, run_id: str, count: int) -> dict:
    found = {}
    for n in range(1, count + 1):
        job = stack.job(client, f"{run_id}.s{n}")
        found[str(job["step_key"])] = job
    return found


def test_a_repositorys_pipeline_runs_its_steps_each_attempt_once(tmp_path: Path) -> None:
    origin = make_origin(tmp_path / "origin")
    stack = LocalStackProcess(tmp_path, config="")
    record = RECORD.format(effects=stack.effects)
    green = commit_pipeline(origin.path, GREEN.format(record=record))
    red = commit_pipeline(origin.path, RED.format(record=record))
    bad = commit_pipeline(origin.path, BAD)
    stack.config = (
        f'[defaults]\ncommand = ["false"]\ntimeout_seconds = 120\nconcurrency = 2\n{UNSANDBOXED}'
        f'[repos."octo/app"]\nclone_url = "{origin.path}"\n'
    )
    stack.start()
    try:
        with httpx.Client(timeout=30) as client:
            started = time.monotonic()
            run = stack.deliver(client, "octo/app", "green-1", green).json()["job_id"]
            job = ended(stack, client, run)
            took = time.monotonic() - started
            assert job["status"] == "passed", (job["reason"], job["detail"])
            steps = steps_of(stack, client, run, 5)
            assert {key: s["status"] for key, s in steps.items()} == {
                "build": "passed",
                "test[n=1]": "passed",
                "test[n=2]": "passed",
                "test[n=3]": "passed",
                "report": "passed",
            }
            assert steps["test[n=2]"]["attempt"] == 2  # its own retry policy
            starts = (stack.effects / "starts.txt").read_text().splitlines()
            mine = [line.split() for line in starts if line.startswith(run)]
            # Every step attempt started exactly once; build first, report last.
            assert Counter((job_id, attempt) for job_id, _, attempt in mine) == {
                (f"{run}.s1", "1"): 1,
                (f"{run}.s2", "1"): 1,
                (f"{run}.s3", "1"): 1,
                (f"{run}.s3", "2"): 1,
                (f"{run}.s4", "1"): 1,
                (f"{run}.s5", "1"): 1,
            }
            assert mine[0][1] == "build" and mine[-1][1] == "report"
            print(f"\npipeline: 1 + 3 (one retried) + 1 steps ended in {took:.1f}s")

            failed = stack.deliver(client, "octo/app", "red-1", red).json()["job_id"]
            job = ended(stack, client, failed)
            assert (job["status"], job["reason"]) == ("failed", "steps_failed"), job
            assert "a" in str(job["detail"])
            steps = steps_of(stack, client, failed, 3)
            assert {key: s["status"] for key, s in steps.items()} == {
                "a": "failed",
                "b": "skipped",
                "c": "passed",
            }

            refused = stack.deliver(client, "octo/app", "bad-1", bad).json()["job_id"]
            job = ended(stack, client, refused)
            assert (job["status"], job["reason"]) == ("failed", "pipeline_invalid"), job
            assert ".scheduler/pipeline.yml:5" in str(job["detail"]), job
            assert client.get(f"{stack.url}/jobs/{refused}.s1").status_code == 404
        assert_doctor_reports_nothing(stack)
    finally:
        stack.stop()
    print(json.dumps({"starts": len(starts)}))


SLOW = """\
steps:
  - key: root
    env: {{STEP: root}}
    command: '{record}; sleep 0.5'
  - key: fan
    needs: [root]
    matrix: {{n: ["1", "2", "3"]}}
    env: {{STEP: fan}}
    command: '{record}; sleep 1'
  - key: join
    needs: [fan]
    env: {{STEP: join}}
    command: '{record}'
"""


def test_a_stack_killed_mid_pipeline_ends_every_run_each_step_attempt_started_once(
    tmp_path: Path,
) -> None:
    """Three pipeline runs (fan-out 3, fan-in 1) on one repository of concurrency 2; the stack
    is SIGKILLed (its DynamoDB Local with it) once steps run, and started again: every run
    passes (a step whose run was lost is retried as a new attempt), no step attempt ever
    started twice, and the counters equal the items."""
    origin = make_origin(tmp_path / "origin")
    stack = LocalStackProcess(tmp_path, config="")
    sha = commit_pipeline(origin.path, SLOW.format(record=RECORD.format(effects=stack.effects)))
    stack.config = (
        f'[defaults]\ncommand = ["false"]\ntimeout_seconds = 120\nconcurrency = 2\n{UNSANDBOXED}'
        f'[repos."octo/app"]\nclone_url = "{origin.path}"\n'
    )
    stack.start()
    branches = ("one", "two", "three")
    starts = stack.effects / "starts.txt"

    def started() -> list[list[str]]:
        return [line.split() for line in starts.read_text().splitlines()] if starts.exists() else []

    try:
        with httpx.Client(timeout=30) as client:

            def deliver_all() -> list[str]:
                return [
                    stack.deliver(client, "octo/app", f"kill-{b}", sha, branch=b).json()["job_id"]
                    for b in branches
                ]

            runs = deliver_all()
            wait_for("steps to run", lambda: len(started()) >= 4, 60, 0.1)
            stack.kill()
            stack.start()
            # DynamoDB Local may lose writes it acknowledged before the kill: GitHub would
            # deliver again (a delivery is idempotent by its id).
            assert deliver_all() == runs
            for run in runs:
                job = ended(stack, client, run)
                assert job["status"] == "passed", (run, job["reason"], job["detail"])
                steps = steps_of(stack, client, run, 5)
                assert set(s["status"] for s in steps.values()) == {"passed"}, steps
        assert_doctor_reports_nothing(stack)
    finally:
        stack.stop()
    attempts = Counter((job_id, attempt) for job_id, _, attempt in started())
    assert attempts and max(attempts.values()) == 1, attempts
    # Every step of every run started, and the fan-in waited: a join after its fan.
    assert {job_id for job_id, _ in attempts} == {f"{r}.s{n}" for r in runs for n in range(1, 6)}
