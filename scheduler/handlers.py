"""AWS Lambda entry points: a few lines each; the work happens in the application.

Settings come from the environment once per cold start; a configuration error (no webhook
secret, a bad repository configuration) fails the initialisation loudly rather than serving.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from scheduler import models
from scheduler.api import Application, HttpApiEvent, HttpApiResponse, create_app
from scheduler.dispatch import Dispatcher, PartialBatchResponse
from scheduler.queries import Queries
from scheduler.routes import query_routes
from scheduler.settings import Settings
from scheduler.store import JobStore

__all__ = ["stream", "webhook"]


@cache
def http_app() -> Application:
    settings = Settings.from_env()
    # Queries read through the models, which create_app binds before any request is served.
    return create_app(settings, extra_routes=[query_routes(Queries.from_settings(settings))])


def webhook(event: HttpApiEvent, context: Any) -> HttpApiResponse:
    """HTTP API / Function URL (payload format 2.0), every route of the one app.

    ``POST /webhook``, the read routes of :mod:`scheduler.routes` and ``GET /healthz``.
    """
    return http_app().handle_lambda(event)


@cache
def stream_dispatcher() -> Dispatcher:
    settings = Settings.from_env()
    models.bind(settings)
    return Dispatcher(JobStore.from_settings(settings))


def stream(event: dict[str, Any], context: Any) -> PartialBatchResponse:
    """DynamoDB stream batch of the jobs table -> partial batch response (by sequence number)."""
    return stream_dispatcher().handle_event(event)
