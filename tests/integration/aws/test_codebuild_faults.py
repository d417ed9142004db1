"""Issue 10, defect 8: CodeBuild faults never lose, hang or falsify a job.

CodeBuild cannot run here: the core's own boto3 CodeBuild client is stubbed with botocore's
Stubber, which checks every request against the service model and the exact parameters given.
DynamoDB is the real DynamoDB Local; stream records are built from the job's real images, as
Lambda's event source mapping would deliver them, and go through the Lambda entry points.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from stream_records import lambda_event

from scheduler.aws import handlers
from scheduler.aws.codebuild import IDEMPOTENCY_WINDOW_MS
from scheduler.db.models import JobModel
from scheduler.db.store import JobState, JobStore, NewJob, system_clock
from scheduler.runs.operations import Operations
from scheduler.runs.starter import STOPPED, RunStarter
from scheduler.wiring import Core
from state_machines import START_FAILED, TIMED_OUT

REPO = "octo-org/api"
SHA = "e" * 40


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch, settings: Any, tables: Any) -> Iterator[Core]:
    monkeypatch.setenv("SCHEDULER_CODEBUILD_PROJECT", "ci-project")
    monkeypatch.delenv("SCHEDULER_CONFIG", raising=False)
    handlers.core.cache_clear()
    yield handlers.core()
    handlers.core.cache_clear()


def codebuild(runtime: Core) -> Any:
    """The real boto3 CodeBuild client the core's executor calls (to be stubbed)."""
    assert runtime.runs is not None
    return runtime.runs.executor._client  # type: ignore[attr-defined]


def start_params(runtime: Core, job: JobModel) -> dict[str, Any]:
    """The exact StartBuild parameters of ``job``'s current attempt."""
    assert runtime.runs is not None
    request = runtime.runs.request_for(job)
    params: dict[str, Any] = runtime.runs.executor.start_build_kwargs(request)  # type: ignore[attr-defined]
    assert params["idempotencyToken"] == f"{job.job_id}#{job.attempt}"
    return params


def new_job(store: JobStore, job_id: str, timeout: int = 600) -> JobState:
    url = f"https://github.com/{REPO}.git"
    return store.create(
        NewJob(job_id, REPO, "push", SHA, timeout, ref="refs/heads/main", clone_url=url)
    )


def active(store: JobStore, job_id: str, timeout: int = 600) -> JobState:
    return store.activate(new_job(store, job_id, timeout), slot_limit=5)


def running(store: JobStore, job_id: str, build_id: str, timeout: int = 600) -> JobState:
    """An active job whose build started and was recorded (as the stream function does)."""
    job = active(store, job_id, timeout)
    store.claim_run(job, f"{job_id}#1")
    store.record_run_id(job_id, 1, f"{job_id}#1", build_id)
    return job


def build(build_id: str, status: str, job_id: str, attempt: int = 1) -> dict[str, Any]:
    """A build as BatchGetBuilds describes it (the parts the service model requires)."""
    return {
        "id": build_id,
        "buildStatus": status,
        "environment": {
            "type": "LINUX_CONTAINER",
            "image": "aws/codebuild/standard:7.0",
            "computeType": "BUILD_GENERAL1_SMALL",
            "environmentVariables": [
                {"name": "SCHEDULER_JOB_ID", "value": job_id, "type": "PLAINTEXT"},
                {"name": "SCHEDULER_ATTEMPT", "value": str(attempt), "type": "PLAINTEXT"},
            ],
        },
    }


def state_change(status: str, job_id: str, build_id: str, attempt: int = 1) -> dict[str, Any]:
    """EventBridge's "CodeBuild Build State Change" event."""
    return {
        "source": "aws.codebuild",
        "detail-type": "CodeBuild Build State Change",
        "detail": {
            "build-status": status,
            "project-name": "ci-project",
            "build-id": f"arn:aws:codebuild:us-east-1:123:build/{build_id}",
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


def no_failures() -> dict[str, Any]:
    return {"batchItemFailures": []}


def test_a_throttled_start_build_is_asked_again_with_the_same_token_on_redelivery(
    runtime: Core,
) -> None:
    """The claim is taken, StartBuild is throttled: the record fails and is delivered again;
    the redelivery finds the claim without a build id and asks CodeBuild again with the same
    idempotency token (CodeBuild answers with the same build), then records the build id."""
    store = runtime.store
    pending = new_job(store, "cb-throttle")
    before = store.get("cb-throttle")
    store.activate(pending, slot_limit=5)
    activated = store.get("cb-throttle")
    record = lambda_event(before, activated)
    params = start_params(runtime, activated)

    with Stubber(codebuild(runtime)) as stub:
        stub.add_client_error(
            "start_build", "ThrottlingException", "Rate exceeded", 400, expected_params=params
        )
        failed = handlers.stream(record, None)
        assert failed["batchItemFailures"] == [
            {"itemIdentifier": record["Records"][0]["dynamodb"]["SequenceNumber"]}
        ]
        claimed = store.get("cb-throttle")
        assert (claimed.status, claimed.run_id) == ("active", "cb-throttle#1")

        stub.add_response("start_build", {"build": {"id": "ci-project:b-1"}}, params)
        assert handlers.stream(record, None) == no_failures()  # the redelivery
        # One more duplicate: the build id is recorded, so nothing is asked of CodeBuild.
        assert handlers.stream(record, None) == no_failures()
        stub.assert_no_pending_responses()

    job = store.get("cb-throttle")
    assert (job.status, job.run_id, int(job.attempt)) == ("active", "ci-project:b-1", 1)


def test_an_unfinished_start_older_than_the_token_window_is_not_started_again(
    runtime: Core,
) -> None:
    """Past CodeBuild's five-minute idempotency window the same token could start a second
    build: such a claim is left alone (the reaper judges the job at its deadline)."""
    assert runtime.runs is not None
    job = active(runtime.store, "cb-stale")
    runtime.store.claim_run(job, "cb-stale#1")  # a start that never got CodeBuild's answer
    later = RunStarter(
        runtime.store,
        runtime.runs.executor,
        lambda repo: runtime.config.policy(repo).command,
        clock=lambda: system_clock() + IDEMPOTENCY_WINDOW_MS + 1000,
    )
    with Stubber(codebuild(runtime)) as stub:
        assert later.start(runtime.store.get("cb-stale")) is None
        stub.assert_no_pending_responses()  # no StartBuild was made
    assert runtime.store.get("cb-stale").run_id == "cb-stale#1"


def test_a_refused_start_build_fails_the_attempt_as_start_failed_and_it_is_retried(
    runtime: Core,
) -> None:
    """A StartBuild that can never succeed does not hang the job: the attempt fails as
    ``start_failed`` and the stream function retries it (attempt 2) on the infrastructure's
    own budget, whose StartBuild carries the new attempt's token."""
    store = runtime.store
    pending_image = store.get(new_job(store, "cb-refused").job_id)
    store.activate(JobState.from_model(pending_image), slot_limit=5)
    active_image = store.get("cb-refused")

    with Stubber(codebuild(runtime)) as stub:
        stub.add_client_error(
            "start_build",
            "InvalidInputException",
            "Invalid source version",
            400,
            expected_params=start_params(runtime, active_image),
        )
        assert handlers.stream(lambda_event(pending_image, active_image), None) == no_failures()
        stub.assert_no_pending_responses()
    failed_image = store.get("cb-refused")
    assert (failed_image.status, failed_image.reason) == ("failed", START_FAILED)
    assert "InvalidInputException" in (failed_image.detail or "")
    assert runtime.queries.stats(REPO).running == 0  # the slot went with the failure

    # The failure's record retries the job (attempt 2, pending); the slot being free, the
    # batch's promotion activates it at once, or else the retry's own record does.
    assert handlers.stream(lambda_event(active_image, failed_image), None) == no_failures()
    retried_image = store.get("cb-refused")
    if retried_image.status == "pending":
        assert handlers.stream(lambda_event(failed_image, retried_image), None) == no_failures()
    second_image = store.get("cb-refused")
    assert (second_image.status, int(second_image.attempt)) == ("active", 2)
    queued_image = store.get("cb-refused")
    queued_image.status = "pending"  # the image before attempt 2's activation

    # The activation's record starts attempt 2's build, with that attempt's token.
    with Stubber(codebuild(runtime)) as stub:
        params = start_params(runtime, second_image)
        assert params["idempotencyToken"] == "cb-refused#2"
        stub.add_response("start_build", {"build": {"id": "ci-project:b-2"}}, params)
        assert handlers.stream(lambda_event(queued_image, second_image), None) == no_failures()
        stub.assert_no_pending_responses()
    job = store.get("cb-refused")
    assert (job.status, job.run_id, int(job.attempt)) == ("active", "ci-project:b-2", 2)
    reasons = [entry.reason for entry in job.history or [] if entry.dest == "failed"]
    assert reasons == [START_FAILED]


def test_a_lost_completion_event_is_recovered_by_the_reaper_and_the_job_passes(
    runtime: Core,
) -> None:
    """The build passed but its completion event never arrived: at the deadline the reaper
    asks CodeBuild (BatchGetBuilds) and reports the pass, instead of a false ``timed_out``."""
    running(runtime.store, "cb-lost", "ci-project:b-lost", timeout=0)
    with Stubber(codebuild(runtime)) as stub:
        stub.add_response(
            "batch_get_builds",
            {"builds": [build("ci-project:b-lost", "SUCCEEDED", "cb-lost")]},
            {"ids": ["ci-project:b-lost"]},
        )
        assert handlers.reap({}, None) == {
            "timed_out": [],
            "promoted": {},
            "runs_ended": [],
            "released": [],
            "stopping": [],
            "retried": [],
            "settled": [],
        }
        stub.assert_no_pending_responses()  # and no StopBuild
    job = runtime.store.get("cb-lost")
    assert (job.status, job.exit_code) == ("passed", 0)
    assert runtime.queries.stats(REPO).running == 0
    # The event arrives late after all: a moot duplicate.
    late = handlers.build_completed(state_change("SUCCEEDED", "cb-lost", "ci-project:b-lost"), None)
    assert late["reported"] is False


def test_an_in_progress_build_past_its_deadline_is_timed_out_and_stopped(runtime: Core) -> None:
    running(runtime.store, "cb-slow", "ci-project:b-slow", timeout=0)
    with Stubber(codebuild(runtime)) as stub:
        stub.add_response(
            "batch_get_builds",
            {"builds": [build("ci-project:b-slow", "IN_PROGRESS", "cb-slow")]},
            {"ids": ["ci-project:b-slow"]},
        )
        stub.add_response(
            "stop_build", {"build": {"id": "ci-project:b-slow"}}, {"id": "ci-project:b-slow"}
        )
        # The timed-out job keeps its slot until CodeBuild reports the build ended: the
        # reconciliation of the same round asks, finds it still going, and asks again.
        stub.add_response(
            "batch_get_builds",
            {"builds": [build("ci-project:b-slow", "IN_PROGRESS", "cb-slow")]},
            {"ids": ["ci-project:b-slow"]},
        )
        stub.add_response(
            "stop_build", {"build": {"id": "ci-project:b-slow"}}, {"id": "ci-project:b-slow"}
        )
        assert handlers.reap({}, None) == {
            "timed_out": ["cb-slow"],
            "promoted": {},
            "runs_ended": [],
            "released": [],
            "stopping": ["cb-slow"],
            "retried": [],
            "settled": [],
        }
        stub.assert_no_pending_responses()
    job = runtime.store.get("cb-slow")
    assert (job.status, job.reason, job.slot_held) == ("failed", TIMED_OUT, True)
    assert runtime.queries.stats(REPO).running == 1


def test_a_throttled_build_lookup_leaves_the_job_for_the_next_round(runtime: Core) -> None:
    """Not knowing how a build ended is no reason to time it out: the reaper asks again on
    its next round (and then reports what CodeBuild says)."""
    running(runtime.store, "cb-unsure", "ci-project:b-unsure", timeout=0)
    with Stubber(codebuild(runtime)) as stub:
        stub.add_client_error(
            "batch_get_builds",
            "ThrottlingException",
            "Rate exceeded",
            400,
            expected_params={"ids": ["ci-project:b-unsure"]},
        )
        assert handlers.reap({}, None) == {
            "timed_out": [],
            "promoted": {},
            "runs_ended": [],
            "released": [],
            "stopping": [],
            "retried": [],
            "settled": [],
        }
        assert runtime.store.get("cb-unsure").status == "active"
        stub.add_response(
            "batch_get_builds",
            {"builds": [build("ci-project:b-unsure", "FAILED", "cb-unsure")]},
            {"ids": ["ci-project:b-unsure"]},
        )
        assert handlers.reap({}, None) == {
            "timed_out": [],
            "promoted": {},
            "runs_ended": [],
            "released": [],
            "stopping": [],
            "retried": [],
            "settled": [],
        }
        stub.assert_no_pending_responses()
    job = runtime.store.get("cb-unsure")
    assert (job.status, job.reason, job.exit_code) == ("failed", "exit_code", 1)


def test_a_build_stopped_from_the_console_fails_the_job_at_once(runtime: Core) -> None:
    """A STOPPED build that the scheduler did not stop (its job is still active) fails the job
    now, as ``stopped``, and frees its slot, instead of holding it until the deadline."""
    running(runtime.store, "cb-console", "ci-project:b-console")
    answer = handlers.build_completed(
        state_change("STOPPED", "cb-console", "ci-project:b-console"), None
    )
    assert answer == {"reported": True, "job_id": "cb-console"}
    job = runtime.store.get("cb-console")
    assert (job.status, job.reason) == ("failed", STOPPED)
    assert "stopped outside the scheduler" in (job.detail or "")
    assert runtime.queries.stats(REPO).running == 0


def test_a_build_stopped_by_our_cancel_reports_nothing(runtime: Core) -> None:
    """Our cancel moves the job to ``cancelled`` before it stops the build: the STOPPED event
    that follows is moot and the job stays cancelled."""
    running(runtime.store, "cb-cancel", "ci-project:b-cancel")
    Operations(runtime.store, runtime.queries).cancel("cb-cancel")
    answer = handlers.build_completed(
        state_change("STOPPED", "cb-cancel", "ci-project:b-cancel"), None
    )
    assert answer == {"reported": False, "job_id": "cb-cancel"}
    assert runtime.store.get("cb-cancel").status == "cancelled"


def test_a_cancel_while_start_build_is_in_flight_stops_the_build_once_its_id_is_known(
    runtime: Core,
) -> None:
    """The cancel lands between the claim and CodeBuild's answer: its record can name only the
    claim (no StopBuild is possible, and none is asked), and it frees the slot. The starter then
    gets the build id, finds the attempt ended, and stops that build itself, so no build runs
    on with nobody to stop it."""
    store = runtime.store
    pending = new_job(store, "cb-race")
    before = store.get("cb-race")
    store.activate(pending, slot_limit=5)
    activated = store.get("cb-race")
    client = codebuild(runtime)

    def cancel_meanwhile(**_kwargs: Any) -> None:
        claimed = store.get("cb-race")
        assert claimed.run_id == "cb-race#1"
        Operations(store, runtime.queries).cancel("cb-race")
        # The cancel's record (another invocation, its own client) looks for a build of the
        # claim among the project's newest, to stop it, then to know it stopped: none yet.
        other = boto3.client(
            "codebuild", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
        )
        executor: Any = runtime.runs.executor if runtime.runs is not None else None
        executor._client = other
        try:
            with Stubber(other) as lookups:
                for _ in range(2):
                    lookups.add_response(
                        "list_builds_for_project",
                        {},  # no build: CodeBuild leaves ``ids`` out of an empty page
                        {"projectName": "ci-project", "sortOrder": "DESCENDING"},
                    )
                answer = handlers.stream(lambda_event(claimed, store.get("cb-race")), None)
                lookups.assert_no_pending_responses()
        finally:
            executor._client = client
        assert answer == no_failures()

    with Stubber(client) as stub:
        stub.add_response(
            "start_build", {"build": {"id": "ci-project:b-race"}}, start_params(runtime, activated)
        )
        stub.add_response(
            "stop_build", {"build": {"id": "ci-project:b-race"}}, {"id": "ci-project:b-race"}
        )
        client.meta.events.register("before-parameter-build.codebuild.StartBuild", cancel_meanwhile)
        try:
            assert handlers.stream(lambda_event(before, activated), None) == no_failures()
        finally:
            client.meta.events.unregister(
                "before-parameter-build.codebuild.StartBuild", cancel_meanwhile
            )
        stub.assert_no_pending_responses()
    job = store.get("cb-race")
    assert (job.status, job.run_id, job.slot_held) == ("cancelled", "ci-project:b-race", None)
    assert runtime.queries.stats(REPO).running == 0


def test_a_cancel_of_a_build_that_already_ended_frees_the_slot(runtime: Core) -> None:
    """StopBuild refuses a build that already ended: that is the answer, not an outage, so the
    cancel's record succeeds and the slot the cancel kept is freed (it was retried forever)."""
    running(runtime.store, "cb-ended", "ci-project:b-ended")
    before = runtime.store.get("cb-ended")
    Operations(runtime.store, runtime.queries).cancel("cb-ended")
    after = runtime.store.get("cb-ended")
    with Stubber(codebuild(runtime)) as stub:
        stub.add_client_error(
            "stop_build",
            "InvalidInputException",
            "Build ci-project:b-ended is not in progress",
            400,
            expected_params={"id": "ci-project:b-ended"},
        )
        stub.add_response(
            "batch_get_builds",
            {"builds": [build("ci-project:b-ended", "SUCCEEDED", "cb-ended")]},
            {"ids": ["ci-project:b-ended"]},
        )
        assert handlers.stream(lambda_event(before, after), None) == no_failures()
        stub.assert_no_pending_responses()
    assert not runtime.store.get("cb-ended").slot_held
    assert runtime.queries.stats(REPO).running == 0


def test_a_throttled_stop_build_is_tried_again(runtime: Core) -> None:
    """A throttled StopBuild is not taken for a stopped build: the slot stays held until the
    stop goes through."""
    assert runtime.runs is not None
    with Stubber(codebuild(runtime)) as stub:
        stub.add_client_error(
            "stop_build", "ThrottlingException", "Rate exceeded", 400, {"id": "ci-project:b-t"}
        )
        with pytest.raises(ClientError):
            runtime.runs.executor.cancel("ci-project:b-t")
        stub.assert_no_pending_responses()
