"""Commit statuses against a loopback HTTP server standing in for GitHub's API."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from scheduler.github.statuses import GitHubNotifier, StatusUpdate

TOKEN = "ghp_test_token_123"


class FakeGitHub(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict[str, Any]] = []
        self.answers: list[int] = []  # status codes to answer, in order; then 201

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @classmethod
    @contextlib.contextmanager
    def serving(cls) -> Iterator[FakeGitHub]:
        """One, answering on a thread of its own meanwhile."""
        server = cls()
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield server
        finally:
            server.shutdown()
            server.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: FakeGitHub

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append(
            {
                "method": "POST",
                "path": self.path,
                "headers": dict(self.headers),
                "body": json.loads(body),
            }
        )
        code = self.server.answers.pop(0) if self.server.answers else 201
        payload = b'{"message": "x"}'
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with FakeGitHub.serving() as server:
        yield server


UPDATE = StatusUpdate(
    repo="octo-org/api",
    sha="c" * 40,
    state="success",
    description="Passed",
    context="ci/scheduler",
    target_url="https://ci.example/jobs/gh-1",
)


def test_posts_the_documented_request(github: FakeGitHub) -> None:
    notifier = GitHubNotifier(TOKEN, api_url=github.url, sleep=lambda _: None)
    assert notifier.submit(UPDATE).result(10) is True
    notifier.close()
    (request,) = github.requests
    assert request["path"] == f"/repos/octo-org/api/statuses/{'c' * 40}"
    assert request["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert request["headers"]["Accept"] == "application/vnd.github+json"
    assert request["body"] == {
        "state": "success",
        "description": "Passed",
        "context": "ci/scheduler",
        "target_url": "https://ci.example/jobs/gh-1",
    }


def test_on_lambda_a_status_is_posted_before_submit_returns(github: FakeGitHub) -> None:
    """No pool (Lambda freezes background threads between invocations): inline, done."""
    notifier = GitHubNotifier(TOKEN, api_url=github.url, max_workers=0, sleep=lambda _: None)
    posted = notifier.submit(UPDATE)
    assert posted.done() and posted.result() is True
    assert len(github.requests) == 1
    assert not any(t.name.startswith("notify") for t in threading.enumerate())
    notifier.close()


def test_server_errors_are_retried_with_backoff(github: FakeGitHub) -> None:
    github.answers = [502, 503]
    sleeps: list[float] = []
    notifier = GitHubNotifier(TOKEN, api_url=github.url, sleep=sleeps.append)
    assert notifier.post(UPDATE) is True
    assert len(github.requests) == 3 and sleeps == [0.5, 1.0]


def test_client_errors_are_not_retried_and_never_raise(
    github: FakeGitHub, caplog: pytest.LogCaptureFixture
) -> None:
    github.answers = [422]
    notifier = GitHubNotifier(TOKEN, api_url=github.url, sleep=lambda _: None)
    assert notifier.post(UPDATE) is False
    assert len(github.requests) == 1
    assert TOKEN not in caplog.text


def test_unreachable_api_gives_up_quietly(caplog: pytest.LogCaptureFixture) -> None:
    notifier = GitHubNotifier(TOKEN, api_url="http://127.0.0.1:9", attempts=2, sleep=lambda _: None)
    assert notifier.post(UPDATE) is False
    assert TOKEN not in caplog.text
