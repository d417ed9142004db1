"""Re-running a pipeline through the real stack (``scheduler up``, DynamoDB Local, the stream
runner, real processes) with the CLI: ``retry RUN_ID --failed`` runs the failed step and what
follows it again, once each, while the steps that passed apart from it are left alone; the run
passes; ``retry STEP_ID`` runs one step of a passed run again. Every step attempt starts once."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import httpx
from git_origin import make_origin
from harness import UNSANDBOXED, LocalStackProcess, assert_doctor_reports_nothing
from pipeline_stack import RECORD, commit_pipeline, ended

# a fails its first attempt (exit 1: no automatic retry), passes the next; b waits for it and
# is skipped, c (always) runs after it anyway; d is on its own.
FLAKY = """\
steps:
  - key: a
    env: {{STEP: a}}
    command: '{record}; [ "$SCHEDULER_ATTEMPT" != 1 ] || exit 1'
  - key: b
    needs: [a]
    env: {{STEP: b}}
    command: '{record}'
  - key: c
    needs: [a]
    if: always()
    env: {{STEP: c}}
    command: '{record}'
  - key: d
    env: {{STEP: d}}
    command: '{record}'
"""


def steps_of(stack: LocalStackProcess, client: httpx.Client, run_id: str) -> dict[str, tuple]:
    found = {}
    for n in range(1, 5):
        job = stack.job(client, f"{run_id}.s{n}")
        found[str(job["step_key"])] = (job["status"], job["attempt"])
    return found


def starts_of(stack: LocalStackProcess, run_id: str) -> Counter[tuple[str, str]]:
    lines = (stack.effects / "starts.txt").read_text().splitlines()
    return Counter(
        (step, attempt)
        for job_id, step, attempt in (line.split() for line in lines)
        if job_id.startswith(f"{run_id}.")
    )


def test_a_failed_step_and_what_follows_it_run_again_each_attempt_once(tmp_path: Path) -> None:
    origin = make_origin(tmp_path / "origin")
    stack = LocalStackProcess(tmp_path, config="")
    sha = commit_pipeline(origin.path, FLAKY.format(record=RECORD.format(effects=stack.effects)))
    stack.config = (
        f'[defaults]\ncommand = ["false"]\ntimeout_seconds = 120\nconcurrency = 2\n{UNSANDBOXED}'
        f'[repos."octo/app"]\nclone_url = "{origin.path}"\n'
    )
    stack.start()
    try:
        with httpx.Client(timeout=30) as client:
            run = stack.deliver(client, "octo/app", "flaky-1", sha).json()["job_id"]
            job = ended(stack, client, run)
            assert (job["status"], job["reason"]) == ("failed", "steps_failed"), job
            assert steps_of(stack, client, run) == {
                "a": ("failed", 1),
                "b": ("skipped", 1),
                "c": ("passed", 1),
                "d": ("passed", 1),
            }

            done = stack.cli("retry", run, "--failed", "--json")
            assert done.returncode == 0, done.stderr
            answer = json.loads(done.stdout)
            assert answer["steps"] == ["a", "b", "c"] and answer["status"] == "active"
            job = ended(stack, client, run)
            assert (job["status"], job["attempt"], job["reason"]) == ("passed", 2, None), job
            assert steps_of(stack, client, run) == {
                "a": ("passed", 2),
                "b": ("passed", 1),  # skipped before: its attempt 1 had not run
                "c": ("passed", 2),
                "d": ("passed", 1),  # passed apart from a: kept
            }
            again = stack.cli("retry", run, "--failed")
            assert again.returncode == 1 and "passed, not failed" in again.stderr

            one = stack.cli("retry", f"{run}.s4")
            assert one.returncode == 0, one.stderr
            job = ended(stack, client, run)
            assert (job["status"], job["attempt"]) == ("passed", 3), job
            assert steps_of(stack, client, run)["d"] == ("passed", 2)
            # Every step attempt started exactly once, through faults or not.
            assert starts_of(stack, run) == {
                ("a", "1"): 1,
                ("c", "1"): 1,
                ("d", "1"): 1,
                ("a", "2"): 1,
                ("b", "1"): 1,
                ("c", "2"): 1,
                ("d", "2"): 1,
            }
        assert_doctor_reports_nothing(stack)
    finally:
        stack.stop()
