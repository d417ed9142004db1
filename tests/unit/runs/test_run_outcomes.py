"""Pure mappings: run results to transitions, transitions to commit statuses, CodeBuild shapes."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from scheduler.aws.codebuild import (
    CodeBuildExecutor,
    SecretsProject,
    result_from_event,
    source_override,
)
from scheduler.github.statuses import StatusUpdate, status_for
from scheduler.runs.executor import RunRequest, RunResult, StartRefused
from scheduler.runs.starter import outcome_of
from state_machines import TIMED_OUT, JobStatus, Trigger

REQUEST = RunRequest(
    job_id="gh-1",
    repo="octo-org/api",
    sha="f" * 40,
    attempt=2,
    command=("make", "test"),
    timeout_seconds=90,
    event="pull_request",
    ref="refs/pull/7/head",
    pr_number=7,
)


@pytest.mark.parametrize(
    ("result", "trigger", "reason", "exit_code"),
    [
        (RunResult("j", 1, 0), Trigger.PASS, None, 0),
        (RunResult("j", 1, 3, summary="exit code 3"), Trigger.FAIL, "exit_code", 3),
        (RunResult("j", 1, None, timed_out=True), Trigger.FAIL, TIMED_OUT, None),
        (RunResult("j", 1, None, cancelled=True), Trigger.CANCEL, "cancelled", None),
        (RunResult("j", 1, None), Trigger.FAIL, "error", None),
    ],
)
def test_run_results_map_to_transitions(
    result: RunResult, trigger: Trigger, reason: str | None, exit_code: int | None
) -> None:
    got_trigger, outcome = outcome_of(result)
    assert (got_trigger, outcome.reason, outcome.exit_code) == (trigger, reason, exit_code)


def test_job_data_reaches_a_run_only_as_environment_variables() -> None:
    assert REQUEST.idempotency_key == "gh-1#2"
    assert REQUEST.environment() == {
        "SCHEDULER_JOB_ID": "gh-1",
        "SCHEDULER_REPO": "octo-org/api",
        "SCHEDULER_SHA": "f" * 40,
        "SCHEDULER_REF": "refs/pull/7/head",
        "SCHEDULER_EVENT": "pull_request",
        "SCHEDULER_ATTEMPT": "2",
        "SCHEDULER_PR_NUMBER": "7",
    }


@pytest.mark.parametrize(
    ("source", "dest", "reason", "expected"),
    [
        (None, JobStatus.PENDING, None, ("pending", "Queued")),
        (JobStatus.PENDING, JobStatus.ACTIVE, None, ("pending", "Running (attempt 1)")),
        (JobStatus.ACTIVE, JobStatus.PASSED, None, ("success", "Passed")),
        (JobStatus.ACTIVE, JobStatus.FAILED, "exit_code", ("failure", "Failed")),
        (JobStatus.ACTIVE, JobStatus.FAILED, TIMED_OUT, ("error", "Timed out")),
        (JobStatus.ACTIVE, JobStatus.CANCELLED, None, ("error", "Cancelled")),
        # A pipeline run whose steps failed failed itself (not an error of the scheduler).
        (JobStatus.ACTIVE, JobStatus.FAILED, "steps_failed", ("failure", "Failed")),
        (
            JobStatus.ACTIVE,
            JobStatus.FAILED,
            "pipeline_invalid",
            ("error", "Failed: pipeline_invalid"),
        ),
        (JobStatus.FAILED, JobStatus.ACTIVE, None, ("pending", "Running (attempt 1)")),
        (JobStatus.SKIPPED, JobStatus.BLOCKED, None, ("pending", "Waiting for its needs")),
    ],
)
def test_commit_status_per_transition(
    source: JobStatus | None, dest: JobStatus, reason: str | None, expected: tuple[str, str]
) -> None:
    assert status_for(source, dest, attempt=1, reason=reason) == expected


def test_a_queued_step_of_a_concurrency_group_says_so() -> None:
    queued = status_for(JobStatus.BLOCKED, JobStatus.PENDING, attempt=1, reason=None, group="prod")
    assert queued == ("pending", "Queued in concurrency group prod")
    running = status_for(JobStatus.PENDING, JobStatus.ACTIVE, attempt=1, reason=None, group="prod")
    assert running == ("pending", "Running (attempt 1)")


def test_status_description_is_capped_at_140_characters() -> None:
    update = StatusUpdate("o/r", "abc", "failure", "x" * 500, "ci/scheduler")
    assert len(update.body()["description"]) == 140
    assert "target_url" not in update.body()


def test_codebuild_start_request_shape() -> None:
    client = boto3.client(
        "codebuild", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    executor = CodeBuildExecutor(client, "ci-project")
    with Stubber(client) as stub:
        expected: dict[str, Any] = executor.start_build_kwargs(REQUEST)
        stub.add_response("start_build", {"build": {"id": "ci-project:1234"}}, expected)
        stub.add_response(
            "stop_build", {"build": {"id": "ci-project:1234"}}, {"id": "ci-project:1234"}
        )
        assert executor.start(REQUEST) == "ci-project:1234"
        executor.cancel("ci-project:1234")
        stub.assert_no_pending_responses()
    assert expected["idempotencyToken"] == "gh-1#2"
    assert expected["sourceVersion"] == "f" * 40
    assert expected["timeoutInMinutesOverride"] == 5  # CodeBuild's minimum
    assert {"name": "SCHEDULER_PR_NUMBER", "value": "7", "type": "PLAINTEXT"} in expected[
        "environmentVariablesOverride"
    ]
    assert '"make test"' in expected["buildspecOverride"]


def _build_event(status: str, variables: dict[str, str]) -> dict[str, Any]:
    return {
        "detail-type": "CodeBuild Build State Change",
        "detail": {
            "build-status": status,
            "build-id": "arn:aws:codebuild:us-east-1:1:build/ci-project:1234",
            "additional-information": {
                "environment": {
                    "environment-variables": [
                        {"name": k, "value": v, "type": "PLAINTEXT"} for k, v in variables.items()
                    ]
                }
            },
        },
    }


def test_codebuild_completion_events() -> None:
    ours = {"SCHEDULER_JOB_ID": "gh-1", "SCHEDULER_ATTEMPT": "2"}
    passed = result_from_event(_build_event("SUCCEEDED", ours))
    assert passed is not None and passed.passed and passed.attempt == 2
    timed_out = result_from_event(_build_event("TIMED_OUT", ours))
    assert timed_out is not None and timed_out.timed_out
    failed = result_from_event(_build_event("FAILED", ours))
    assert failed is not None and failed.exit_code == 1
    assert result_from_event(_build_event("IN_PROGRESS", ours)) is None
    assert result_from_event(_build_event("SUCCEEDED", {})) is None  # not one of ours


@pytest.mark.parametrize(
    ("url", "ref", "kind", "version"),
    [
        (
            "https://github.com/octo-org/api.git",
            "refs/pull/7/head",
            "GITHUB",
            "refs/pull/7/head^{" + "f" * 40 + "}",
        ),
        (
            "https://ghe.example.com/octo-org/api.git",
            "refs/tags/v1",
            "GITHUB_ENTERPRISE",
            "refs/tags/v1^{" + "f" * 40 + "}",
        ),
        ("https://github.com/octo-org/api.git", None, "GITHUB", "f" * 40),
    ],
)
def test_a_build_checks_out_the_jobs_repository_at_its_commit(
    url: str, ref: str | None, kind: str, version: str
) -> None:
    request = replace(REQUEST, checkout=True, clone_url=url, ref=ref)
    assert source_override(request) == {
        "sourceTypeOverride": kind,
        "sourceLocationOverride": url,
        "sourceVersion": version,
    }
    kwargs = CodeBuildExecutor(None, "ci-project").start_build_kwargs(request)
    assert kwargs["sourceLocationOverride"] == url and kwargs["sourceVersion"] == version


@pytest.mark.parametrize("url", [None, "/srv/git/api.git", "git@github.com:o/r.git"])
def test_a_build_with_no_https_clone_url_is_refused(url: str | None) -> None:
    with pytest.raises(StartRefused, match="no https clone URL"):
        source_override(replace(REQUEST, checkout=True, clone_url=url))


def test_checkout_false_builds_the_projects_own_source() -> None:
    kwargs = CodeBuildExecutor(None, "ci-project").start_build_kwargs(REQUEST)
    assert "sourceLocationOverride" not in kwargs and kwargs["sourceVersion"] == "f" * 40


SECRETS = SecretsProject("ci-secrets", "stack/run-secrets/")


def test_a_build_with_secrets_runs_in_the_secrets_project_and_names_them_only() -> None:
    request = replace(REQUEST, secrets=("NPM_TOKEN",))
    kwargs = CodeBuildExecutor(None, "ci-project", secrets=SECRETS).start_build_kwargs(request)
    assert kwargs["projectName"] == "ci-secrets"
    secret_vars = [v for v in kwargs["environmentVariablesOverride"] if v["name"] == "NPM_TOKEN"]
    # The request names the secret; CodeBuild reads its value with the project's role.
    assert secret_vars == [
        {"name": "NPM_TOKEN", "value": "stack/run-secrets/NPM_TOKEN", "type": "SECRETS_MANAGER"}
    ]


def test_a_build_without_secrets_runs_where_no_secret_can_be_read() -> None:
    kwargs = CodeBuildExecutor(None, "ci-project", secrets=SECRETS).start_build_kwargs(REQUEST)
    assert kwargs["projectName"] == "ci-project"
    assert all(v["type"] == "PLAINTEXT" for v in kwargs["environmentVariablesOverride"])


def test_secrets_without_a_secrets_project_are_refused() -> None:
    with pytest.raises(StartRefused, match="no project for builds with secrets"):
        CodeBuildExecutor(None, "ci-project").start_build_kwargs(
            replace(REQUEST, secrets=("NPM_TOKEN",))
        )
