"""AWS Lambda entry points: a few lines each; the work happens in the core.

The core is built once per cold start by :mod:`scheduler.wiring`, the same composition root
``scheduler up`` uses; a configuration error (no webhook secret, a bad repository
configuration) fails loudly rather than serving.

All five functions share this module, so it imports only what every one of them needs: the
HTTP app (Jinja2 for the dashboard) and GitHub's client (httpx) are imported by the core
when a function first uses them, never by the reaper or the completion function
(``bench/cold_imports.py`` measures each function's cold start).
"""

from __future__ import annotations

import os
from functools import cache
from typing import TYPE_CHECKING, Any

from scheduler.aws.build_logs import CloudWatchLogReader
from scheduler.aws.build_tokens import (
    BUILD_TOKEN_PERMISSIONS,
    BuildTokens,
    parameter_of,
    parameter_prefix,
)
from scheduler.aws.clients import aws_client
from scheduler.aws.codebuild import (
    CodeBuildExecutor,
    SecretsProject,
    build_variables,
    result_from_event,
)
from scheduler.aws.emf import per_invocation, store_gauges
from scheduler.aws.secrets import SECRET_ARNS, resolve_secrets
from scheduler.runs.executor import OnFinished
from scheduler.settings import Settings
from scheduler.stream.events import PartialBatchResponse
from scheduler.wiring import Core, ExecutorFactory, build_core

if TYPE_CHECKING:
    from scheduler.api.app import HttpApiEvent, HttpApiResponse

__all__ = ["api", "build_completed", "compose", "core", "reap", "stream", "webhook"]


def compose(
    settings: Settings, codebuild_client: Any | None = None, logs_client: Any | None = None
) -> Core:
    """The AWS runtime's core: runs are CodeBuild builds when a project is configured, and
    their output is read from the builds' CloudWatch Logs streams."""
    project = settings.codebuild_project
    executor: ExecutorFactory | None = None
    log_reader: CloudWatchLogReader | None = None
    if project:
        client = codebuild_client or aws_client("codebuild", settings)
        secrets = (
            SecretsProject(settings.codebuild_secrets_project, settings.run_secrets_prefix)
            if settings.codebuild_secrets_project
            else None
        )

        git_tokens = build_tokens(settings, project)

        def executor(_finished: OnFinished) -> CodeBuildExecutor:
            # A build reports through EventBridge (build_completed), not a callback.
            return CodeBuildExecutor(client, project, secrets=secrets, git_tokens=git_tokens)

        log_reader = CloudWatchLogReader(logs_client or aws_client("logs", settings), client)

    return build_core(settings, executor=executor, log_reader=log_reader)


def build_tokens(settings: Settings, project: str) -> BuildTokens:
    """Each build's git token in App mode (bought where the App's key is: the stream
    function); elsewhere only deleted once its build is reported (the completion function)."""
    buy = None
    name_key = b""
    host = "github.com"
    if settings.github_app_id and settings.github_app_private_key:
        from scheduler.github.app_mode import github_app  # App mode only (httpx, PyJWT)
        from scheduler.github.clone_urls import github_host

        app = github_app(settings)
        if app is not None:
            auth = app.auth

            def buy(repo: str) -> str:
                return auth.scoped_token(repo, BUILD_TOKEN_PERMISSIONS)

            name_key = settings.github_app_private_key.encode()
            host = github_host(settings.github_api_url)
    return BuildTokens(
        lambda: aws_client("ssm", settings),
        parameter_prefix(project),
        buy=buy,
        name_key=name_key,
        github_host=host,
    )


@cache
def core() -> Core:
    """This cold start's core, from the function's environment and its secrets."""
    settings = Settings.from_env()
    if any(os.environ.get(name) for name in SECRET_ARNS):
        settings = resolve_secrets(settings, os.environ, aws_client("secretsmanager", settings))
    return compose(settings)


@per_invocation()  # one CloudWatch embedded-metric-format line
def webhook(event: HttpApiEvent, context: Any) -> HttpApiResponse:
    """The public Function URL (payload format 2.0): POST /webhook and GET /healthz only;
    anything else is a 404 (the read routes live behind the authenticated ``api`` URL)."""
    return core().webhook_app.handle_lambda(event)


@per_invocation()  # one CloudWatch embedded-metric-format line
def api(event: HttpApiEvent, context: Any) -> HttpApiResponse:
    """The read routes behind a Function URL with IAM authentication (SigV4-signed calls)."""
    return core().query_app.handle_lambda(event)


@per_invocation()  # one CloudWatch embedded-metric-format line
def stream(event: dict[str, Any], context: Any) -> PartialBatchResponse:
    """DynamoDB stream batch of the jobs table -> partial batch response (by sequence number).

    A database outage is waited out within the invocation's time (``time_left_ms``), so that
    a throttled or briefly unreachable table does not use up the mapping's retry attempts.
    """
    time_left = getattr(context, "get_remaining_time_in_millis", None)
    the_core = core()
    try:
        return the_core.dispatcher.handle_event(event, time_left_ms=time_left or (lambda: 0))
    finally:
        the_core.end_invocation()  # the batch's check run updates, one request per job


@per_invocation()  # one CloudWatch embedded-metric-format line
def build_completed(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """EventBridge "CodeBuild Build State Change": report the run through its guarded transition."""
    result = result_from_event(event)
    runs = core().runs
    if result is None or runs is None:
        return {"reported": False}
    done = runs.finished(result)
    executor = runs.executor
    if isinstance(executor, CodeBuildExecutor) and executor.git_tokens is not None:
        executor.git_tokens.discard(parameter_of(build_variables(event)))  # its token is spent
    return {"reported": done is not None, "job_id": result.job_id}


@per_invocation(store_gauges(lambda: core().store))  # and the queue's gauges
def reap(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Scheduled: time out active jobs past their deadline and stop their builds; reconcile
    what lost stream records owed (held slots of stopped builds, stalled queues)."""
    the_core = core()
    return {"timed_out": the_core.reaper.reap_once(), **the_core.reconciler.run_once().to_dict()}
