"""GitHub App mode in the stream function: a batch's check run updates of one job are merged
and sent before the invocation returns: a job that goes queued -> in progress -> completed in
one batch makes one request, in a later batch one PATCH. Through the Lambda entry point, with
real stream records of real items (DynamoDB Local) and the GitHub API stand-in. Port 18762."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from github_api_stand_in import GitHubStandIn
from stream_records import lambda_record

from scheduler.aws import handlers
from scheduler.db.models import JobModel
from scheduler.db.store import JobState, JobStore, NewJob, Outcome
from scheduler.wiring import Core
from state_machines import Trigger

REPO = "octo-org/api"
STAND_IN_PORT = 18762


@pytest.fixture(scope="module")
def github() -> Iterator[GitHubStandIn]:
    with GitHubStandIn(port=STAND_IN_PORT) as stand_in:
        stand_in.install(REPO, 92)
        yield stand_in


@pytest.fixture
def stream_function(
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
    tables: Any,
    github: GitHubStandIn,
    tmp_path: Path,
) -> Iterator[Core]:
    """The stream function's core in App mode, as Lambda runs it."""
    key = tmp_path / "app.pem"
    key.write_text(github.private_key_pem)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "stream")
    monkeypatch.setenv("SCHEDULER_GITHUB_APP_ID", str(github.app_id))
    monkeypatch.setenv("SCHEDULER_GITHUB_APP_PRIVATE_KEY_FILE", str(key))
    monkeypatch.setenv("SCHEDULER_GITHUB_API_URL", github.url)
    monkeypatch.setenv("SCHEDULER_DASHBOARD_URL", "https://lambda-checks.example.com")
    monkeypatch.delenv("SCHEDULER_CODEBUILD_PROJECT", raising=False)
    monkeypatch.delenv("SCHEDULER_CONFIG", raising=False)
    handlers.core.cache_clear()
    core = handlers.core()
    assert core.settings.on_lambda
    yield core
    handlers.core.cache_clear()


def moves(store: JobStore, job_id: str, sha: str) -> list[JobModel]:
    """The job's images: created (pending), activated, passed."""
    job = store.create(NewJob(job_id, REPO, "push", sha, 600, ref="refs/heads/main"))
    images = [store.get(job_id)]
    assert isinstance(store.activate(job, slot_limit=10), JobState)
    images.append(store.get(job_id))
    store.report(job_id, 1, Trigger.PASS, actor="test", outcome=Outcome("exit_code", None, 0))
    images.append(store.get(job_id))
    return images


def insert(image: JobModel) -> dict[str, Any]:
    record = lambda_record(image, image)
    record["eventName"] = "INSERT"
    del record["dynamodb"]["OldImage"]
    return record


def check_requests(github: GitHubStandIn) -> list[tuple[str, str]]:
    return [
        (seen.method, seen.path)
        for seen in github.seen
        if "/check-runs" in seen.path and seen.method in ("POST", "PATCH")
    ]


def test_one_batch_that_moves_a_job_three_times_makes_one_check_run_request(
    stream_function: Core, store: JobStore, github: GitHubStandIn
) -> None:
    sha = "a1" * 20
    created, active, passed = moves(store, "lambda-one-batch", sha)
    before = len(check_requests(github))
    batch = {
        "Records": [insert(created), lambda_record(created, active), lambda_record(active, passed)]
    }
    assert handlers.stream(batch, None) == {"batchItemFailures": []}
    # Sent before the invocation returned: one request, straight to the conclusion.
    assert check_requests(github)[before:] == [("POST", f"/repos/{REPO}/check-runs")]
    (run,) = [r for r in github.runs_of(REPO) if r.fields.get("external_id") == "lambda-one-batch"]
    assert (run.fields["status"], run.fields["conclusion"]) == ("completed", "success")
    assert run.fields["head_sha"] == sha and len(run.history) == 1
    assert github.problems == []


def test_a_later_batch_updates_the_check_run_with_one_patch(
    stream_function: Core, store: JobStore, github: GitHubStandIn
) -> None:
    created, active, passed = moves(store, "lambda-two-batches", "b2" * 20)
    before = len(check_requests(github))
    assert handlers.stream({"Records": [insert(created)]}, None) == {"batchItemFailures": []}
    assert check_requests(github)[before:] == [("POST", f"/repos/{REPO}/check-runs")]
    batch = {"Records": [lambda_record(created, active), lambda_record(active, passed)]}
    assert handlers.stream(batch, None) == {"batchItemFailures": []}
    (run,) = [
        r for r in github.runs_of(REPO) if r.fields.get("external_id") == "lambda-two-batches"
    ]
    assert check_requests(github)[before:] == [
        ("POST", f"/repos/{REPO}/check-runs"),
        ("PATCH", f"/repos/{REPO}/check-runs/{run.id}"),
    ]
    assert [h["status"] for h in run.history] == ["queued", "completed"]
    assert github.problems == []
