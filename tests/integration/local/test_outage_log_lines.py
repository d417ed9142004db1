"""A database outage is two log lines, not one per refused webhook or per waiting round.

DynamoDB Local (a server of this module's own, on disk) is SIGKILLed while deliveries keep
coming, then started again: the webhook answers 503 meanwhile, the reaper and the stream
runner wait. The log holds one line naming what failed when the outage begins and one when
the database answers again (how long, how many requests refused), and no traceback.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from scheduler.api.app import Request, create_app
from scheduler.github.signature import sign
from scheduler.local.dynamodb_local import DynamoDBLocal
from scheduler.local.stack import LocalStack, StackOptions
from scheduler.settings import Settings
from scheduler.store_outage import STORE
from tests.conftest import own_dynamodb

SECRET = "outage-log-webhook-secret-0123456789abcdef"
REPO = "outage/log-lines"
DYNAMODB_PORT = 19041
HTTP_PORT = 19042


class Lines(logging.Handler):
    """Every record of the ``scheduler`` loggers, at WARNING and above."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self) -> list[str]:
        return [record.getMessage() for record in self.records]


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("scheduler")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DynamoDBLocal, Settings]]:
    data_dir = tmp_path_factory.mktemp("outage-log-ddb")
    with own_dynamodb("ol-", data_dir=data_dir, port=DYNAMODB_PORT) as pair:
        yield pair


@pytest.fixture
def server(db: tuple[DynamoDBLocal, Settings]) -> Iterator[DynamoDBLocal]:
    ddb, _settings = db
    if not ddb.alive:
        ddb.restart()
    STORE.answered()  # a previous test's outage is not this one's
    yield ddb
    if not ddb.alive:
        ddb.restart()


def kill(server: DynamoDBLocal) -> None:
    assert server.pid is not None
    os.killpg(server.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while server.alive and time.monotonic() < deadline:
        time.sleep(0.05)


def push(delivery: str) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(
        {
            "ref": "refs/heads/main",
            "after": f"{abs(hash(delivery)):040x}"[-40:],
            "repository": {"full_name": REPO},
            "sender": {"login": "octocat"},
        }
    ).encode()
    headers = {
        "content-type": "application/json",
        "x-github-event": "push",
        "x-github-delivery": delivery,
        "x-hub-signature-256": sign(SECRET.encode(), body),
    }
    return body, headers


def outage_lines(lines: Lines) -> tuple[list[str], list[str]]:
    messages = lines.messages()
    began = [m for m in messages if m.startswith("database unavailable")]
    ended = [m for m in messages if m.startswith("database answers again")]
    return began, ended


def test_a_stack_logs_an_outage_as_two_lines(
    server: DynamoDBLocal, db: tuple[DynamoDBLocal, Settings], tmp_path: Path, lines: Lines
) -> None:
    _server, settings = db
    config = tmp_path / "scheduler.toml"
    config.write_text(
        '[defaults]\ncommand = ["true"]\ncheckout = false\nsandbox = "off"\nconcurrency = 2\n'
    )
    options = StackOptions(
        port=HTTP_PORT,
        data_dir=tmp_path / "data",
        reaper_interval_seconds=0.25,
        sweep_interval_seconds=0.5,
    )
    stack = LocalStack(replace(settings, webhook_secret=SECRET, config_path=config), options)
    with stack, httpx.Client(base_url=stack.url, timeout=15) as http:

        def deliver(delivery: str) -> int:
            body, headers = push(delivery)
            return http.post("/webhook", content=body, headers=headers).status_code

        assert deliver("before-0") == 202
        time.sleep(1.0)  # the stream and the reaper at work
        lines.records.clear()

        kill(server)
        refused = 0
        outage_started = time.monotonic()
        number = 0
        while time.monotonic() - outage_started < 6.0:  # reaper: ~24 rounds, webhook: ~30
            number += 1
            status = deliver(f"during-{number}")
            assert status == 503, status
            refused += 1
            time.sleep(0.2)
        server.restart()
        deadline = time.monotonic() + 60
        while (status := deliver(f"after-{number}")) != 202:
            assert status == 503, status
            refused += 1
            assert time.monotonic() < deadline, "the webhook never took a delivery again"
            time.sleep(0.2)
            number += 1
        time.sleep(1.5)  # the reaper and the stream meet the database again

    began, ended = outage_lines(lines)
    assert len(began) == 1, lines.messages()
    assert len(ended) == 1, lines.messages()
    assert f": {refused} requests refused (503)" in ended[0], (ended, refused)
    assert refused >= 20
    noise = [
        m
        for m in lines.messages()
        if m not in began + ended and ("store" in m.lower() or "request failed" in m)
    ]
    assert not noise, noise
    assert not [r for r in lines.records if r.exc_info], "a traceback was logged"
    assert not STORE.out


def test_the_webhook_alone_ends_an_outage_it_met(
    server: DynamoDBLocal, db: tuple[DynamoDBLocal, Settings], lines: Lines
) -> None:
    """On AWS the webhook function has no reaper or stream runner beside it: its own first
    answer from the database ends the outage it logged."""
    _server, settings = db
    app = create_app(replace(settings, webhook_secret=SECRET))

    def deliver(delivery: str) -> int:
        body, headers = push(delivery)
        request = Request(method="POST", path="/webhook", headers=headers, body=body)
        return app.handle(request).status

    assert deliver("alone-before") == 202
    kill(server)
    statuses = [deliver(f"alone-during-{n}") for n in range(12)]
    assert statuses == [503] * 12
    began, ended = outage_lines(lines)
    assert len(began) == 1 and not ended, lines.messages()
    assert "POST /webhook failed" in began[0], began
    server.restart()
    refused = 12
    deadline = time.monotonic() + 60
    while deliver(f"alone-after-{refused}") != 202:
        refused += 1
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert deliver("alone-health-check") == 202  # no second line for a database that answers
    began, ended = outage_lines(lines)
    assert len(began) == 1 and len(ended) == 1, lines.messages()
    assert f": {refused} requests refused (503)" in ended[0], (ended, refused)
    assert not [r for r in lines.records if r.exc_info], "a traceback was logged"
