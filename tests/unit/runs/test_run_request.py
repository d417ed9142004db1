"""A run's request is made from its job and its repository's configuration."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from scheduler.runs.executor import RunRequest, Source


def job(**changes: Any) -> Any:
    fields = {
        "job_id": "j1",
        "repo": "o/r",
        "sha": "a" * 40,
        "attempt": 1,
        "timeout_seconds": 60,
        "event": "pull_request",
        "ref": "refs/pull/7/head",
        "pr_number": 7,
        "clone_url": "https://github.com/o/r.git",
        "fork": False,
        "step": None,
    }
    fields.update(changes)
    return SimpleNamespace(**fields)


SOURCE = Source(checkout=True, sandbox=True, network=False, secrets=("NPM_TOKEN",))


def test_a_request_carries_the_repositorys_isolation_and_secrets() -> None:
    request = RunRequest.from_job(job(), ["make"], source=SOURCE)
    assert request.sandbox and not request.network
    assert request.secrets == ("NPM_TOKEN",)


def test_a_forks_run_never_gets_secrets() -> None:
    request = RunRequest.from_job(job(fork=True), ["make"], source=SOURCE)
    assert request.secrets == () and request.sandbox


def test_a_pipeline_step_runs_its_own_command_with_its_env_under_the_schedulers() -> None:
    step = {
        "command": ["sh", "-c", "make test"],
        "env": {"MODE": "ci", "SCHEDULER_JOB_ID": "forged"},
        "matrix": {"python": "3.12"},
    }
    request = RunRequest.from_job(job(job_id="j1.s2", step=json.dumps(step)), ["make"], 0, SOURCE)
    assert request.command == ("sh", "-c", "make test")
    env = request.environment()
    assert env["MODE"] == "ci" and env["python"] == "3.12"
    assert env["SCHEDULER_JOB_ID"] == "j1.s2"  # a step cannot pass for another job
