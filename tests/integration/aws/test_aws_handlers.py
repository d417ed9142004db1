"""The AWS-side run path through the Lambda entry points: CodeBuild start, completion, reaper.

CodeBuild cannot run here: its client is stubbed (botocore's Stubber checks every request's
shape against the service model and the exact parameters); DynamoDB is the real DynamoDB Local.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from botocore.stub import ANY, Stubber
from stream_records import lambda_event

from scheduler.aws import handlers
from scheduler.db.store import JobState, JobStore, NewJob
from state_machines import Trigger


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch, settings: Any, tables: Any) -> Iterator[Any]:
    monkeypatch.setenv("SCHEDULER_CODEBUILD_PROJECT", "ci-project")
    monkeypatch.delenv("SCHEDULER_CONFIG", raising=False)
    handlers.core.cache_clear()
    yield handlers.core()
    handlers.core.cache_clear()


def build_event(status: str, job_id: str, attempt: int) -> dict[str, Any]:
    return {
        "source": "aws.codebuild",
        "detail-type": "CodeBuild Build State Change",
        "detail": {
            "build-status": status,
            "project-name": "ci-project",
            "build-id": "arn:aws:codebuild:us-east-1:123:build/ci-project:b1",
            "additional-information": {
                "environment": {
                    "environment-variables": [
                        {"name": "SCHEDULER_JOB_ID", "value": job_id, "type": "PLAINTEXT"},
                        {"name": "SCHEDULER_ATTEMPT", "value": str(attempt), "type": "PLAINTEXT"},
                    ]
                }
            },
        },
    }


def active(store: JobStore, job_id: str, timeout: int = 600) -> JobState:
    job = store.create(
        NewJob(
            job_id,
            "octo-org/api",
            "push",
            "d" * 40,
            timeout,
            ref="refs/heads/main",
            clone_url="https://github.com/octo-org/api.git",
        )
    )
    result = store.activate(job, slot_limit=5)
    assert isinstance(result, JobState)
    return result


def test_a_build_starts_once_and_its_completion_passes_the_job(runtime: Any) -> None:
    active(runtime.store, "aws-1")
    with Stubber(runtime.runs.executor._client) as stub:
        stub.add_response(
            "start_build",
            {"build": {"id": "ci-project:b1"}},
            {
                "projectName": "ci-project",
                # The job's repository at its exact commit, on the ref that holds it.
                "sourceTypeOverride": "GITHUB",
                "sourceLocationOverride": "https://github.com/octo-org/api.git",
                "sourceVersion": f"refs/heads/main^{{{'d' * 40}}}",
                "idempotencyToken": "aws-1#1",
                "timeoutInMinutesOverride": 10,
                "environmentVariablesOverride": ANY,
                "buildspecOverride": ANY,
            },
        )
        assert runtime.runs.start(runtime.store.get("aws-1")) == "ci-project:b1"
        # A duplicate stream record: the claim is taken, no second StartBuild.
        assert runtime.runs.start(runtime.store.get("aws-1")) is None
        stub.assert_no_pending_responses()
    assert runtime.store.get("aws-1").run_id == "ci-project:b1"

    assert handlers.build_completed(build_event("IN_PROGRESS", "aws-1", 1), None) == {
        "reported": False
    }
    answer = handlers.build_completed(build_event("SUCCEEDED", "aws-1", 1), None)
    assert answer == {"reported": True, "job_id": "aws-1"}
    assert runtime.store.get("aws-1").status == "passed"
    # EventBridge delivers at least once: the duplicate changes nothing.
    assert handlers.build_completed(build_event("SUCCEEDED", "aws-1", 1), None)["reported"] is False


def test_a_failed_build_fails_the_job(runtime: Any) -> None:
    active(runtime.store, "aws-2")
    handlers.build_completed(build_event("FAILED", "aws-2", 1), None)
    job = runtime.store.get("aws-2")
    assert (job.status, job.exit_code) == ("failed", 1)


def test_the_scheduled_reaper_times_out_and_stops_the_build(runtime: Any) -> None:
    job = active(runtime.store, "aws-3", timeout=0)
    runtime.store.claim_run(job, "aws-3#1")
    runtime.store.record_run_id("aws-3", 1, "aws-3#1", "ci-project:b3")
    with Stubber(runtime.runs.executor._client) as stub:
        # Before timing it out, the reaper asks how the build is doing: still in progress.
        stub.add_response(
            "batch_get_builds",
            {"builds": [{"id": "ci-project:b3", "buildStatus": "IN_PROGRESS"}]},
            {"ids": ["ci-project:b3"]},
        )
        stub.add_response("stop_build", {"build": {"id": "ci-project:b3"}}, {"id": "ci-project:b3"})
        # It keeps its slot until CodeBuild reports the build ended: the reconciliation of the
        # same round finds it still going and asks again.
        stub.add_response(
            "batch_get_builds",
            {"builds": [{"id": "ci-project:b3", "buildStatus": "IN_PROGRESS"}]},
            {"ids": ["ci-project:b3"]},
        )
        stub.add_response("stop_build", {"build": {"id": "ci-project:b3"}}, {"id": "ci-project:b3"})
        assert handlers.reap({}, None) == {
            "timed_out": ["aws-3"],
            "promoted": {},
            "runs_ended": [],
            "released": [],
            "stopping": ["aws-3"],
            "retried": [],
            "settled": [],
        }
        stub.assert_no_pending_responses()
    assert runtime.store.get("aws-3").reason == "timed_out"
    assert runtime.queries.stats("octo-org/api").running == 1


def test_a_cancel_stops_the_build_before_the_slot_is_freed(runtime: Any) -> None:
    """Issue 10, defect 1 on AWS: the stream function stops the build (StopBuild), then frees
    the slot the cancel kept; a redelivered record stops nothing twice and frees nothing twice."""
    from scheduler.runs.operations import Operations

    job = active(runtime.store, "aws-4")
    runtime.store.claim_run(job, "aws-4#1")
    runtime.store.record_run_id("aws-4", 1, "aws-4#1", "ci-project:b4")
    before = runtime.store.get("aws-4")
    Operations(runtime.store, runtime.queries).cancel("aws-4")
    after = runtime.store.get("aws-4")
    assert after.slot_held and runtime.queries.stats("octo-org/api").running == 1
    event = lambda_event(before, after)
    with Stubber(runtime.runs.executor._client) as stub:
        stub.add_response("stop_build", {"build": {"id": "ci-project:b4"}}, {"id": "ci-project:b4"})
        # StopBuild only asks: the slot is freed once BatchGetBuilds reports the build ended.
        stub.add_response(
            "batch_get_builds",
            {"builds": [{"id": "ci-project:b4", "buildStatus": "STOPPED"}]},
            {"ids": ["ci-project:b4"]},
        )
        assert handlers.stream(event, None) == {"batchItemFailures": []}
        stub.assert_no_pending_responses()
    assert not runtime.store.get("aws-4").slot_held
    assert runtime.queries.stats("octo-org/api").running == 0
    with Stubber(runtime.runs.executor._client) as stub:
        stub.add_response("stop_build", {"build": {"id": "ci-project:b4"}}, {"id": "ci-project:b4"})
        stub.add_response(
            "batch_get_builds",
            {"builds": [{"id": "ci-project:b4", "buildStatus": "STOPPED"}]},
            {"ids": ["ci-project:b4"]},
        )
        assert handlers.stream(event, None) == {"batchItemFailures": []}  # the redelivery
    assert runtime.queries.stats("octo-org/api").running == 0


def test_the_scheduled_reaper_also_promotes_a_stalled_queue(runtime: Any) -> None:
    first = active(runtime.store, "aws-stall-1")
    runtime.store.create(
        NewJob("aws-stall-2", first.repo, "push", "d" * 40, 60, ref="refs/heads/main")
    )
    # The first finishes; the stream record that would have promoted the second is lost.
    runtime.store.transition(first, Trigger.PASS, actor="runner")
    assert handlers.reap({}, None) == {
        "timed_out": [],
        "promoted": {first.repo: 1},
        "released": [],
        "stopping": [],
        "retried": [],
        "settled": [],
        "runs_ended": [],
    }
    assert runtime.store.get("aws-stall-2").status == "active"
