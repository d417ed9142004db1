"""The read routes (``scheduler.api.query_routes``) against DynamoDB Local, through each transport.

Every case runs twice: over real HTTP on loopback (``LocalHTTPServer`` serving ``create_app``
with the query routes) and through the Lambda entry point ``scheduler.aws.handlers.api`` with an
HTTP API payload-2.0 event, the app built from the environment as on AWS.
"""

from __future__ import annotations

import http.client
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Protocol
from urllib.parse import urlencode

import pytest

from scheduler.api.app import create_app
from scheduler.api.query_routes import query_routes
from scheduler.aws import handlers
from scheduler.db.queries import Queries
from scheduler.db.store import JobStore
from scheduler.local.http_server import LocalHTTPServer
from scheduler.settings import Settings
from tests.conftest import MakeJob, clear_table

SECRET = "s3cr3t-webhook-key-for-query-tests"
API_TOKEN = "api-token-for-query-tests"  # required on AWS
REPO = "octo-org/api"
OTHER = "octo-org/web"
JOBS = f"/repos/{REPO}/jobs"
NEWEST_FIRST = ["queued", "running", "pr-failed", "dev-failed", "old-passed"]


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


class Transport(Protocol):
    name: str

    def send(self, method: str, path: str, query: dict[str, str] | None = None) -> Answer: ...


class HttpTransport:
    name = "http"

    def __init__(self, server: LocalHTTPServer) -> None:
        self.host, self.port = server.address

    def send(self, method: str, path: str, query: dict[str, str] | None = None) -> Answer:
        target = f"{path}?{urlencode(query)}" if query else path
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            connection.request(method, target)
            response = connection.getresponse()
            return Answer(
                response.status,
                json.loads(response.read()),
                {name.lower(): value for name, value in response.getheaders()},
            )
        finally:
            connection.close()


class LambdaTransport:
    name = "lambda"

    def send(self, method: str, path: str, query: dict[str, str] | None = None) -> Answer:
        event = {
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": path,
            "rawQueryString": urlencode(query or {}),
            "headers": {
                "accept": "application/json",
                "host": "abc.lambda-url.on.aws",
                "authorization": f"Bearer {API_TOKEN}",
            },
            "requestContext": {
                "http": {"method": method, "path": path, "protocol": "HTTP/1.1"},
                "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
                "stage": "$default",
            },
            "isBase64Encoded": False,
        }
        result = handlers.api(event, None)  # type: ignore[arg-type]
        return Answer(result["statusCode"], json.loads(result["body"]), result["headers"])


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(settings: Settings) -> Iterator[LocalHTTPServer]:
    app = create_app(
        replace(settings, webhook_secret=SECRET),
        extra_routes=[query_routes(Queries.from_settings(settings))],
    )
    with LocalHTTPServer(app) as running:
        yield running


@pytest.fixture(scope="module")
def lambda_app(settings: Settings) -> Iterator[None]:
    """``scheduler.aws.handlers`` built from the environment (the session's tables), as on AWS."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GITHUB_WEBHOOK_SECRET", SECRET)
        env.setenv("SCHEDULER_API_TOKEN", API_TOKEN)
        env.delenv("SCHEDULER_CONFIG", raising=False)
        handlers.core.cache_clear()
        yield
        handlers.core.cache_clear()


@pytest.fixture(params=["http", "lambda"])
def transport(request: pytest.FixtureRequest) -> Transport:
    if request.param == "http":
        return HttpTransport(request.getfixturevalue("server"))
    request.getfixturevalue("lambda_app")
    return LambdaTransport()


@pytest.fixture(scope="module")
def seeded(settings: Settings, ddb: object) -> JobStore:
    """Jobs in every status, once for the module: every test here only reads."""
    clear_table(ddb, settings.tables.jobs, "job_id")
    clear_table(ddb, settings.tables.repos, "repo")
    start = time.time_ns() // 1_000_000 - 1_800_000
    ticks = itertools.count()  # a strict order: 1 s per clock reading
    store = JobStore.from_settings(settings, clock=lambda: start + 1000 * next(ticks))
    make_job = MakeJob(store)
    make_job("old-passed", "passed")
    make_job("dev-failed", "failed", branch="dev")
    make_job("pr-failed", "failed", branch="dev", event="pull_request")
    make_job("running", "active")
    make_job("queued")
    make_job("elsewhere", "failed", repo=OTHER)
    return store


def ids(answer: Answer) -> list[str]:
    assert answer.status == 200, answer.body
    return [job["job_id"] for job in answer.body["jobs"]]


def refused(answer: Answer, status: int, *words: str) -> None:
    assert answer.status == status, answer.body
    assert set(answer.body) == {"error"}
    for word in words:
        assert word in answer.body["error"]


# -- listings ---------------------------------------------------------------------------------


def test_jobs_of_a_repository_newest_first_and_filtered(
    transport: Transport, seeded: JobStore
) -> None:
    answer = transport.send("GET", JOBS)
    assert ids(answer) == NEWEST_FIRST
    assert answer.body == Queries().jobs(REPO).to_dict()  # the query layer's own shape
    assert answer.body["next_cursor"] is None and answer.body["repo"] == REPO
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["cache-control"] == "no-store"

    failed_on_dev = transport.send("GET", JOBS, {"status": "failed", "branch": "dev"})
    assert ids(failed_on_dev) == ["pr-failed", "dev-failed"]
    assert ids(transport.send("GET", JOBS, {"event": "pull_request"})) == ["pr-failed"]
    assert ids(transport.send("GET", JOBS, {"status": "cancelled"})) == []
    assert ids(transport.send("GET", f"/repos/{OTHER}/jobs")) == ["elsewhere"]
    assert ids(transport.send("GET", "/repos/nobody/nothing/jobs")) == []


def test_pages_follow_next_cursor_to_the_end(transport: Transport, seeded: JobStore) -> None:
    seen: list[str] = []
    query = {"limit": "2"}
    pages = 0
    while True:
        answer = transport.send("GET", JOBS, query)
        pages += 1
        seen += ids(answer)
        assert len(answer.body["jobs"]) <= 2
        if answer.body["next_cursor"] is None:
            break
        query = {"limit": "2", "cursor": answer.body["next_cursor"]}
    assert (seen, pages) == (NEWEST_FIRST, 3)

    first = transport.send("GET", JOBS, {"status": "failed", "limit": "1"})
    assert ids(first) == ["pr-failed"] and first.body["next_cursor"]
    rest = transport.send(
        "GET", JOBS, {"status": "failed", "limit": "1", "cursor": first.body["next_cursor"]}
    )
    assert ids(rest) == ["dev-failed"]


def test_a_cursor_is_good_on_either_transport(
    server: LocalHTTPServer, lambda_app: None, seeded: JobStore
) -> None:
    # The server and the Lambda use the same cursor key (settings): one deployment.
    first = HttpTransport(server).send("GET", JOBS, {"limit": "3"})
    rest = LambdaTransport().send("GET", JOBS, {"limit": "3", "cursor": first.body["next_cursor"]})
    assert ids(first) + ids(rest) == NEWEST_FIRST


def test_bad_cursors_and_arguments_are_400_with_the_reason(
    transport: Transport, seeded: JobStore
) -> None:
    cursor = transport.send("GET", JOBS, {"limit": "1"}).body["next_cursor"]
    tampered = cursor[:5] + ("A" if cursor[5] != "A" else "B") + cursor[6:]
    refused(transport.send("GET", JOBS, {"cursor": tampered}), 400, "invalid cursor")
    refused(transport.send("GET", JOBS, {"cursor": "garbage"}), 400, "invalid cursor")
    refused(
        transport.send("GET", f"/repos/{OTHER}/jobs", {"cursor": cursor}),
        400,
        "another repository",
    )
    refused(
        transport.send("GET", JOBS, {"status": "failed", "cursor": cursor}), 400, "other filters"
    )
    refused(transport.send("GET", JOBS, {"limit": "0"}), 400, "limit")
    refused(transport.send("GET", JOBS, {"limit": "lots"}), 400, "limit")
    refused(transport.send("GET", JOBS, {"status": "exploded"}), 400, "status must be one of")
    refused(transport.send("GET", JOBS, {"event": "Push!"}), 400, "event")
    # A misspelt filter is refused, not ignored (it would silently list everything).
    refused(transport.send("GET", JOBS, {"stauts": "failed"}), 400, "stauts", "accepted")
    refused(transport.send("GET", "/repos/-bad/name/jobs"), 400, "OWNER/NAME")
    refused(transport.send("GET", "/repos/octo%2Forg/api/jobs"), 400, "OWNER/NAME")


# -- one job, stats ---------------------------------------------------------------------------


def test_one_job_with_its_history(transport: Transport, seeded: JobStore) -> None:
    answer = transport.send("GET", "/jobs/dev-failed")
    assert answer.status == 200
    assert answer.body == Queries().job("dev-failed").to_dict()
    assert (answer.body["status"], answer.body["attempt"], answer.body["exit_code"]) == (
        "failed",
        1,
        1,
    )
    assert [(h["from"], h["to"]) for h in answer.body["history"]] == [
        (None, "pending"),
        ("pending", "active"),
        ("active", "failed"),
    ]
    # Path parameters are percent-decoded (API Gateway's rawPath is not).
    assert transport.send("GET", "/jobs/dev%2Dfailed").body == answer.body
    refused(transport.send("GET", "/jobs/no-such-job"), 404, "job no-such-job not found")
    refused(transport.send("GET", "/jobs/" + "x" * 300), 400, "job id")
    refused(transport.send("GET", "/jobs/dev-failed", {"verbose": "1"}), 400, "verbose")


def test_stats_of_a_repository(transport: Transport, seeded: JobStore) -> None:
    answer = transport.send("GET", f"/repos/{REPO}/stats")
    assert answer.status == 200
    assert answer.body == Queries().stats(REPO).to_dict()
    assert answer.body["counts"] == {
        "waiting": 0,
        "blocked": 0,
        "pending": 1,
        "active": 1,
        "passed": 1,
        "failed": 2,
        "cancelled": 0,
        "skipped": 0,
    }
    assert (answer.body["running"], answer.body["total"]) == (1, 5)
    assert answer.body["last_job"]["job_id"] == "queued"
    refused(transport.send("GET", "/repos/nobody/nothing/stats"), 404, "nobody/nothing")


# -- routing ----------------------------------------------------------------------------------


def test_unknown_paths_are_404_and_wrong_methods_405(transport: Transport) -> None:
    refused(transport.send("GET", "/nope"), 404, "no route for /nope")
    refused(transport.send("GET", f"/repos/{REPO}"), 404)
    refused(transport.send("GET", f"/repos/{REPO}/jobs/extra"), 404)
    refused(transport.send("GET", "/jobs/"), 404)
    for method, path in (
        ("POST", "/jobs/dev-failed"),
        ("DELETE", JOBS),
        ("PUT", f"/repos/{REPO}/stats"),
    ):
        answer = transport.send(method, path)
        refused(answer, 405, method, "allowed: GET")
        assert answer.headers["allow"] == "GET"
    answer = transport.send("GET", "/webhook")
    if transport.name == "lambda":
        refused(answer, 404)  # the read API's own URL has no webhook (a separate function)
    else:
        refused(answer, 405)
        assert answer.headers["allow"] == "POST"
    assert transport.send("GET", "/healthz").body == {"status": "ok", "disk": "ok"}
