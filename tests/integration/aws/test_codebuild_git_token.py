"""GitHub App mode on CodeBuild: a build fetches with a token scoped to its repository
(``contents: read``) that the StartBuild request only names (a PARAMETER_STORE variable), never
carries (no PLAINTEXT value, no clone URL with it); a fork's build gets none; the parameter is
deleted when the build's completion is reported; the buildspec's fetch really checks out the
commit and leaves no token to the command after it.

CodeBuild and Systems Manager are boto3 clients stubbed with botocore's Stubber (every request
checked against the service model and the exact parameters); GitHub is the API stand-in;
DynamoDB is DynamoDB Local. Port 18761.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber
from git_origin import make_origin
from github_api_stand_in import GitHubStandIn

from scheduler.aws import handlers
from scheduler.aws.build_tokens import fetch_command
from scheduler.aws.codebuild import CodeBuildExecutor
from scheduler.runs.executor import RunRequest
from scheduler.wiring import Core

REPO = "octo-org/api"
SHA = "e" * 40
PROJECT = "ci-project"
STAND_IN_PORT = 18761
# The GitHub host of the stand-in's API (as of GitHub Enterprise Server's): where clones are.
HOST = f"127.0.0.1:{STAND_IN_PORT}"
CLONE_URL = f"https://{HOST}/{REPO}.git"


@pytest.fixture(scope="module")
def github() -> Iterator[GitHubStandIn]:
    with GitHubStandIn(port=STAND_IN_PORT) as stand_in:
        stand_in.install(REPO, 91)
        yield stand_in


@pytest.fixture
def runtime(
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
    tables: Any,
    github: GitHubStandIn,
    tmp_path: Path,
) -> Iterator[Core]:
    """The AWS runtime's core in App mode, as the stream function composes it."""
    key = tmp_path / "app.pem"
    key.write_text(github.private_key_pem)
    monkeypatch.setenv("SCHEDULER_CODEBUILD_PROJECT", PROJECT)
    monkeypatch.setenv("SCHEDULER_GITHUB_APP_ID", str(github.app_id))
    monkeypatch.setenv("SCHEDULER_GITHUB_APP_PRIVATE_KEY_FILE", str(key))
    monkeypatch.setenv("SCHEDULER_GITHUB_API_URL", github.url)
    monkeypatch.delenv("SCHEDULER_CONFIG", raising=False)
    handlers.core.cache_clear()
    core = handlers.core()
    yield core
    core.close()
    handlers.core.cache_clear()


def executor_of(core: Core) -> CodeBuildExecutor:
    assert core.runs is not None and isinstance(core.runs.executor, CodeBuildExecutor)
    return core.runs.executor


def ssm_client(executor: CodeBuildExecutor) -> Any:
    """A real boto3 SSM client for the executor's build tokens (to be stubbed)."""
    assert executor.git_tokens is not None
    client = boto3.session.Session().client(
        "ssm", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    executor.git_tokens._client = client
    return client


def request(*, fork: bool = False, attempt: int = 1) -> RunRequest:
    return RunRequest(
        "gh-token-job",
        REPO,
        SHA,
        attempt,
        ("make", "test"),
        600,
        ref="refs/heads/main",
        checkout=True,
        clone_url=CLONE_URL,
        fork=fork,
    )


def test_a_build_fetches_with_a_scoped_token_the_request_only_names(
    runtime: Core, github: GitHubStandIn
) -> None:
    executor = executor_of(runtime)
    ssm = ssm_client(executor)
    put: list[dict[str, Any]] = []
    ssm.meta.events.register(
        "provide-client-params.ssm.PutParameter", lambda params, **_: put.append(dict(params))
    )
    run = request()
    params = executor.start_build_kwargs(run)
    assert params == executor.start_build_kwargs(run)  # a retried start asks the same
    variables = {v["name"]: v for v in params["environmentVariablesOverride"]}
    parameter = variables["SCHEDULER_GIT_TOKEN"]
    assert parameter["type"] == "PARAMETER_STORE"
    name = parameter["value"]
    assert name.startswith(f"/{PROJECT}/git-tokens/") and "gh-token-job" not in name
    assert variables["SCHEDULER_CLONE_URL"]["value"] == CLONE_URL
    assert params["sourceTypeOverride"] == "NO_SOURCE"
    assert "sourceLocationOverride" not in params
    # One line: the fetch, then the command in the shell that unset the token.
    spec = params["buildspecOverride"]
    assert spec.endswith(f"      - {json.dumps(fetch_command(HOST) + ' && make test')}\n")
    assert spec.count("\n      - ") == 1
    before = len(github.requests("POST", "/app/installations/"))
    with Stubber(executor._client) as codebuild, Stubber(ssm) as parameters:
        parameters.add_response(
            "put_parameter",
            {"Version": 1, "Tier": "Standard"},
            {
                "Name": name,
                "Value": ANY,
                "Type": "SecureString",
                "Overwrite": True,
                "Description": "git token of build gh-token-job#1",
            },
        )
        codebuild.add_response("start_build", {"build": {"id": f"{PROJECT}:b-1"}}, params)
        assert executor.start(run) == f"{PROJECT}:b-1"
        codebuild.assert_no_pending_responses()
        parameters.assert_no_pending_responses()
    # GitHub sold a token for this repository alone, reading its contents only, to the App.
    (asked,) = github.requests("POST", "/app/installations/")[before:]
    assert asked.path == "/app/installations/91/access_tokens"
    assert asked.body == {"repositories": ["api"], "permissions": {"contents": "read"}}
    assert asked.headers["authorization"].startswith("Bearer ")
    token = put[0]["Value"]
    assert token.startswith("ghs_") and token in github.tokens
    # The request carries no token: not in a variable, not in a URL, nowhere.
    assert token not in json.dumps(params)
    assert all(v["type"] != "PLAINTEXT" or "ghs_" not in v["value"] for v in variables.values())
    assert github.problems == []


def test_another_attempt_gets_a_parameter_of_its_own_and_a_fork_gets_none(
    runtime: Core, github: GitHubStandIn
) -> None:
    executor = executor_of(runtime)
    first = executor.start_build_kwargs(request())
    second = executor.start_build_kwargs(request(attempt=2))

    def named(params: dict[str, Any]) -> str:
        (found,) = [
            v["value"]
            for v in params["environmentVariablesOverride"]
            if v["type"] == "PARAMETER_STORE"
        ]
        return str(found)

    assert named(first) != named(second)
    before = len(github.requests("POST", "/app/installations/"))
    fork = executor.start_build_kwargs(request(fork=True))
    # Someone else's code: CodeBuild's own source, no token bought, none named.
    assert fork["sourceTypeOverride"] == "GITHUB_ENTERPRISE"
    assert not [v for v in fork["environmentVariablesOverride"] if v["type"] != "PLAINTEXT"]
    assert "SCHEDULER_GIT_TOKEN" not in json.dumps(fork)
    with Stubber(executor._client) as codebuild:
        codebuild.add_response("start_build", {"build": {"id": f"{PROJECT}:b-f"}}, fork)
        assert executor.start(request(fork=True)) == f"{PROJECT}:b-f"
    assert len(github.requests("POST", "/app/installations/")) == before


def test_the_completion_deletes_the_builds_token_parameter(runtime: Core) -> None:
    executor = executor_of(runtime)
    ssm = ssm_client(executor)
    name = executor.start_build_kwargs(request())["environmentVariablesOverride"][-2]["value"]
    event = {
        "source": "aws.codebuild",
        "detail-type": "CodeBuild Build State Change",
        "detail": {
            "build-status": "SUCCEEDED",
            "project-name": PROJECT,
            "build-id": f"arn:aws:codebuild:us-east-1:123:build/{PROJECT}:b-1",
            "additional-information": {
                "environment": {
                    "environment-variables": [
                        {"name": "SCHEDULER_JOB_ID", "value": "gh-unknown", "type": "PLAINTEXT"},
                        {"name": "SCHEDULER_ATTEMPT", "value": "1", "type": "PLAINTEXT"},
                        {"name": "SCHEDULER_GIT_TOKEN", "value": name, "type": "PARAMETER_STORE"},
                    ]
                }
            },
        },
    }
    with Stubber(ssm) as parameters:
        parameters.add_response("delete_parameter", {}, {"Name": name})
        parameters.add_client_error(
            "delete_parameter", "ParameterNotFound", expected_params={"Name": name}
        )
        handlers.build_completed(event, None)
        handlers.build_completed(event, None)  # EventBridge delivered it twice: no error
        parameters.assert_no_pending_responses()


def test_the_reaper_deletes_the_token_of_a_build_whose_completion_was_lost(runtime: Core) -> None:
    executor = executor_of(runtime)
    ssm = ssm_client(executor)
    name = executor.start_build_kwargs(request())["environmentVariablesOverride"][-2]["value"]
    build_id = f"{PROJECT}:b-lost"
    ended = {
        "id": build_id,
        "buildStatus": "FAILED",
        "environment": {
            "type": "ARM_CONTAINER",
            "image": "aws/codebuild/amazonlinux-aarch64-standard:3.0",
            "computeType": "BUILD_GENERAL1_SMALL",
            "environmentVariables": [
                {"name": "SCHEDULER_JOB_ID", "value": "gh-token-job", "type": "PLAINTEXT"},
                {"name": "SCHEDULER_ATTEMPT", "value": "1", "type": "PLAINTEXT"},
                {"name": "SCHEDULER_GIT_TOKEN", "value": name, "type": "PARAMETER_STORE"},
            ],
        },
    }
    with Stubber(executor._client) as codebuild, Stubber(ssm) as parameters:
        codebuild.add_response("batch_get_builds", {"builds": [ended]}, {"ids": [build_id]})
        parameters.add_response("delete_parameter", {}, {"Name": name})
        result = executor.result_of(build_id)  # what the reaper asks before a timeout
        parameters.assert_no_pending_responses()
    assert result is not None and (result.job_id, result.exit_code) == ("gh-token-job", 1)


def test_the_buildspecs_fetch_checks_out_the_commit_and_drops_the_token(tmp_path: Path) -> None:
    origin = make_origin(tmp_path / "origin")
    work = tmp_path / "build"
    work.mkdir()
    env = {
        "PATH": "/usr/bin:/bin:/usr/local/bin",
        "HOME": str(tmp_path),
        "SCHEDULER_GIT_TOKEN": "ghs_build_token_value",
        "SCHEDULER_CLONE_URL": str(origin.path),
        "SCHEDULER_SHA": origin.pull,
    }
    script = f"{fetch_command('github.com')} && env && git rev-parse HEAD"  # as the buildspec
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(origin.pull)  # the commit on no branch
    assert "ghs_build_token_value" not in done.stdout + done.stderr  # gone before the command
    env["SCHEDULER_SHA"] = "f" * 40  # no such commit: the build fails at the fetch
    failed = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert failed.returncode != 0
