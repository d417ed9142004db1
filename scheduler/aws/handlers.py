"""AWS Lambda entry points: a few lines each; the work happens in the application.

Settings come from the environment once per cold start; a configuration error (no webhook
secret, a bad repository configuration) fails the initialisation loudly rather than serving.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from scheduler.api.app import Application, HttpApiEvent, HttpApiResponse, create_app
from scheduler.api.query_routes import query_routes
from scheduler.aws.codebuild import CodeBuildExecutor, result_from_event
from scheduler.config import RepositoryConfig, load_config
from scheduler.db import clients, models
from scheduler.db.queries import Queries
from scheduler.db.store import JobStore
from scheduler.runs.reaper import Reaper
from scheduler.runs.starter import RunStarter
from scheduler.settings import Settings
from scheduler.stream.dispatcher import Dispatcher, PartialBatchResponse
from scheduler.wiring import build_dispatcher

__all__ = ["build_completed", "reap", "stream", "webhook"]


@cache
def http_app() -> Application:
    settings = Settings.from_env()
    # Queries read through the models, which create_app binds before any request is served.
    return create_app(settings, extra_routes=[query_routes(Queries.from_settings(settings))])


def webhook(event: HttpApiEvent, context: Any) -> HttpApiResponse:
    """HTTP API / Function URL (payload format 2.0), every route of the one app.

    ``POST /webhook``, the read routes of :mod:`scheduler.api.query_routes` and ``GET /healthz``.
    """
    return http_app().handle_lambda(event)


@dataclass(frozen=True)
class _Runtime:
    store: JobStore
    config: RepositoryConfig
    runs: RunStarter | None
    executor: CodeBuildExecutor | None


@cache
def runtime() -> _Runtime:
    """Store, configuration and run starter of this cold start (CodeBuild when configured)."""
    settings = Settings.from_env()
    models.bind(settings)
    store = JobStore.from_settings(settings)
    config = load_config(settings.config_path)
    executor = runs = None
    if settings.codebuild_project:
        executor = CodeBuildExecutor(
            clients.client("codebuild", settings), settings.codebuild_project
        )
        runs = RunStarter(store, executor, lambda repo: config.policy(repo).command)
    return _Runtime(store, config, runs, executor)


@cache
def stream_dispatcher() -> Dispatcher:
    rt = runtime()
    return build_dispatcher(rt.store, rt.config, on_activated=rt.runs.start if rt.runs else None)


def stream(event: dict[str, Any], context: Any) -> PartialBatchResponse:
    """DynamoDB stream batch of the jobs table -> partial batch response (by sequence number)."""
    return stream_dispatcher().handle_event(event)


def build_completed(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """EventBridge "CodeBuild Build State Change": report the run through its guarded transition."""
    result = result_from_event(event)
    rt = runtime()
    if result is None or rt.runs is None:
        return {"reported": False}
    done = rt.runs.finished(result)
    return {"reported": done is not None, "job_id": result.job_id}


def reap(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Scheduled: time out active jobs past their deadline and stop their builds."""
    rt = runtime()
    cancel = rt.executor.cancel if rt.executor else None
    return {"timed_out": Reaper(rt.store, cancel_run=cancel).reap_once()}
