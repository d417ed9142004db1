"""No header value can split an answer, on either runtime."""

from __future__ import annotations

from typing import Any

from scheduler.api.app import Application, Response
from scheduler.api.headers import sendable


def test_only_clean_fields_are_sent() -> None:
    headers = {
        "location": "/jobs",
        "x-split": "/\r\nset-cookie: session=evil",
        "x-lf": "a\nb",
        "x-tab": "a\tb",
        "bad name": "v",
        "x-wide": "snowman \u2603",
    }
    assert dict(sendable(headers)) == {"location": "/jobs", "x-tab": "a\tb"}


class _Echo(Application):
    def handle(self, request: Any) -> Response:
        return Response(302, {}, headers={"location": "/\r\nset-cookie: s=evil", "x-ok": "1"})


def test_a_lambda_answer_drops_a_header_that_would_split_it() -> None:
    app = _Echo.__new__(_Echo)
    app.max_body_bytes = 1024
    event: Any = {
        "rawPath": "/",
        "requestContext": {"http": {"method": "GET", "path": "/"}},
        "headers": {},
    }
    answer = app.handle_lambda(event)
    assert "location" not in answer["headers"] and answer["headers"]["x-ok"] == "1"
    assert "cookies" not in answer
