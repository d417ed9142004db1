"""The HTTP application: one object for AWS Lambda and for the local server.

:class:`Application` takes a transport-neutral :class:`Request` and returns a :class:`Response`;
``handle_lambda`` adapts an API Gateway HTTP API / Function URL event (payload format 2.0,
base64 bodies included), and ``scheduler.local.http_server`` adapts a real HTTP request. Routes
live in a small :class:`Router` (``/repos/{owner}/{repo}/jobs`` style patterns), so other
modules add theirs with ``router.add`` (see :func:`create_app`'s ``extra_routes``).

Each route says what it asks of its caller (:class:`~scheduler.api.auth.Access`): the webhook
and health are public; every other route needs the API token or the dashboard's session when
``SCHEDULER_API_TOKEN`` is set (:mod:`scheduler.api.auth`), checked here before its handler
runs, so no route can forget it.

Every answer is a JSON object; every failure is ``{"error": message}`` with the status of its
typed error (bad input is always a 4xx). An unexpected exception is logged and answered 500
without details, so nothing internal (let alone a secret) reaches the caller.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict
from urllib.parse import parse_qsl, unquote

from scheduler import tracing
from scheduler.api import openapi
from scheduler.api.auth import Access, ApiAuth
from scheduler.api.headers import sendable
from scheduler.config import RepositoryConfig, load_config
from scheduler.db import models
from scheduler.db.store import DAY_MS, Clock, JobStore, system_clock
from scheduler.disk_space import DISK
from scheduler.errors import (
    DomainError,
    InvalidArgument,
    MethodNotAllowed,
    PayloadTooLarge,
    RouteNotFound,
    ServerBusy,
    StoreUnavailable,
    Unauthorized,
    WebhookRejected,
)
from scheduler.settings import (
    DEFAULT_HTTP_BODY_BUDGET_BYTES,
    DEFAULT_HTTP_MAX_CONNECTIONS,
    DEFAULT_HTTP_REQUEST_TIMEOUT_SECONDS,
    Settings,
)
from scheduler.store_outage import STORE

if TYPE_CHECKING:
    from scheduler.github.app_mode import AppRequests

__all__ = [
    "Application",
    "Handler",
    "HttpApiEvent",
    "HttpApiResponse",
    "Request",
    "Response",
    "Route",
    "Router",
    "ServerLimits",
    "create_app",
]

log = logging.getLogger(__name__)


# -- request and response ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request, whichever runtime received it. Header names are lower-case."""

    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    query: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)  # filled from the route pattern

    def param(self, name: str) -> str:
        """A path parameter, percent-decoded (API Gateway's ``rawPath`` is not decoded)."""
        try:
            return unquote(self.params[name], errors="strict")
        except UnicodeDecodeError:
            raise InvalidArgument(f"{name} is not valid UTF-8 once percent-decoded") from None

    @property
    def repo(self) -> str:
        """``OWNER/REPO`` from the path parameters ``owner`` and ``repo``."""
        return f"{self.param('owner')}/{self.param('repo')}"


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: Mapping[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)
    # A plain-text answer (a run's log): sent as is instead of ``body`` as JSON.
    text_body: str | None = None
    # The type of ``text_body`` when it is not plain text (a page, a script).
    media_type: str | None = None

    @property
    def content_type(self) -> str:
        if self.media_type is not None:
            return self.media_type
        if self.text_body is not None:
            return "text/plain; charset=utf-8"
        return "application/json"

    def encode(self) -> bytes:
        if self.text_body is not None:
            return self.text_body.encode("utf-8", "replace")
        return json.dumps(self.body, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def text(cls, status: int, text: str, headers: Mapping[str, str] | None = None) -> Response:
        return cls(status, {}, dict(headers or {}), text_body=text)

    @classmethod
    def html(cls, status: int, html: str, headers: Mapping[str, str] | None = None) -> Response:
        return cls(
            status, {}, dict(headers or {}), text_body=html, media_type="text/html; charset=utf-8"
        )

    @classmethod
    def error(cls, exc: DomainError) -> Response:
        headers = {}
        if isinstance(exc, MethodNotAllowed):
            headers["allow"] = ", ".join(exc.allowed)
        if isinstance(exc, ServerBusy):
            headers["retry-after"] = str(exc.retry_after_seconds)
        if isinstance(exc, Unauthorized):
            headers["www-authenticate"] = 'Bearer realm="scheduler"'

        return cls(exc.http_status, {"error": str(exc)}, headers)


Handler = Callable[[Request], Response]


class HttpApiHttp(TypedDict):
    method: str
    path: NotRequired[str]


class HttpApiContext(TypedDict):
    http: HttpApiHttp


class HttpApiEvent(TypedDict):
    """The parts of an HTTP API / Function URL event (payload format 2.0) that we read."""

    version: NotRequired[str]
    rawPath: str
    rawQueryString: NotRequired[str]
    headers: NotRequired[dict[str, str]]
    body: NotRequired[str | None]
    isBase64Encoded: NotRequired[bool]
    # Payload 2.0 carries the request's cookies here, not in a Cookie header.
    cookies: NotRequired[list[str]]
    requestContext: HttpApiContext


class HttpApiResponse(TypedDict):
    statusCode: int
    headers: dict[str, str]
    body: str
    isBase64Encoded: bool
    cookies: NotRequired[list[str]]


# -- routing ----------------------------------------------------------------------------------


_PARAM = re.compile(r"\{([a-z_]+)\}")


@dataclass(frozen=True, slots=True)
class Route:
    pattern: str  # as registered (``/jobs/{job_id}``): what ``/openapi.json`` describes
    regex: re.Pattern[str]
    method: str
    handler: Handler
    access: Access
    # What a PAGE route answers a caller without the token (the dashboard's token form).
    challenge: Handler | None = None


class Router:
    """Method + path pattern -> handler. ``{name}`` matches one path segment."""

    def __init__(self) -> None:
        self._routes: list[Route] = []

    def add(
        self,
        method: str,
        pattern: str,
        handler: Handler,
        *,
        access: Access = Access.API,
        challenge: Handler | None = None,
    ) -> None:
        """Route ``method pattern`` to ``handler``; protected (``Access.API``) unless said."""
        # Literal parts are escaped; each `{name}` becomes a named group of one path segment.
        parts = _PARAM.split(pattern)
        regex = "".join(
            re.escape(part) if index % 2 == 0 else f"(?P<{part}>[^/]+)"
            for index, part in enumerate(parts)
        )
        self._routes.append(
            Route(pattern, re.compile(regex), method.upper(), handler, access, challenge)
        )

    @property
    def routes(self) -> tuple[Route, ...]:
        """Every route, in the order they were added."""
        return tuple(self._routes)

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route for ``method path`` and its parameters; 404 or 405 as typed errors."""
        allowed: list[str] = []
        for route in self._routes:
            found = route.regex.fullmatch(path)
            if found is None:
                continue
            if route.method == method or (method == "HEAD" and route.method == "GET"):
                return route, found.groupdict()
            allowed.append(route.method)
        if allowed:
            raise MethodNotAllowed(method, path, sorted(set(allowed)))
        raise RouteNotFound(path)


# -- the application --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What a server in front of the app lets all its clients hold at once.

    The local server enforces these (API Gateway and Lambda have bounds of their own). None
    needs a signature to exhaust, so each is a cap rather than a per-client courtesy:

    - ``max_connections``: connections served at once, one thread each; beyond it a 503 from
      the accept loop. 64 is twice the 32 concurrent senders of ``bench/webhook.py``, and GitHub
      opens one short connection per delivery.
    - ``request_timeout_seconds``: to receive one whole request, headers and body, however
      steadily its bytes trickle in (else 408), which is also the longest a connection may sit
      idle before its next request. GitHub gives up on a delivery not answered within 10 s, so
      a request still arriving after 10 s is lost anyway; 10 s receives GitHub's 25 MB maximum
      at 20 Mbit/s and frees a slowloris' slot quickly.
    - ``body_budget_bytes``: bytes of request bodies buffered over all connections; a request
      whose ``Content-Length`` would go over what is left gets a 503. 64 MB holds two bodies of
      GitHub's maximum (25 MB) at once and any number of ordinary deliveries (a few KB).
    """

    max_connections: int = DEFAULT_HTTP_MAX_CONNECTIONS
    request_timeout_seconds: float = DEFAULT_HTTP_REQUEST_TIMEOUT_SECONDS
    body_budget_bytes: int = DEFAULT_HTTP_BODY_BUDGET_BYTES

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerLimits:
        return cls(
            max_connections=settings.http_max_connections,
            request_timeout_seconds=settings.http_request_timeout_seconds,
            body_budget_bytes=settings.http_body_budget_bytes,
        )


class Application:
    def __init__(
        self,
        router: Router,
        *,
        max_body_bytes: int,
        server_limits: ServerLimits | None = None,
        auth: ApiAuth | None = None,
    ) -> None:
        self.router = router
        self.max_body_bytes = max_body_bytes
        self.server_limits = server_limits or ServerLimits()
        self.auth = auth or ApiAuth(None)

    def handle(self, request: Request) -> Response:
        with tracing.work("http", method=request.method.upper()[:16]):
            return self._handle(request)

    def _handle(self, request: Request) -> Response:
        try:
            route, params = self.router.match(request.method.upper(), request.path)
            request = replace(request, method=request.method.upper(), params=params)
            if route.access is not Access.PUBLIC:
                try:
                    self.auth.authenticate(request.headers)
                except Unauthorized:
                    if route.challenge is None:
                        raise
                    return route.challenge(request)
            if len(request.body) > self.max_body_bytes:
                raise PayloadTooLarge(f"body over the limit of {self.max_body_bytes} bytes")
            response = route.handler(request)
            if STORE.out and _store_answered(route, response):
                STORE.answered()
            return response
        except DomainError as exc:
            if isinstance(exc, StoreUnavailable):
                # Expected while the database is out: one line when it starts and one when it
                # ends (scheduler.store_outage), not an error with a traceback per request.
                STORE.refused(exc, f"{request.method} {request.path}")
            elif exc.http_status >= 500:
                log.error("request failed: %s", exc, extra={"path": request.path})
            return Response.error(exc)
        except Exception:
            log.exception("unexpected error", extra={"path": request.path})
            return Response(500, {"error": "internal error"})

    def handle_lambda(self, event: HttpApiEvent) -> HttpApiResponse:
        """Serve an API Gateway HTTP API or Function URL event (payload format 2.0)."""
        try:
            request = request_from_lambda(event, self.max_body_bytes)
        except DomainError as exc:
            response = Response.error(exc)
        else:
            response = self.handle(request)
        # The same guard as the local server's: no header value can split the answer.
        headers = dict(sendable({"content-type": response.content_type, **response.headers}))
        answer: HttpApiResponse = {
            "statusCode": response.status,
            "headers": headers,
            "body": response.encode().decode(),
            "isBase64Encoded": False,
        }
        cookie = headers.pop("set-cookie", None)
        if cookie is not None:  # payload 2.0 sets cookies through their own field
            answer["cookies"] = [cookie]
        return answer


def request_from_lambda(event: HttpApiEvent, max_body_bytes: int) -> Request:
    raw = event.get("body") or ""
    if len(raw) > max_body_bytes * 4 // 3 + 4:  # refuse before decoding an oversized body
        raise PayloadTooLarge(f"body over the limit of {max_body_bytes} bytes")
    if event.get("isBase64Encoded"):
        try:
            body = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise WebhookRejected("body is not valid base64") from exc
    else:
        body = raw.encode("utf-8")
    if len(body) > max_body_bytes:
        raise PayloadTooLarge(f"body over the limit of {max_body_bytes} bytes")
    # HTTP API and Function URLs lower-case header names and join repeated ones with commas.
    headers = {name.lower(): value for name, value in (event.get("headers") or {}).items()}
    if event.get("cookies"):
        headers["cookie"] = "; ".join(event.get("cookies") or [])
    return Request(
        method=event["requestContext"]["http"]["method"].upper(),
        path=event["rawPath"],
        headers=headers,
        body=body,
        query=dict(parse_qsl(event.get("rawQueryString") or "")),
    )


def _store_answered(route: Route, response: Response) -> bool:
    """Did serving this request take an answer from the database? (ends an outage)

    A read route's success did; so did a webhook that made or found a job. Health, the
    OpenAPI document, static files and a ping or an ignored event touch no table: their
    success says nothing about the database.
    """
    if response.status >= 400:
        return False
    if route.access is not Access.PUBLIC:
        return True
    return route.pattern == "/webhook" and "job_id" in response.body


def _healthz(_: Request) -> Response:
    """200 while the process answers; ``disk`` names its disk condition (``ok``, ``full``,
    ``over_quota``, ``read_only``) so a probe sees a full disk the process lives through."""
    return Response(200, {"status": "ok", "disk": DISK.condition})


def _openapi(_: Request) -> Response:
    """The OpenAPI 3.1 description of every route (``scheduler/api/openapi.json``)."""
    text = openapi.document_text()
    return Response(
        200, {}, {"cache-control": "no-cache"}, text_body=text, media_type="application/json"
    )


def create_query_app(
    settings: Settings,
    routes: Iterable[Callable[[Router], None]],
    *,
    auth: ApiAuth | None = None,
    max_body_bytes: int = 0,
) -> Application:
    """An application of read routes (and health, and what else ``routes`` add), with no
    webhook: what AWS serves behind a URL of its own, apart from the public webhook."""
    router = Router()
    router.add("GET", "/healthz", _healthz, access=Access.PUBLIC)
    router.add("GET", "/openapi.json", _openapi, access=Access.PUBLIC)
    for register in routes:
        register(router)
    return Application(
        router,
        max_body_bytes=max_body_bytes,
        server_limits=ServerLimits.from_settings(settings),
        auth=auth or ApiAuth(settings.api_token),
    )


def _app_requests(
    settings: Settings, store: JobStore, config: RepositoryConfig
) -> AppRequests | None:
    """The handler of the App's deliveries in App mode; else None, with nothing imported."""
    if not settings.github_app_id:
        return None
    from scheduler.github.app_mode import app_requests_for

    return app_requests_for(settings, store, config)


def create_app(
    settings: Settings,
    *,
    store: JobStore | None = None,
    config: RepositoryConfig | None = None,
    clock: Clock = system_clock,
    extra_routes: Iterable[Callable[[Router], None]] = (),
    auth: ApiAuth | None = None,
) -> Application:
    """The application for ``settings``: checks the secret and the configuration first.

    Raises :class:`ConfigurationError` (no webhook secret without the opt-out, a bad
    configuration file) so that a misconfigured server never starts. Binds the models to the
    settings' tables and endpoint.
    """
    # GitHub's side is imported here, not with the module: the read routes' Lambda function
    # (create_query_app) receives no delivery and needs none of it; and App mode (httpx, the
    # App's API client) only when it is configured.
    from scheduler.github.clone_urls import github_host
    from scheduler.github.delivery import WebhookService, webhook_secret

    secret = webhook_secret(settings)
    config = config if config is not None else load_config(settings.config_path)
    models.bind(settings)
    store = store or JobStore.from_settings(settings, clock=clock)
    # Make the botocore client now: made lazily, the first burst of concurrent requests would
    # each build one (seconds of CPU under the GIL) before any of them is served.
    _ = store.connection.client
    webhook = WebhookService(
        store,
        config,
        secret=secret,
        clock=clock,
        guard_window_ms=settings.retention_days * DAY_MS,
        github_host=github_host(settings.github_api_url),
        app=_app_requests(settings, store, config),  # GitHub App mode, else None
    )

    def receive(request: Request) -> Response:
        answer = webhook.receive(request.headers, request.body)
        return Response(answer.status, answer.body)

    router = Router()
    # Authenticated by its signature alone (GitHub sends no token).
    router.add("POST", "/webhook", receive, access=Access.PUBLIC)
    router.add("GET", "/healthz", _healthz, access=Access.PUBLIC)
    router.add("GET", "/openapi.json", _openapi, access=Access.PUBLIC)
    for register in extra_routes:
        register(router)
    return Application(
        router,
        max_body_bytes=settings.webhook_max_body_bytes,
        server_limits=ServerLimits.from_settings(settings),
        auth=auth or ApiAuth(settings.api_token, clock=clock),
    )
