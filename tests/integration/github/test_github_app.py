"""GitHub App deliveries through the real webhook route (loopback HTTP, DynamoDB Local), with
GitHub's own payload samples (npm @octokit/webhooks-examples, installed by `make setup`) and the
GitHub API stand-in checking every request the App makes.

The re-run race: five concurrent ``check_run.rerequested`` deliveries for one failed job make
exactly one new attempt; a sender without write permission changes nothing and is told why on
the check run.
"""

from __future__ import annotations

import copy
import http.client
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import jsonschema
import pytest
from failed_pipeline import end, red_run, settle
from github_api_stand_in import GitHubStandIn

from scheduler.api.app import create_app
from scheduler.aws import handlers
from scheduler.db.models import JobModel
from scheduler.db.store import JobState, JobStore, Outcome
from scheduler.github.app_events import (
    CheckRunRequest,
    CheckSuiteRequest,
    InstallationChange,
    interpret_app_event,
)
from scheduler.github.app_mode import github_app
from scheduler.github.checks import CheckRunObserver
from scheduler.github.payload import BuildRequest, Delivery, Ignored, interpret
from scheduler.github.signature import sign
from scheduler.github.statuses import CommitStatusObserver
from scheduler.local.executor import LocalExecutor
from scheduler.local.http_server import LocalHTTPServer
from scheduler.local.stack import StackOptions
from scheduler.local.stack import compose as compose_local
from scheduler.runs.pipeline_runs import step_id
from scheduler.settings import Settings
from scheduler.stream.decide import Transition
from state_machines import JobStatus, Trigger

EXAMPLES = (
    Path(__file__).resolve().parents[2]
    / "github-webhook-examples/node_modules/@octokit/webhooks-examples/api.github.com/index.json"
)
SECRET = "github-app-webhook-secret-0123456789abcdef"
REPO = "octo-org/api"  # make_job's repository
SHA = "c0ffee" + "0" * 34  # make_job's commit
STAND_IN_PORT = 18731
HTTP_PORT = 18732
CLONE_URL = f"https://127.0.0.1:{STAND_IN_PORT}/{REPO}.git"


def samples() -> dict[str, list[dict[str, Any]]]:
    """GitHub's payload samples by event (read from the installed npm package)."""
    assert EXAMPLES.is_file(), f"{EXAMPLES} missing: run `make webhook-examples`"
    index = json.loads(EXAMPLES.read_text())
    return {entry["name"]: entry["examples"] for entry in index}


SAMPLES = samples()
ANSWER_SCHEMA: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[3] / "scheduler/api/openapi.json").read_text()
)["components"]["schemas"]["WebhookAnswer"]


def sample(event: str, action: str) -> dict[str, Any]:
    found = next(s for s in SAMPLES[event] if s.get("action") == action)
    return copy.deepcopy(found)


def for_job(body: dict[str, Any], job_id: str, sender: str, check_run_id: int) -> bytes:
    """A sample made to name our repository, job (its external id), check run and sender."""
    body["repository"]["full_name"] = REPO
    body["check_run"]["external_id"] = job_id
    body["check_run"]["id"] = check_run_id
    body["check_run"]["head_sha"] = SHA
    body["check_run"]["name"] = "ci/scheduler"
    body["sender"]["login"] = sender
    body["installation"]["id"] = 55
    return json.dumps(body).encode()


@pytest.fixture(scope="module")
def github() -> Iterator[GitHubStandIn]:
    with GitHubStandIn(port=STAND_IN_PORT) as stand_in:
        stand_in.install(REPO, 55)
        yield stand_in


@pytest.fixture(scope="module")
def app_settings(settings: Settings, github: GitHubStandIn) -> Settings:
    return replace(
        settings,
        webhook_secret=SECRET,
        github_app_id=str(github.app_id),
        github_app_private_key=github.private_key_pem,
        github_api_url=github.url,
        dashboard_url="https://ci.example.com",
    )


@pytest.fixture(scope="module")
def server(app_settings: Settings) -> Iterator[LocalHTTPServer]:
    with LocalHTTPServer(create_app(app_settings), port=HTTP_PORT) as running:
        yield running


@pytest.fixture(autouse=True)
def no_bad_requests(github: GitHubStandIn) -> Iterator[None]:
    github.problems.clear()
    yield
    assert github.problems == []


def post(server: LocalHTTPServer, event: str, body: bytes, delivery: str | None = None) -> Any:
    connection = http.client.HTTPConnection(*server.address, timeout=30)
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": sign(SECRET.encode(), body),
    }
    connection.request("POST", "/webhook", body, headers)
    response = connection.getresponse()
    answer = json.loads(response.read())
    if response.status in (200, 202):  # as GET /openapi.json describes it, fields named
        jsonschema.validate(answer, ANSWER_SCHEMA)
        assert set(answer) <= set(ANSWER_SCHEMA["properties"]), answer
    return response.status, answer


def check_run_on_github(github: GitHubStandIn, job_id: str) -> int:
    """A check run of the job as the App made it (through the stand-in's own route)."""
    app_auth = github_app_for(github).auth
    created = github_app_for(github).api.request(
        "POST",
        f"/repos/{REPO}/check-runs",
        authorization=app_auth.authorization_for(REPO),
        json={
            "name": "ci/scheduler",
            "head_sha": "c0ffee" + "0" * 34,
            "status": "completed",
            "conclusion": "failure",
            "external_id": job_id,
            "details_url": f"https://ci.example.com/ui/jobs/{job_id}",
            "output": {"title": "Failed", "summary": "exit code 1"},
        },
    )
    return int(created["id"])


_APP_SETTINGS: dict[str, Settings] = {}


def github_app_for(github: GitHubStandIn) -> Any:
    found = github_app(_APP_SETTINGS["settings"])
    assert found is not None
    return found


@pytest.fixture(autouse=True)
def _remember_settings(app_settings: Settings) -> None:
    _APP_SETTINGS["settings"] = app_settings


# -- GitHub's samples, read in App mode ------------------------------------------------------


@pytest.mark.parametrize(
    "event", ["check_run", "check_suite", "installation", "installation_repositories"]
)
def test_every_sample_of_the_apps_events_is_read(event: str) -> None:
    kinds = set()
    for number, body in enumerate(SAMPLES[event]):
        delivery = Delivery(event=event, delivery_id=f"d-{number}", payload=body)
        wanted = interpret(delivery, app_events=True)
        kinds.add(type(wanted).__name__)
        assert isinstance(
            wanted,
            CheckRunRequest | CheckSuiteRequest | InstallationChange | Ignored | BuildRequest,
        )
        # Without App mode they make nothing, as before.
        assert isinstance(interpret(delivery), Ignored)
    expected = {
        "check_run": {"Ignored"},  # the samples carry no external id: not the scheduler's
        "check_suite": {"BuildRequest", "CheckSuiteRequest", "Ignored"},  # requested: a push
        "installation": {"InstallationChange"},  # every action of the samples is one
        "installation_repositories": {"InstallationChange"},
    }
    assert kinds == expected[event]


def test_a_rerequested_sample_names_the_job_by_its_external_id() -> None:
    body = json.loads(for_job(sample("check_run", "rerequested"), "gh-abc", "octocat", 99))
    wanted = interpret_app_event(Delivery("check_run", "d-1", body))
    assert wanted == CheckRunRequest(
        delivery_id="d-1",
        repo=REPO,
        action="rerequested",
        check_run_id=99,
        job_id="gh-abc",
        sender="octocat",
        installation_id=55,
        head_sha=SHA,
        name="ci/scheduler",
    )
    body = json.loads(for_job(sample("check_run", "requested_action"), "gh-abc#lint", "o", 9))
    action = interpret_app_event(Delivery("check_run", "d-2", body))
    assert isinstance(action, CheckRunRequest) and action.job_id == "gh-abc"
    assert action.identifier == "lgtm|26764"


# -- the re-run race ------------------------------------------------------------------------------


def test_five_concurrent_rerequests_make_exactly_one_new_attempt(
    server: LocalHTTPServer, github: GitHubStandIn, make_job: Any, store: JobStore
) -> None:
    job_id = f"gh-race-{uuid.uuid4().hex[:8]}"
    make_job(job_id, "failed")
    github.grant(REPO, "writer", "write")
    check_run = check_run_on_github(github, job_id)
    barrier = threading.Barrier(5)
    answers: list[tuple[int, dict[str, Any]]] = []

    def click() -> None:
        body = for_job(sample("check_run", "rerequested"), job_id, "writer", check_run)
        barrier.wait()
        answers.append(post(server, "check_run", body))  # each a delivery of its own

    threads = [threading.Thread(target=click) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    job = store.state(job_id)
    assert (job.status, job.attempt) == (JobStatus.PENDING, 2)
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200, 200, 200, 200, 202], answers
    (won,) = [body for status, body in answers if status == 202]
    assert won == {"job_id": job_id, "status": "pending", "attempt": 2}
    # A redelivery of one of them later: still the one attempt.
    body = for_job(sample("check_run", "rerequested"), job_id, "writer", check_run)
    assert post(server, "check_run", body)[0] == 200
    assert store.state(job_id).attempt == 2
    # GitHub was asked the sender's permission once (cached briefly), with the App's token.
    asked = github.requests("GET", f"/repos/{REPO}/collaborators/writer/permission")
    assert 1 <= len(asked) <= 5
    assert all(s.headers["authorization"].startswith("token ") for s in asked)


def test_a_rerequest_without_write_permission_changes_nothing_and_says_why(
    server: LocalHTTPServer, github: GitHubStandIn, make_job: Any, store: JobStore
) -> None:
    job_id = f"gh-read-{uuid.uuid4().hex[:8]}"
    make_job(job_id, "failed")
    github.grant(REPO, "reader", "read")
    check_run = check_run_on_github(github, job_id)
    body = for_job(sample("check_run", "rerequested"), job_id, "reader", check_run)
    status, answer = post(server, "check_run", body)
    assert status == 202 and "@reader has no write permission" in answer["reason"]
    job = store.state(job_id)
    assert (job.status, job.attempt) == (JobStatus.FAILED, 1)
    refused = github.check_runs[check_run]
    assert refused.fields["output"]["title"] == "Request refused"
    assert "@reader has no write permission on octo-org/api" in refused.fields["output"]["summary"]
    assert refused.fields["conclusion"] == "failure"  # the result itself is not touched


# -- the buttons ----------------------------------------------------------------------------------


def test_approve_and_run_then_cancel_each_happen_once(
    server: LocalHTTPServer, github: GitHubStandIn, make_job: Any, store: JobStore
) -> None:
    job_id = f"gh-fork-{uuid.uuid4().hex[:8]}"
    make_job(job_id, "waiting")
    github.grant(REPO, "maintainer", "maintain")
    check_run = check_run_on_github(github, job_id)

    def press(identifier: str) -> tuple[int, dict[str, Any]]:
        body = sample("check_run", "requested_action")
        body["requested_action"]["identifier"] = identifier
        return post(server, "check_run", for_job(body, job_id, "maintainer", check_run))  # type: ignore[no-any-return]

    assert press("approve") == (202, {"job_id": job_id, "status": "pending", "attempt": 1})
    assert press("approve")[0] == 200  # a double click: nothing more
    assert store.state(job_id).status is JobStatus.PENDING
    assert press("cancel")[1]["status"] == "cancelled"
    assert press("cancel")[0] == 200
    assert store.state(job_id).status is JobStatus.CANCELLED


def test_a_check_suite_rerequest_reruns_the_failed_jobs_of_its_commit(
    server: LocalHTTPServer, github: GitHubStandIn, make_job: Any, store: JobStore
) -> None:
    failed = f"gh-suite-{uuid.uuid4().hex[:8]}"
    passed = f"gh-suite-{uuid.uuid4().hex[:8]}"
    make_job(failed, "failed")
    make_job(passed, "passed")
    github.grant(REPO, "suite-writer", "admin")
    body = sample("check_suite", "rerequested")
    body["repository"]["full_name"] = REPO
    body["check_suite"]["head_sha"] = "c0ffee" + "0" * 34
    body["sender"]["login"] = "suite-writer"
    body["installation"]["id"] = 55
    status, answer = post(server, "check_suite", json.dumps(body).encode())
    assert status == 202 and failed in answer["retried"] and passed not in answer["retried"]
    assert store.state(failed).attempt == 2
    assert store.state(passed).status is JobStatus.PASSED


def suite_delivery(action: str, sha: str, sender: str = "suite-writer") -> bytes:
    """GitHub's ``check_suite`` sample made to name our repository, commit and sender."""
    body = sample("check_suite", action)
    body["repository"]["full_name"] = REPO
    body["repository"]["clone_url"] = CLONE_URL
    body["check_suite"]["head_sha"] = sha
    body["check_suite"]["head_branch"] = "main"
    body["sender"]["login"] = sender
    body["installation"]["id"] = 55
    return json.dumps(body).encode()


def push_delivery(sha: str) -> bytes:
    push = json.loads((Path(__file__).parents[2] / "events/push.branch.json").read_text())
    push["repository"]["full_name"] = REPO
    push["repository"]["clone_url"] = CLONE_URL
    push["ref"] = "refs/heads/main"
    push["after"] = sha
    return json.dumps(push).encode()


@pytest.mark.parametrize("first", ["check_suite", "push"])
def test_a_check_suite_requested_and_its_push_make_one_job(
    server: LocalHTTPServer, store: JobStore, first: str
) -> None:
    """GitHub sends both for one push to an App's repository: whichever comes first makes
    the job, the other (and any redelivery of either) is answered with it."""
    sha = uuid.uuid4().hex + "0" * 8
    deliveries = {
        "check_suite": (str(uuid.uuid1()), suite_delivery("requested", sha)),
        "push": (str(uuid.uuid1()), push_delivery(sha)),
    }
    second = "push" if first == "check_suite" else "check_suite"
    status, answer = post(server, first, deliveries[first][1], deliveries[first][0])
    assert status == 202, answer
    job_id = answer["job_id"]
    assert job_id == f"gh-{deliveries[first][0]}"
    for event in (second, first, second):  # the other, then a redelivery of each
        status, answer = post(server, event, deliveries[event][1], deliveries[event][0])
        assert (status, answer["job_id"]) == (200, job_id), answer
    job = store.get(job_id)
    assert (job.event, job.ref, job.sha, job.branch) == ("push", "refs/heads/main", sha, "main")
    assert job.clone_url == CLONE_URL  # on the GitHub host (the stand-in's)
    # A check suite of no branch (a tag's) is left to its push delivery.
    body = json.loads(suite_delivery("requested", sha))
    body["check_suite"]["head_branch"] = None
    status, answer = post(server, "check_suite", json.dumps(body).encode())
    assert status == 202 and "job_id" not in answer and "no branch" in answer["reason"]


def test_check_suite_reruns_make_one_new_attempt_under_redelivery_and_double_clicks(
    server: LocalHTTPServer, github: GitHubStandIn, make_job: Any, store: JobStore
) -> None:
    job_id = f"gh-suite-race-{uuid.uuid4().hex[:8]}"
    make_job(job_id, "failed")
    github.grant(REPO, "suite-writer", "admin")
    clicks = [str(uuid.uuid1()) for _ in range(5)]  # GitHub's ids: time-based (version 1)
    barrier = threading.Barrier(5)
    answers: list[tuple[int, dict[str, Any]]] = []

    def click(delivery: str) -> None:
        barrier.wait()
        answers.append(post(server, "check_suite", suite_delivery("rerequested", SHA), delivery))

    threads = [threading.Thread(target=click, args=(delivery,)) for delivery in clicks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (store.state(job_id).status, store.state(job_id).attempt) == (JobStatus.PENDING, 2)
    won = [body for status, body in answers if job_id in body["retried"]]
    assert len(won) == 1 and sorted(status for status, _ in answers) == [200] * 4 + [202]
    # The re-run fails too; then GitHub redelivers one of the clicks: no third attempt.
    rerun = store.activate(store.state(job_id), slot_limit=100)
    assert isinstance(rerun, JobState)
    store.report(job_id, 2, Trigger.FAIL, actor="test", outcome=Outcome("exit_code", None, 1))
    status, answer = post(server, "check_suite", suite_delivery("rerequested", SHA), clicks[2])
    assert (status, answer) == (200, {"retried": [], "reason": "already re-run"})
    assert store.state(job_id).attempt == 2
    # A new click (a delivery made after that failure) re-runs it once more.
    status, answer = post(server, "check_suite", suite_delivery("rerequested", SHA))
    assert status == 202 and job_id in answer["retried"]
    assert store.state(job_id).attempt == 3


# -- installations --------------------------------------------------------------------------------


def test_an_uninstalled_repository_stops_being_built_until_added_again(
    server: LocalHTTPServer, github: GitHubStandIn
) -> None:
    push = json.loads((Path(__file__).parents[2] / "events/push.branch.json").read_text())
    push["repository"]["full_name"] = "octo-org/leaving"

    def push_once() -> tuple[int, dict[str, Any]]:
        push["after"] = uuid.uuid4().hex + "0" * 8
        return post(server, "push", json.dumps(push).encode())  # type: ignore[no-any-return]

    removed = sample("installation_repositories", "removed")
    removed["repositories_removed"] = [{"full_name": "octo-org/leaving"}]
    removed["repositories_added"] = []
    status, answer = post(server, "installation_repositories", json.dumps(removed).encode())
    assert status == 202 and answer["removed"] == ["octo-org/leaving"]
    status, answer = push_once()
    assert status == 202 and "uninstalled" in answer["reason"] and "job_id" not in answer
    added = sample("installation_repositories", "added")
    added["repositories_added"] = [{"full_name": "octo-org/leaving"}]
    assert post(server, "installation_repositories", json.dumps(added).encode())[0] == 202
    status, answer = push_once()
    assert status == 202 and "job_id" in answer


# -- both runtimes: the check run observer is wired by the composition root -----------------------


def test_both_runtimes_send_check_runs_from_their_dispatcher(
    settings: Settings, github: GitHubStandIn, make_job: Any, store: JobStore, tmp_path: Path
) -> None:
    key = tmp_path / "app.pem"
    key.write_text(github.private_key_pem)
    common = Settings.from_env(
        {
            "SCHEDULER_DYNAMODB_ENDPOINT": settings.dynamodb_endpoint or "",
            "SCHEDULER_JOBS_TABLE": settings.tables.jobs,
            "SCHEDULER_REPOS_TABLE": settings.tables.repos,
            "GITHUB_WEBHOOK_SECRET": SECRET,
            "SCHEDULER_GITHUB_APP_ID": str(github.app_id),
            "SCHEDULER_GITHUB_APP_PRIVATE_KEY_FILE": str(key),
            "SCHEDULER_GITHUB_API_URL": github.url,
            "SCHEDULER_DASHBOARD_URL": "https://both.example.com",
            "SCHEDULER_CODEBUILD_PROJECT": "ci-project",
        }
    )
    codebuild = boto3.session.Session().client(
        "codebuild", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    cores = [
        handlers.compose(common, codebuild_client=codebuild),
        compose_local(common, StackOptions(data_dir=tmp_path / "data")),
    ]
    job_id = f"gh-both-{uuid.uuid4().hex[:8]}"
    make_job(job_id, "failed")
    model = JobModel.get(job_id, consistent_read=True)
    try:
        for core in cores:
            kinds = [type(o) for o in core.dispatcher.observers]
            assert kinds.count(CheckRunObserver) == 1 and kinds.count(CommitStatusObserver) == 1
            assert core.observers == core.dispatcher.observers
        failed = Transition(
            JobStatus.ACTIVE, JobStatus.FAILED, JobState.from_model(model), "1", model
        )
        for observe in cores[0].dispatcher.observers:
            observe(failed)
    finally:
        for core in cores:
            core.close()  # sends what is queued
            if core.runs is not None and isinstance(core.runs.executor, LocalExecutor):
                core.runs.executor.close()
    (run,) = [r for r in github.runs_of(REPO) if r.fields.get("external_id") == job_id]
    assert run.fields["status"] == "completed" and run.fields["conclusion"] == "failure"
    assert run.fields["details_url"] == f"https://both.example.com/ui/jobs/{job_id}"
    assert run.fields["name"] == "ci/scheduler"
    # No personal token: the commit status went with the installation token too.
    (status,) = github.requests("POST", f"/repos/{REPO}/statuses/{SHA}")
    assert status.headers["authorization"].startswith("token ghs_")
    assert status.body["state"] == "failure" and status.body["context"] == "ci/scheduler"
    assert status.body["target_url"] == f"https://both.example.com/ui/jobs/{job_id}"


# -- bad input ---------------------------------------------------------------------------------


def test_a_check_run_acts_on_its_own_repositorys_jobs_only(
    server: LocalHTTPServer, github: GitHubStandIn, make_job: Any, store: JobStore
) -> None:
    job_id = f"gh-other-{uuid.uuid4().hex[:8]}"
    make_job(job_id, "failed", repo="octo-org/other")
    github.grant(REPO, "writer", "write")
    body = for_job(sample("check_run", "rerequested"), job_id, "writer", 1)
    status, answer = post(server, "check_run", body)
    assert status == 202 and "is not of octo-org/api" in answer["reason"]
    assert store.state(job_id).attempt == 1


@pytest.mark.parametrize(
    ("event", "change", "message"),
    [
        ("check_run", lambda b: b["check_run"].update(id="7"), "'check_run.id' must be an integer"),
        ("check_run", lambda b: b.pop("check_run"), "missing field 'check_run'"),
        (
            "check_run",
            lambda b: b["check_run"].update(external_id="x" * 300),
            "'check_run.external_id' is 300 bytes",
        ),
        ("installation", lambda b: b.pop("installation"), "missing field 'installation'"),
        (
            "check_suite",
            lambda b: b["check_suite"].update(head_branch=7),
            "'check_suite.head_branch' must be",
        ),
        (
            "check_suite",
            lambda b: b["check_suite"].update(head_branch="x" * 300),
            "'check_suite.head_branch' has a component over",
        ),
        (
            "installation_repositories",
            lambda b: b.update(repositories_added=[{"full_name": "no-slash"}]),
            "not OWNER/NAME",
        ),
    ],
)
def test_malformed_app_deliveries_are_refused_with_a_message(
    server: LocalHTTPServer, event: str, change: Any, message: str
) -> None:
    action = {
        "check_run": "rerequested",
        "installation": "created",
        "check_suite": "requested",
    }.get(event, "added")
    body = sample(event, action)
    if event == "check_run":
        body["check_run"]["external_id"] = "gh-x"
    change(body)
    status, answer = post(server, event, json.dumps(body).encode())
    assert status == 400 and message in answer["error"], answer


def test_a_rerun_of_an_older_check_run_of_the_job_changes_nothing(
    server: LocalHTTPServer, github: GitHubStandIn, make_job: Any, store: JobStore
) -> None:
    """A redelivery that comes after its re-run began (GitHub has the job's newer check run):
    asked of GitHub, as the webhook may not be the process that made it."""
    job_id = f"gh-stale-{uuid.uuid4().hex[:8]}"
    make_job(job_id, "failed")
    github.grant(REPO, "writer", "write")
    older = check_run_on_github(github, job_id)
    newer = check_run_on_github(github, job_id)
    status, answer = post(
        server, "check_run", for_job(sample("check_run", "rerequested"), job_id, "writer", older)
    )
    assert (status, answer["reason"]) == (200, "already re-run")
    assert store.state(job_id).attempt == 1
    status, answer = post(
        server, "check_run", for_job(sample("check_run", "rerequested"), job_id, "writer", newer)
    )
    assert status == 202 and answer["attempt"] == 2
    listed = github.requests("GET", f"/repos/{REPO}/commits/{SHA}/check-runs")
    assert listed and listed[-1].query == {"check_name": ["ci/scheduler"], "filter": ["all"]}


def test_re_runs_of_a_pipeline_rerun_its_failed_steps_or_one_step(
    server: LocalHTTPServer, github: GitHubStandIn, store: JobStore
) -> None:
    """GitHub's Re-run of a commit's suite re-runs a failed pipeline run's failed steps (and
    what follows them), never each failed step on its own; a step's Re-run re-runs it."""
    run = red_run(store, REPO, job_id=f"gh-red-{uuid.uuid4().hex[:8]}")
    github.grant(REPO, "suite-writer", "admin")
    status, answer = post(server, "check_suite", suite_delivery("rerequested", "e" * 40))
    assert (status, answer["retried"]) == (202, [run]), answer
    assert store.state(run).status is JobStatus.ACTIVE  # running again
    settle(store, run)  # the fan-in its record makes
    unit, e2e = store.get(step_id(run, 2)), store.get(step_id(run, 3))
    assert (str(unit.status), int(unit.attempt)) == ("pending", 2)
    assert str(e2e.status) == "blocked"  # waits for unit again
    assert str(store.get(step_id(run, 1)).status) == "passed"  # lint keeps its result
    # The unit step fails again; its own check run's Re-run re-runs it (and e2e after it).
    end(store, step_id(run, 2), Trigger.FAIL)
    assert store.state(run).status is JobStatus.FAILED
    check_run = check_run_on_github(github, step_id(run, 2))
    body = for_job(sample("check_run", "rerequested"), step_id(run, 2), "suite-writer", check_run)
    status, answer = post(server, "check_run", body)
    assert status == 202 and answer["attempt"] == 3, answer  # the run's third attempt
    settle(store, run)
    assert (str(store.get(step_id(run, 2)).status), int(store.get(step_id(run, 2)).attempt)) == (
        "pending",
        3,
    )
