"""POST /webhook end to end against DynamoDB Local, through each transport of the one app.

Every case runs three times: over real HTTP on loopback (``LocalHTTPServer``), and through the
Lambda entry point ``scheduler.aws.handlers.webhook`` with an HTTP API payload-2.0 event, once with
a plain and once with a base64 body. Payloads are GitHub's examples from ``tests/events``.
"""

from __future__ import annotations

import base64
import copy
import http.client
import json
import logging
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

import pytest

from scheduler.api.app import create_app
from scheduler.aws import handlers
from scheduler.config import parse_config
from scheduler.db.models import JobModel, RepoModel
from scheduler.github.signature import sign
from scheduler.local.http_server import LocalHTTPServer
from scheduler.settings import Settings, TableNames

EVENTS = Path(__file__).resolve().parents[2] / "events"
SECRET = "s3cr3t-webhook-key-for-the-webhook-tests"
REPO = "codertocat/hello-world"  # the canonical form of the payloads' Codertocat/Hello-World
SMALL_LIMIT = 64 * 1024  # the Lambda transport's oversized case needs no 25 MB string

CONFIG = parse_config(
    """
    accept = ["codertocat/*", "octo-org/*"]
    [defaults]
    branches = ["master", "main", "release/*"]
    timeout_seconds = 900
    [repos."octo-org/tags"]
    tags = ["v*", "simple-*"]
    """,
    source="test-config",
)


def event_body(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((EVENTS / f"{name}.json").read_text())
    return document


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


class Transport(Protocol):
    name: str

    def send(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer: ...


class HttpTransport:
    name = "http"

    def __init__(self, server: LocalHTTPServer) -> None:
        self.host, self.port = server.address

    def send(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            raw = response.read()
            return Answer(
                response.status,
                json.loads(raw),
                {k.lower(): v for k, v in response.getheaders()},
            )
        finally:
            connection.close()


class LambdaTransport:
    def __init__(self, base64_bodies: bool) -> None:
        self.base64_bodies = base64_bodies
        self.name = "lambda-base64" if base64_bodies else "lambda"

    def send(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        event = lambda_event(method, path, headers, body, base64_body=self.base64_bodies)
        result = handlers.webhook(event, None)  # type: ignore[arg-type]
        assert result["isBase64Encoded"] is False
        return Answer(result["statusCode"], json.loads(result["body"]), result["headers"])


def lambda_event(
    method: str, path: str, headers: dict[str, str], body: bytes, *, base64_body: bool
) -> dict[str, Any]:
    """An API Gateway HTTP API / Function URL event, payload format 2.0."""
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {name.lower(): value for name, value in headers.items()},
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "abcdefghij",
            "domainName": "abcdefghij.lambda-url.us-east-1.on.aws",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "140.82.115.1",
                "userAgent": "GitHub-Hookshot/abc1234",
            },
            "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef",
            "routeKey": "$default",
            "stage": "$default",
            "time": "12/Mar/2026:19:03:58 +0000",
            "timeEpoch": 1773342238000,
        },
        "body": base64.b64encode(body).decode() if base64_body else body.decode("utf-8"),
        "isBase64Encoded": base64_body,
    }


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def webhook_settings(settings: Settings) -> Settings:
    return replace(settings, webhook_secret=SECRET, webhook_max_body_bytes=SMALL_LIMIT)


@pytest.fixture(scope="module")
def server(webhook_settings: Settings) -> Iterator[LocalHTTPServer]:
    with LocalHTTPServer(create_app(webhook_settings, config=CONFIG)) as running:
        yield running


@pytest.fixture(scope="module")
def lambda_app(
    webhook_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """``scheduler.aws.handlers`` built from the environment, as on AWS."""
    config = tmp_path_factory.mktemp("config") / "repos.toml"
    config.write_text(
        'accept = ["codertocat/*", "octo-org/*"]\n[defaults]\n'
        'branches = ["master", "main", "release/*"]\ntimeout_seconds = 900\n'
        '[repos."octo-org/tags"]\ntags = ["v*", "simple-*"]\n'
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GITHUB_WEBHOOK_SECRET", SECRET)
        env.setenv("SCHEDULER_CONFIG", str(config))
        env.setenv("SCHEDULER_WEBHOOK_MAX_BODY_BYTES", str(SMALL_LIMIT))
        handlers.core.cache_clear()
        yield
        handlers.core.cache_clear()


@pytest.fixture(params=["http", "lambda", "lambda-base64"])
def transport(request: pytest.FixtureRequest, tables: TableNames) -> Transport:
    if request.param == "http":
        return HttpTransport(request.getfixturevalue("server"))
    request.getfixturevalue("lambda_app")
    return LambdaTransport(base64_bodies=request.param == "lambda-base64")


@pytest.fixture(autouse=True)
def secret_never_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG, logger="scheduler")
    yield
    assert SECRET not in caplog.text


# -- helpers ----------------------------------------------------------------------------------


def delivery_headers(
    event: str, body: bytes, delivery: str, *, content_type: str = "application/json"
) -> dict[str, str]:
    return {
        "Content-Type": content_type,
        "User-Agent": "GitHub-Hookshot/abc1234",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "X-GitHub-Hook-ID": "292430182",
        "X-Hub-Signature-256": sign(SECRET.encode(), body),
    }


def deliver(
    transport: Transport,
    event: str,
    payload: dict[str, Any] | bytes,
    delivery: str = "d0000000-0000-0000-0000-000000000001",
    **header_changes: str | None,
) -> Answer:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = delivery_headers(event, body, delivery)
    for name, value in header_changes.items():
        key = name.replace("_", "-")
        headers = {k: v for k, v in headers.items() if k.lower() != key.lower()}
        if value is not None:
            headers[key] = value
    return transport.send("POST", "/webhook", headers, body)


def job_items() -> list[dict[str, Any]]:
    return [job.to_simple_dict() for job in JobModel.scan(consistent_read=True)]


def repo_items() -> dict[str, dict[str, Any]]:
    return {item.repo: item.to_simple_dict() for item in RepoModel.scan(consistent_read=True)}


def assert_nothing_written() -> None:
    assert job_items() == []
    assert repo_items() == {}


def assert_secret_absent(answer: Answer) -> None:
    assert SECRET not in json.dumps(answer.body) and SECRET not in json.dumps(answer.headers)


# -- accepted deliveries ----------------------------------------------------------------------

JOB_ATTRIBUTES = {
    "job_id",
    "repo",
    "event",
    "ref",
    "branch",
    "sha",
    "pr_number",
    "clone_url",  # the https URL a checkout fetches from (validated, never a path)
    "sender",
    "delivery_id",
    "fork",  # a pull request from a fork: waits for approval, never gets secrets
    "pipeline_owed",  # its commit's pipeline file is read before it may run
    "trigger_key",  # a hash of (repo, event, ref or PR, sha): released if cancelled
    "status",
    "attempt",
    "version",
    "priority",
    "timeout_seconds",
    "received_at",
    "updated_at",
    "history",
    "queue_repo",
    "queue_shard",
    "queue_key",
}


def test_push_to_a_branch_creates_one_pending_job(transport: Transport) -> None:
    push = event_body("push.branch")
    answer = deliver(transport, "push", push, "72d3162e-cc78-11e3-81ab-4c9367dc0958")
    assert (answer.status, answer.body) == (
        202,
        {"job_id": "gh-72d3162e-cc78-11e3-81ab-4c9367dc0958"},
    )
    assert answer.headers["content-type"] == "application/json"
    [job] = job_items()
    assert set(job) <= JOB_ATTRIBUTES  # what later steps need; never the payload
    assert {k: job[k] for k in ("repo", "event", "sha", "ref", "branch", "sender")} == {
        "repo": REPO,
        "event": "push",
        "sha": push["after"],
        "ref": "refs/heads/master",
        "branch": "master",
        "sender": "Codertocat",
    }
    assert (job["status"], job["attempt"], job["version"], job["timeout_seconds"]) == (
        "pending",
        1,
        0,
        900,
    )
    assert job["delivery_id"] == "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    repos = repo_items()
    assert repos[REPO]["n_pending"] == 1 and repos[REPO]["last_job_id"] == job["job_id"]
    assert len(repos) == 2  # the counters and the trigger guard


def test_redelivery_answers_200_with_the_same_job_and_writes_nothing(
    transport: Transport,
) -> None:
    push = event_body("push.branch")
    first = deliver(transport, "push", push, "d1")
    before = (job_items(), repo_items())
    again = deliver(transport, "push", push, "d1")
    assert first.status == 202 and again.status == 200
    assert again.body == {"job_id": first.body["job_id"], "reason": "delivery already seen"}
    assert (job_items(), repo_items()) == before


def test_same_commit_and_trigger_under_another_delivery_answers_the_existing_job(
    transport: Transport,
) -> None:
    push = event_body("push.branch")
    first = deliver(transport, "push", push, "d1")
    before = (job_items(), repo_items())
    other = deliver(transport, "push", push, "d2")
    assert other.status == 200 and other.body["job_id"] == first.body["job_id"]
    assert (job_items(), repo_items()) == before
    # Another branch at the same commit is another trigger: a job of its own.
    moved = deliver(transport, "push", {**push, "ref": "refs/heads/release/1.0"}, "d3")
    assert moved.status == 202 and moved.body["job_id"] == "gh-d3"
    assert repo_items()[REPO]["n_pending"] == 2


def test_pull_request_builds_head_sha_and_a_reopen_of_the_same_sha_builds_again(
    transport: Transport,
) -> None:
    opened = event_body("pull_request.opened")
    first = deliver(transport, "pull_request", opened, "p1")
    assert first.status == 202
    [job] = job_items()
    assert (job["sha"], job["pr_number"], job["ref"], job["branch"]) == (
        opened["pull_request"]["head"]["sha"],
        2,
        "refs/pull/2/head",
        "changes",
    )
    reopened = deliver(transport, "pull_request", event_body("pull_request.reopened"), "p2")
    # A reopened pull request builds again, even with an unchanged head (issue 10).
    assert (reopened.status, reopened.body["job_id"]) == (202, "gh-p2")
    pushed = event_body("pull_request.synchronize")
    pushed["pull_request"]["head"]["sha"] = "f" * 40
    assert deliver(transport, "pull_request", pushed, "p3").status == 202
    assert len(job_items()) == 3 and repo_items()[REPO]["n_pending"] == 3


def test_ping_answers_200(transport: Transport) -> None:
    answer = deliver(transport, "ping", event_body("ping"))
    assert (answer.status, answer.body) == (200, {"reason": "pong"})
    assert_nothing_written()


def test_form_encoded_deliveries_are_supported(transport: Transport) -> None:
    body = urlencode({"payload": json.dumps(event_body("push.branch"))}).encode()
    headers = delivery_headers(
        "push", body, "form-1", content_type="application/x-www-form-urlencoded"
    )
    answer = transport.send("POST", "/webhook", headers, body)
    assert (answer.status, answer.body) == (202, {"job_id": "gh-form-1"})


def tag_push(repo: str) -> dict[str, Any]:
    push = event_body("push.tag")
    push["repository"]["full_name"] = repo
    return push


def branch_deleted() -> dict[str, Any]:
    push = event_body("push.deleted")
    push["ref"] = "refs/heads/master"
    return push


def other_repo() -> dict[str, Any]:
    push = event_body("push.branch")
    push["repository"]["full_name"] = "intruder/repo"
    return push


def other_branch() -> dict[str, Any]:
    return {**event_body("push.branch"), "ref": "refs/heads/feature/x"}


def pr_to_other_base() -> dict[str, Any]:
    pull = event_body("pull_request.opened")
    pull["pull_request"]["base"]["ref"] = "gh-pages"
    return pull


IGNORED: dict[str, tuple[str, Callable[[], dict[str, Any]], str]] = {
    "issues event": ("issues", lambda: event_body("issues.opened"), "event issues makes no job"),
    "pr closed": ("pull_request", lambda: event_body("pull_request.closed"), "'closed'"),
    "tag deleted": ("push", lambda: event_body("push.deleted"), "deletes refs/tags/simple-tag"),
    "branch deleted": ("push", branch_deleted, "deletes refs/heads/master"),
    "tag not configured": ("push", lambda: tag_push(REPO), "tag simple-tag is not built"),
    "repo not accepted": ("push", other_repo, "intruder/repo is not accepted"),
    "branch not built": ("push", other_branch, "branch feature/x is not built"),
    "pr base not built": ("pull_request", pr_to_other_base, "branch gh-pages is not built"),
}


@pytest.mark.parametrize("case", IGNORED)
def test_deliveries_that_make_no_job_answer_202_with_a_reason(
    transport: Transport, case: str
) -> None:
    event, payload, reason = IGNORED[case]
    answer = deliver(transport, event, payload())
    assert answer.status == 202 and "job_id" not in answer.body
    assert reason in answer.body["reason"]
    assert_nothing_written()


def test_tags_build_where_configured(transport: Transport) -> None:
    answer = deliver(transport, "push", tag_push("octo-org/tags"), "t1")
    assert (answer.status, answer.body) == (202, {"job_id": "gh-t1"})
    [job] = job_items()
    assert (job["ref"], job.get("branch")) == ("refs/tags/simple-tag", None)


def test_healthz(transport: Transport) -> None:
    answer = transport.send("GET", "/healthz", {}, b"")
    assert (answer.status, answer.body) == (200, {"status": "ok", "disk": "ok"})


# -- bad input: a 4xx with an error message, nothing written ----------------------------------


def _push_bytes() -> bytes:
    return json.dumps(event_body("push.branch")).encode()


def _signed(
    body: bytes,
    changes: dict[str, str | None] | None = None,
    *,
    content_type: str = "application/json",
) -> tuple[dict[str, str], bytes]:
    """A signed delivery of ``body`` with ``changes`` to its headers (None removes one)."""
    headers = delivery_headers("push", body, "bad-1", content_type=content_type)
    for name, value in (changes or {}).items():
        headers.pop(name, None)
        if value is not None:
            headers[name] = value
    return headers, body


def _case_missing_signature() -> tuple[dict[str, str], bytes]:
    return _signed(_push_bytes(), {"X-Hub-Signature-256": None})


def _case_malformed_signature() -> tuple[dict[str, str], bytes]:
    return _signed(_push_bytes(), {"X-Hub-Signature-256": "sha256=not-hex"})


def _case_wrong_signature() -> tuple[dict[str, str], bytes]:
    body = _push_bytes()
    return _signed(body, {"X-Hub-Signature-256": sign(b"wrong secret", body)})


def _case_signature_of_other_body() -> tuple[dict[str, str], bytes]:
    headers, _ = _signed(_push_bytes())
    tampered = event_body("push.branch")
    tampered["after"] = "f" * 40
    return headers, json.dumps(tampered).encode()


def _case_sha1_signature_only() -> tuple[dict[str, str], bytes]:
    headers, body = _signed(_push_bytes(), {"X-Hub-Signature-256": None})
    return {**headers, "X-Hub-Signature": "sha1=" + "0" * 40}, body


def _wrong_type(change: dict[str, Any]) -> bytes:
    return json.dumps({**event_body("push.branch"), **change}).encode()


BAD_INPUT: dict[str, tuple[Callable[[], tuple[dict[str, str], bytes]], int, str]] = {
    "missing signature": (_case_missing_signature, 401, "missing X-Hub-Signature-256"),
    "malformed signature": (_case_malformed_signature, 401, "malformed X-Hub-Signature-256"),
    "sha1 signature only": (_case_sha1_signature_only, 401, "missing X-Hub-Signature-256"),
    "wrong signature": (_case_wrong_signature, 401, "does not match"),
    "signature over another body": (_case_signature_of_other_body, 401, "does not match"),
    "missing event header": (
        lambda: _signed(_push_bytes(), {"X-GitHub-Event": None}),
        400,
        "missing X-GitHub-Event",
    ),
    "missing delivery header": (
        lambda: _signed(_push_bytes(), {"X-GitHub-Delivery": None}),
        400,
        "missing X-GitHub-Delivery",
    ),
    "malformed delivery header": (
        lambda: _signed(_push_bytes(), {"X-GitHub-Delivery": "../../x"}),
        400,
        "malformed X-GitHub-Delivery",
    ),
    "unknown event": (
        lambda: _signed(_push_bytes(), {"X-GitHub-Event": "launch_missiles"}),
        400,
        "unknown event",
    ),
    "malformed json": (lambda: _signed(b'{"ref": "refs/heads/main",'), 400, "malformed JSON"),
    "json not an object": (lambda: _signed(b'["push"]'), 400, "must be an object"),
    "repository a string": (
        lambda: _signed(_wrong_type({"repository": REPO})),
        400,
        "'repository' must be an object, not a string",
    ),
    "after a number": (
        lambda: _signed(_wrong_type({"after": 1})),
        400,
        "'after' must be a string",
    ),
    "missing ref": (lambda: _signed(_wrong_type({"ref": None})), 400, "missing field 'ref'"),
    "non-json content type": (
        lambda: _signed(_push_bytes(), content_type="text/plain"),
        415,
        "unsupported content type 'text/plain'",
    ),
    "form without payload field": (
        lambda: _signed(b"data=1", content_type="application/x-www-form-urlencoded"),
        400,
        "'payload' field",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_a_4xx_with_an_error_and_writes_nothing(
    transport: Transport, case: str
) -> None:
    make, status, message = BAD_INPUT[case]
    headers, body = make()
    answer = transport.send("POST", "/webhook", headers, body)
    assert answer.status == status, answer.body
    assert set(answer.body) == {"error"} and message in answer.body["error"]
    assert answer.headers["content-type"] == "application/json"
    assert_secret_absent(answer)
    assert_nothing_written()


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/webhook", 405),
        ("PUT", "/webhook", 405),
        ("DELETE", "/webhook", 405),
        ("POST", "/healthz", 405),
        ("POST", "/hooks", 404),
        ("GET", "/", 404),
        ("PURGE", "/webhook", 405),
    ],
)
def test_wrong_method_and_unknown_path(
    transport: Transport, method: str, path: str, status: int
) -> None:
    body = _push_bytes()
    answer = transport.send(method, path, delivery_headers("push", body, "m-1"), body)
    assert answer.status == status and "error" in answer.body
    if status == 405:
        assert answer.headers["allow"] in ("POST", "GET")
    assert_nothing_written()


def test_body_over_the_limit_is_413(transport: Transport) -> None:
    push = event_body("push.branch")
    push["padding"] = "x" * SMALL_LIMIT
    body = json.dumps(push).encode()
    answer = transport.send("POST", "/webhook", delivery_headers("push", body, "big-1"), body)
    assert answer.status == 413 and "over the limit" in answer.body["error"]
    assert_nothing_written()


def test_invalid_base64_body_is_400(lambda_app: None, tables: TableNames) -> None:
    event = lambda_event("POST", "/webhook", {}, b"", base64_body=True)
    event["body"] = "not base64!"
    result = handlers.webhook(event, None)  # type: ignore[arg-type]
    assert result["statusCode"] == 400
    assert json.loads(result["body"]) == {"error": "body is not valid base64"}


# -- the HTTP server's own edges --------------------------------------------------------------


def raw_exchange(server: LocalHTTPServer, request: bytes) -> tuple[int, dict[str, Any]]:
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def test_http_server_refuses_a_huge_body_before_reading_it(
    server: LocalHTTPServer, tables: TableNames
) -> None:
    # Announce 30 MB and send none of it: the answer comes at once, from the header alone.
    status, body = raw_exchange(
        server,
        b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 31457280\r\n\r\n",
    )
    assert status == 413 and "over the limit" in body["error"]
    assert_nothing_written()


@pytest.mark.parametrize(
    ("headers", "status", "message"),
    [
        (b"Transfer-Encoding: chunked\r\n", 411, "Content-Length"),
        (b"Content-Length: nope\r\n", 400, "Content-Length"),
        (b"Content-Length: -5\r\n", 400, "Content-Length"),
    ],
)
def test_http_server_refuses_bodies_of_unknown_length(
    server: LocalHTTPServer, tables: TableNames, headers: bytes, status: int, message: str
) -> None:
    answer = raw_exchange(server, b"POST /webhook HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert answer[0] == status and message in answer[1]["error"]


def test_http_server_answers_a_garbage_request_line_with_json(server: LocalHTTPServer) -> None:
    status, body = raw_exchange(server, b"GET /a b HTTP/1.1\r\n\r\n")
    assert status == 400 and "error" in body


def test_keep_alive_connection_serves_many_deliveries(
    server: LocalHTTPServer, tables: TableNames
) -> None:
    host, port = server.address
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        for index in range(5):
            push = copy.deepcopy(event_body("push.branch"))
            push["after"] = f"{index + 1:040x}"
            body = json.dumps(push).encode()
            connection.request(
                "POST", "/webhook", body, delivery_headers("push", body, f"k{index}")
            )
            response = connection.getresponse()
            assert response.status == 202, response.read()
            response.read()
    finally:
        connection.close()
    assert len(job_items()) == 5


def test_start_up_refuses_a_missing_secret_and_a_bad_configuration(
    settings: Settings, tmp_path: Path
) -> None:
    from scheduler.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="GITHUB_WEBHOOK_SECRET is not set"):
        create_app(replace(settings, webhook_secret=None))
    # A short (guessable) key is refused too, and its value is never shown.
    with pytest.raises(ConfigurationError, match="31 characters long: use at least 32") as short:
        create_app(replace(settings, webhook_secret="k" * 31))
    assert "k" * 31 not in str(short.value)
    bad = tmp_path / "repos.toml"
    bad.write_text("[defaults]\nconcurrency = 'two'\n")
    with pytest.raises(ConfigurationError, match=r"key 'defaults\.concurrency'"):
        create_app(replace(settings, webhook_secret=SECRET, config_path=bad))
    # The loud opt-out works only against a local endpoint.
    with pytest.raises(ConfigurationError, match="local demos only"):
        create_app(replace(settings, allow_unsigned_webhooks=True, dynamodb_endpoint=None))


def test_the_local_opt_out_accepts_unsigned_deliveries(
    settings: Settings, tables: TableNames, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(replace(settings, webhook_secret=None, allow_unsigned_webhooks=True))
    assert "INSECURE" in caplog.text
    with LocalHTTPServer(app) as running:
        body = _push_bytes()
        headers = delivery_headers("push", body, "u1")
        del headers["X-Hub-Signature-256"]
        assert HttpTransport(running).send("POST", "/webhook", headers, body).status == 202


def test_lambda_handler_refuses_to_start_without_a_secret(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    from scheduler.errors import ConfigurationError

    monkeypatch.delenv("GITHUB_WEBHOOK_SECRET", raising=False)
    handlers.core.cache_clear()
    try:
        with pytest.raises(ConfigurationError):
            handlers.webhook(lambda_event("GET", "/healthz", {}, b"", base64_body=False), None)  # type: ignore[arg-type]
    finally:
        handlers.core.cache_clear()
