"""Issue 10, defect 8, the pure parts: which CodeBuild errors are retried, how a described
build maps to a run result, and what a claim answers to each kind of executor."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ParamValidationError

from scheduler.aws.codebuild import is_retryable, result_from_build
from scheduler.runs.executor import UNCLAIMED, ClaimResult, RunClaim


def client_error(code: str, status: int = 400) -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": "..."},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "StartBuild")


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (client_error("ThrottlingException"), True),
        (client_error("InternalFailure", 500), True),
        (client_error("ServiceUnavailable", 503), True),
        (client_error("SomethingNew", 502), True),
        (EndpointConnectionError(endpoint_url="https://codebuild"), True),
        (client_error("InvalidInputException"), False),
        (client_error("ResourceNotFoundException"), False),
        (client_error("AccountLimitExceededException"), False),
        (client_error("OAuthProviderException"), False),
        (client_error("AccessDeniedException"), False),
        (ParamValidationError(report="sourceVersion: invalid"), False),
    ],
)
def test_only_errors_that_may_pass_are_retried(error: Exception, retryable: bool) -> None:
    assert is_retryable(error) is retryable


def _build(status: str, variables: dict[str, str]) -> dict[str, Any]:
    return {
        "id": "ci-project:1",
        "buildStatus": status,
        "environment": {
            "environmentVariables": [
                {"name": k, "value": v, "type": "PLAINTEXT"} for k, v in variables.items()
            ]
        },
    }


def test_a_described_build_maps_like_its_completion_event() -> None:
    ours = {"SCHEDULER_JOB_ID": "gh-1", "SCHEDULER_ATTEMPT": "3"}
    passed = result_from_build(_build("SUCCEEDED", ours))
    assert passed is not None and passed.passed and (passed.job_id, passed.attempt) == ("gh-1", 3)
    stopped = result_from_build(_build("STOPPED", ours))
    assert stopped is not None and stopped.cancelled
    fault = result_from_build(_build("FAULT", ours))
    assert fault is not None and fault.exit_code is None and not fault.passed
    assert result_from_build(_build("IN_PROGRESS", ours)) is None
    assert result_from_build(_build("SUCCEEDED", {})) is None  # not one of ours


@pytest.mark.parametrize(
    ("found", "may_start"),
    [
        (ClaimResult.CLAIMED, True),
        (ClaimResult.CLAIMED_BEFORE_NOT_STARTED, False),
        (ClaimResult.TAKEN, False),
    ],
)
def test_a_plain_claim_never_resumes_an_unfinished_start(
    found: ClaimResult, may_start: bool
) -> None:
    """An executor that calls the claim as a plain callable (the local one) gets "taken" for
    an earlier unfinished start: only an executor idempotent by the key may resume it, and it
    asks with :meth:`RunClaim.take`, saying for how long its idempotency holds."""
    windows: list[int] = []

    def take(resumable_for_ms: int) -> ClaimResult:
        windows.append(resumable_for_ms)
        return found

    claim = RunClaim(take)
    assert claim() is may_start
    assert claim.take(resumable_for_ms=60_000) is found
    assert windows == [0, 60_000]
    assert UNCLAIMED() is True and UNCLAIMED.take(1) is ClaimResult.CLAIMED
