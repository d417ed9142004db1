"""One composition root: the AWS functions and ``scheduler up`` build the same core.

Each runtime's own ``compose`` (the one its entry points call) is built from the same settings
and repository configuration; the graphs must carry the same observers, configuration and
policies, and differ only in how a run is executed. The template is checked to hand every
function what that composition reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest

from scheduler import metrics
from scheduler.api.app import Request
from scheduler.aws import handlers
from scheduler.aws.clients import aws_client
from scheduler.aws.codebuild import CodeBuildExecutor
from scheduler.db import clients
from scheduler.db.template import load_template
from scheduler.github.signature import sign
from scheduler.github.statuses import CommitStatusObserver
from scheduler.local.executor import LocalExecutor
from scheduler.local.stack import StackOptions
from scheduler.local.stack import compose as compose_local
from scheduler.settings import DEFAULT_TEMPLATE, Settings
from scheduler.wiring import Core

SECRET = "composition-webhook-secret-0123456789"
CONFIG = """
accept = ["octo-org/*"]

[defaults]
command = ["make", "test"]
concurrency = 2
status_context = "ci/default"

[defaults.retry]
attempts = 3
on = ["timed_out", "exit_code"]
backoff_seconds = 5

[repos."Octo-Org/API"]
command = ["./ci.sh"]
concurrency = 4
status_context = "ci/api"
"""


@pytest.fixture
def both(settings: Settings, tables: Any, tmp_path: Path) -> tuple[Core, Core]:
    config = tmp_path / "scheduler.toml"
    config.write_text(CONFIG, encoding="utf-8")
    env = {
        "SCHEDULER_DYNAMODB_ENDPOINT": settings.dynamodb_endpoint or "",
        "SCHEDULER_JOBS_TABLE": settings.tables.jobs,
        "SCHEDULER_REPOS_TABLE": settings.tables.repos,
        "GITHUB_WEBHOOK_SECRET": SECRET,
        "SCHEDULER_CONFIG": str(config),
        "SCHEDULER_GITHUB_TOKEN": "ghp_composition",
        "SCHEDULER_CODEBUILD_PROJECT": "ci-project",
    }
    common = Settings.from_env(env)
    codebuild = boto3.session.Session().client(
        "codebuild", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    aws_core = handlers.compose(common, codebuild_client=codebuild)
    local_core = compose_local(common, StackOptions(data_dir=tmp_path / "data"))
    yield aws_core, local_core
    for core in (aws_core, local_core):
        core.close()
        if core.runs is not None and isinstance(core.runs.executor, LocalExecutor):
            core.runs.executor.close()


def test_both_runtimes_dispatch_with_the_same_observers_and_policies(
    both: tuple[Core, Core],
) -> None:
    aws_core, local_core = both
    for core in both:
        # Commit statuses are wired in both (the AWS dispatcher once had none).
        assert [type(o) for o in core.dispatcher.observers[:1]] == [CommitStatusObserver]
        assert core.dispatcher.observers[1:] == (metrics.observe_transition,)  # both runtimes
        assert core.dispatcher.observers == core.observers
        assert core.dispatcher.runs_started
    assert aws_core.config == local_core.config
    for repo in ("octo-org/api", "octo-org/other"):
        for core in both:
            policy = core.config.policy(repo)
            assert core.dispatcher._slot_limit_for(repo) == policy.concurrency
            assert core.dispatcher._retry_policy_for(repo) == policy.retry
            assert core.runs is not None and core.runs._command_for(repo) == policy.command
            observer = core.observers[0]
            assert isinstance(observer, CommitStatusObserver)
            assert observer._context_for(repo) == policy.status_context
    assert aws_core.config.policy("octo-org/api").concurrency == 4  # the override is read


def test_only_the_executor_differs(both: tuple[Core, Core]) -> None:
    aws_core, local_core = both
    assert aws_core.runs is not None and local_core.runs is not None
    assert isinstance(aws_core.runs.executor, CodeBuildExecutor)
    assert isinstance(local_core.runs.executor, LocalExecutor)
    # The reaper stops runs through the same executor that started them.
    for core in both:
        assert core.runs is not None
        assert core.reaper._cancel_run == core.runs.executor.cancel


def test_who_claims_runs_is_each_runtimes_one_choice(both: tuple[Core, Core]) -> None:
    """The runtimes' one difference in the run lifecycle (scheduler.runs.claims), chosen in
    each composition: locally the activation claims the run for this runner (hand-offs,
    claims restarted or found lost by the reaper); on AWS the start claims it."""
    aws_core, local_core = both
    assert local_core.runs is not None and aws_core.runs is not None
    assert local_core.dispatcher._claiming is local_core.runs
    assert local_core.runs._hand_off is not None
    assert local_core.reaper._restart_claimed == local_core.runs.start_claimed
    assert local_core.reaper._owns_claim == local_core.runs.owns_claim
    assert aws_core.dispatcher._claiming is None and aws_core.runs._hand_off is None
    assert aws_core.reaper._restart_claimed is None and aws_core.reaper._owns_claim is None


def _delivery(repo: str) -> Request:
    body = json.dumps(
        {
            "ref": "refs/heads/main",
            "after": "a" * 40,
            "deleted": False,
            "repository": {"full_name": repo},
            "sender": {"login": "octocat"},
        }
    ).encode()
    headers = {
        "content-type": "application/json",
        "x-github-event": "push",
        "x-github-delivery": f"comp-{repo.replace('/', '-')}",
        "x-hub-signature-256": sign(SECRET.encode(), body),
    }
    return Request(method="POST", path="/webhook", headers=headers, body=body, query={})


def test_both_webhooks_filter_with_the_repository_configuration(
    both: tuple[Core, Core],
) -> None:
    """The AWS webhook once accepted every repository: it had no configuration."""
    for core in both:
        refused = core.http_app.handle(_delivery("someone/else"))
        assert refused.status == 202
        assert "not accepted" in refused.body["reason"]
    accepted = both[0].http_app.handle(_delivery("octo-org/api"))
    assert accepted.status == 202 and accepted.body["job_id"]
    job = both[1].store.get(accepted.body["job_id"])
    assert job.timeout_seconds == both[1].config.policy("octo-org/api").timeout_seconds


def test_every_function_in_the_template_gets_what_the_composition_reads() -> None:
    resources = load_template(DEFAULT_TEMPLATE)["Resources"]
    functions = {
        name: body["Properties"]
        for name, body in resources.items()
        if body["Type"] == "AWS::Serverless::Function"
    }
    assert set(functions) == {
        "StreamFunction",
        "WebhookFunction",
        "ApiFunction",
        "CompletionFunction",
        "ReaperFunction",
    }
    for name, props in functions.items():
        assert props["Handler"].startswith("scheduler.aws.handlers."), name
        entry = props["Handler"].rsplit(".", 1)[1]
        assert callable(getattr(handlers, entry)), name
        env = props["Environment"]["Variables"]
        for key in ("SCHEDULER_JOBS_TABLE", "SCHEDULER_REPOS_TABLE", "SCHEDULER_CONFIG"):
            assert key in env, f"{name} lacks {key}"
    for name in ("StreamFunction", "CompletionFunction", "ReaperFunction"):
        assert "SCHEDULER_CODEBUILD_PROJECT" in functions[name]["Environment"]["Variables"]
    # Commit statuses are posted by the stream function, as in the local stack; its token and
    # the webhook's secrets are read from Secrets Manager (the environment holds ARNs only).
    stream = functions["StreamFunction"]["Environment"]["Variables"]
    assert "SCHEDULER_GITHUB_TOKEN_ARN" in stream and "SCHEDULER_GITHUB_TOKEN" not in stream
    webhook = functions["WebhookFunction"]["Environment"]["Variables"]
    assert "SCHEDULER_WEBHOOK_SECRET_ARN" in webhook and "GITHUB_WEBHOOK_SECRET" not in webhook
    api = functions["ApiFunction"]["Environment"]["Variables"]
    assert "SCHEDULER_CURSOR_SECRET_ARN" in api and "SCHEDULER_WEBHOOK_SECRET_ARN" not in api
    assert "SCHEDULER_API_TOKEN_ARN" in api and "SCHEDULER_API_TOKEN" not in api


def test_each_aws_client_gets_its_own_endpoint() -> None:
    """CodeBuild once got the DynamoDB endpoint (DynamoDB Local, in tests)."""
    settings = Settings.from_env({"SCHEDULER_DYNAMODB_ENDPOINT": "http://127.0.0.1:9"})
    codebuild = aws_client("codebuild", settings)
    assert codebuild.meta.endpoint_url == "https://codebuild.us-east-1.amazonaws.com"
    assert clients.client("dynamodb", settings).meta.endpoint_url == "http://127.0.0.1:9"
    with pytest.raises(ValueError, match="not DynamoDB"):
        clients.client("codebuild", settings)
    with pytest.raises(ValueError, match="DynamoDB"):
        aws_client("dynamodb", settings)
