"""AWS executor: one CodeBuild build per attempt.

Why CodeBuild rather than Step Functions: a CI run *is* a build (source at a sha, logs in
CloudWatch, a timeout, a stop button), and ``StartBuild`` takes an ``idempotencyToken``, so a
retried start within its window returns the same build. Beyond that window the caller's claim
in DynamoDB (``JobStore.claim_run``) keeps it to one build per ``job_id#attempt``.

Completion flows back through EventBridge's "CodeBuild Build State Change" event into the
``build_completed`` handler, which reports through the same attempt-guarded transition.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Mapping
from typing import Any

from scheduler.runs.executor import Claim, RunRequest, RunResult, RunStatus

# CodeBuild's bounds for timeoutInMinutesOverride.
MIN_TIMEOUT_MINUTES, MAX_TIMEOUT_MINUTES = 5, 2160
FINAL_STATUSES = {"SUCCEEDED", "FAILED", "FAULT", "STOPPED", "TIMED_OUT"}


class CodeBuildExecutor:
    def __init__(self, client: Any, project_name: str) -> None:
        self._client = client
        self._project = project_name

    def start_build_kwargs(self, request: RunRequest) -> dict[str, Any]:
        minutes = math.ceil(request.timeout_seconds / 60)
        kwargs: dict[str, Any] = {
            "projectName": self._project,
            "sourceVersion": request.sha,
            "idempotencyToken": request.idempotency_key,
            "timeoutInMinutesOverride": max(MIN_TIMEOUT_MINUTES, min(minutes, MAX_TIMEOUT_MINUTES)),
            # Payload values travel as data, never inside the buildspec.
            "environmentVariablesOverride": [
                {"name": name, "value": value, "type": "PLAINTEXT"}
                for name, value in sorted(request.environment().items())
            ],
        }
        if request.command:
            # The command is operator configuration; quoting keeps each argv item one word.
            kwargs["buildspecOverride"] = (
                "version: 0.2\nphases:\n  build:\n    commands:\n"
                f"      - {json_quote(shlex.join(request.command))}\n"
            )
        return kwargs

    def start(self, request: RunRequest, claim: Claim = lambda: True) -> str | None:
        if not claim():
            return None
        response = self._client.start_build(**self.start_build_kwargs(request))
        return str(response["build"]["id"])

    def cancel(self, run_id: str) -> None:
        self._client.stop_build(id=run_id)

    def status(self, key: str) -> RunStatus:
        """CodeBuild keeps the record; this executor keeps none (the reaper decides alone)."""
        return RunStatus.UNKNOWN

    def log_location(self, request: RunRequest) -> str | None:
        return None  # known only once the build exists: the console shows the run id


def json_quote(text: str) -> str:
    """A YAML double-quoted scalar (JSON string syntax is valid YAML)."""
    return json.dumps(text)


def result_from_event(event: Mapping[str, Any]) -> RunResult | None:
    """The run result a "CodeBuild Build State Change" event carries, or None.

    Events for builds we did not start (no SCHEDULER_JOB_ID) or that have not finished are
    ignored.
    """
    detail = event.get("detail") or {}
    status = detail.get("build-status")
    if status not in FINAL_STATUSES:
        return None
    info = detail.get("additional-information") or {}
    variables = {
        item.get("name"): item.get("value")
        for item in (info.get("environment") or {}).get("environment-variables") or []
    }
    job_id, attempt = variables.get("SCHEDULER_JOB_ID"), variables.get("SCHEDULER_ATTEMPT")
    if not job_id or not attempt or not str(attempt).isdigit():
        return None
    return RunResult(
        job_id=job_id,
        attempt=int(attempt),
        exit_code=0 if status == "SUCCEEDED" else (None if status != "FAILED" else 1),
        timed_out=status == "TIMED_OUT",
        cancelled=status == "STOPPED",
        summary=f"CodeBuild {status.lower()}: {detail.get('build-id', '')}"[:140],
    )
