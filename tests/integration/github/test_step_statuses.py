"""Commit statuses of a pipeline run and its steps, from the real items' stream records
(DynamoDB Local) to the request a loopback stand-in for GitHub's API receives: the run under
the repository's ``status_context``, each step under ``<status_context>/<step key>``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from scheduler.db.queries import Queries
from scheduler.db.store import JobStore
from scheduler.github.statuses import CommitStatusObserver, GitHubNotifier
from scheduler.runs.operations import Operations
from scheduler.runs.pipeline_runs import step_id
from scheduler.stream.decide import read_transition
from tests.failed_pipeline import red_run
from tests.integration.github.test_notify import FakeGitHub
from tests.stream_records import image, record

TOKEN = "ghp_step_statuses"
REPO = "octo-org/steps"
SHA = "e" * 40


@pytest.fixture
def fake_github() -> Iterator[FakeGitHub]:
    with FakeGitHub.serving() as server:
        yield server


def posted(github: FakeGitHub) -> list[tuple[str, str, str, str]]:
    """(context, state, description, target_url) of each request, in order; each one to the
    commit's statuses, with the token."""
    found = []
    for request in github.requests:
        assert request["path"] == f"/repos/{REPO}/statuses/{SHA}"
        assert request["headers"]["Authorization"] == f"Bearer {TOKEN}"
        body: dict[str, Any] = request["body"]
        assert set(body) == {"state", "description", "context", "target_url"}
        found.append((body["context"], body["state"], body["description"], body["target_url"]))
    github.requests.clear()
    return found


def test_each_step_has_its_own_context_and_the_run_the_pipelines(
    store: JobStore, fake_github: FakeGitHub
) -> None:
    notifier = GitHubNotifier(TOKEN, api_url=fake_github.url, max_workers=0, sleep=lambda _: 0)
    observer = CommitStatusObserver(
        notifier, lambda repo: "ci/scheduler", target_url="https://ci.example/jobs/{job_id}"
    )

    def observe(job_id: str, old: dict[str, Any]) -> None:
        transition = read_transition(record(job_id, old))
        assert transition is not None
        observer(transition)

    run_id = red_run(store, REPO)
    lint, unit, e2e = (step_id(run_id, n) for n in (1, 2, 3))
    # Each item's last change, as its stream record carries it (the old image's status).
    for job_id, source in (
        (lint, "active"),
        (unit, "active"),
        (e2e, "blocked"),
        (run_id, "active"),
    ):
        old = image(job_id)
        old["status"] = {"S": source}
        observe(job_id, old)
    url = "https://ci.example/jobs/"
    assert posted(fake_github) == [
        ("ci/scheduler/lint", "success", "Passed", url + lint),
        ("ci/scheduler/unit", "failure", "Failed", url + unit),
        ("ci/scheduler/e2e", "success", "Skipped", url + e2e),
        ("ci/scheduler", "failure", "Failed: unit", url + run_id),
    ]
    # A re-run: the steps wait under their own contexts, the run runs again under its own.
    before = {job_id: image(job_id) for job_id in (unit, e2e, run_id)}
    Operations(store, Queries()).retry_failed_steps(run_id)
    for job_id, old in before.items():
        observe(job_id, old)
    assert posted(fake_github) == [
        ("ci/scheduler/unit", "pending", "Waiting for its needs", url + unit),
        ("ci/scheduler/e2e", "pending", "Waiting for its needs", url + e2e),
        ("ci/scheduler", "pending", "Running (attempt 2)", url + run_id),
    ]
    notifier.close()
