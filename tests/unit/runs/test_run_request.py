"""A run's request is made from its job and its repository's configuration."""

from __future__ import annotations

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
