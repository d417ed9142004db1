"""Hostile field values in signed deliveries: a 4xx naming the field, never a 5xx, nothing written.

Each delivery is correctly signed (so it passes the first gate) and carries one bad value in a
field that would reach the job item: a quarter-megabyte ref (an item over DynamoDB's 400 KB
limit), lone surrogates and NULs (text that cannot be stored as UTF-8), over-long names and a
pull request number no DynamoDB number can hold. They go to the real ``LocalHTTPServer`` on
loopback, in front of DynamoDB Local; the jobs and repos tables must stay empty.

The last section is the other side of the trigger guard: a reopened pull request whose head
did not move is not a duplicate, and must build again.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from scheduler.api.app import create_app
from scheduler.config import parse_config
from scheduler.db.models import JobModel, RepoModel
from scheduler.github.payload import BuildRequest, Delivery, interpret
from scheduler.github.signature import sign
from scheduler.local.http_server import LocalHTTPServer
from scheduler.settings import Settings, TableNames

EVENTS = Path(__file__).resolve().parents[1] / "events"
SECRET = "bad-input-sizes-secret-0123456789"
CONFIG = parse_config('[defaults]\nbranches = ["*"]\ntags = ["*"]\n', source="test-config")


@dataclass
class Answer:
    status: int
    body: dict[str, Any]


@pytest.fixture(scope="module")
def server(settings: Settings) -> Iterator[LocalHTTPServer]:
    # The default 25 MB body limit: a quarter-megabyte field passes the transport's checks and
    # must be refused by the payload's own.
    app = create_app(replace(settings, webhook_secret=SECRET), config=CONFIG)
    with LocalHTTPServer(app) as running:
        yield running


def event_body(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((EVENTS / f"{name}.json").read_text())
    return document


def deliver(server: LocalHTTPServer, event: str, body: bytes, delivery: str = "bad-1") -> Answer:
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": sign(SECRET.encode(), body),
    }
    host, port = server.address
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        connection.request("POST", "/webhook", body=body, headers=headers)
        response = connection.getresponse()
        return Answer(response.status, json.loads(response.read()))
    finally:
        connection.close()


def assert_nothing_written() -> None:
    assert list(JobModel.scan(consistent_read=True)) == []
    assert list(RepoModel.scan(consistent_read=True)) == []


def push_with(path: str, value: Any) -> tuple[str, dict[str, Any]]:
    return "push", _with(event_body("push.branch"), path, value)


def pull_with(path: str, value: Any) -> tuple[str, dict[str, Any]]:
    return "pull_request", _with(event_body("pull_request.opened"), path, value)


def _with(document: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    *parents, last = path.split(".")
    target = document
    for key in parents:
        target = target[key]
    target[last] = value
    return document


# -- the quarter-megabyte ref ----------------------------------------------------------------


def test_a_quarter_megabyte_ref_is_refused_with_4xx_and_nothing_written(
    server: LocalHTTPServer, tables: TableNames
) -> None:
    event, payload = push_with("ref", "refs/heads/" + "a" * 250_000)
    answer = deliver(server, event, json.dumps(payload).encode())
    assert 400 <= answer.status < 500, answer.body
    assert set(answer.body) == {"error"} and "'ref'" in answer.body["error"]
    # The answer names the field and the limit; it does not echo the quarter megabyte back.
    assert len(json.dumps(answer.body)) < 300
    assert_nothing_written()


# -- every text field that reaches a job item ------------------------------------------------

TEXT_FIELDS: dict[str, Callable[[Any], tuple[str, dict[str, Any]]]] = {
    "ref": lambda value: push_with("ref", f"refs/heads/{value}"),
    "sender.login": lambda value: push_with("sender.login", value),
    "repository.full_name": lambda value: push_with("repository.full_name", f"octo/{value}"),
    "pull_request.head.ref": lambda value: pull_with("pull_request.head.ref", value),
    "pull_request.base.ref": lambda value: pull_with("pull_request.base.ref", value),
}

BAD_TEXT: dict[str, str] = {
    "lone high surrogate": "main\ud800",
    "lone low surrogate": "\udfffmain",
    "NUL": "ma\x00in",
    "control character": "main\x1b[31m",
}


@pytest.mark.parametrize("bad", BAD_TEXT)
@pytest.mark.parametrize("field", TEXT_FIELDS)
def test_a_lone_surrogate_nul_or_control_character_is_refused_with_4xx_naming_the_field(
    server: LocalHTTPServer, tables: TableNames, field: str, bad: str
) -> None:
    event, payload = TEXT_FIELDS[field](BAD_TEXT[bad])
    # json.dumps escapes a lone surrogate as \ud800: the body itself is valid ASCII JSON.
    answer = deliver(server, event, json.dumps(payload).encode())
    assert 400 <= answer.status < 500, answer.body
    assert set(answer.body) == {"error"} and f"'{field}'" in answer.body["error"]
    assert_nothing_written()


TOO_LONG: dict[str, tuple[str, dict[str, Any]]] = {
    # Git refs live as files: one component of more than 255 bytes cannot be a ref.
    "ref component over 255 bytes": push_with("ref", "refs/heads/" + "b" * 256),
    # 128 two-byte characters: 256 bytes, although only 128 characters.
    "ref component of 256 UTF-8 bytes": push_with("ref", "refs/heads/" + "é" * 128),
    "ref over 1024 bytes": push_with("ref", "refs/heads/" + "/".join(["c" * 200] * 6)),
    "head ref over 1024 bytes": pull_with("pull_request.head.ref", "/".join(["d" * 200] * 6)),
    "base ref component over 255 bytes": pull_with("pull_request.base.ref", "e" * 256),
    "sender login over 100": push_with("sender.login", "f" * 101),
}


@pytest.mark.parametrize("case", TOO_LONG)
def test_an_over_long_field_is_refused_with_4xx_naming_the_field(
    server: LocalHTTPServer, tables: TableNames, case: str
) -> None:
    event, payload = TOO_LONG[case]
    answer = deliver(server, event, json.dumps(payload).encode())
    assert 400 <= answer.status < 500, answer.body
    assert "bytes" in answer.body["error"] or "characters" in answer.body["error"]
    assert_nothing_written()


@pytest.mark.parametrize("number", [10**40, 2**31])
def test_a_pull_request_number_beyond_any_github_number_is_refused(
    server: LocalHTTPServer, tables: TableNames, number: int
) -> None:
    # 10**40 has more digits than a DynamoDB number may hold (38).
    event, payload = pull_with("number", number)
    payload["pull_request"]["number"] = number
    answer = deliver(server, event, json.dumps(payload).encode())
    assert 400 <= answer.status < 500, answer.body
    assert "'number'" in answer.body["error"]
    assert_nothing_written()


def test_invalid_utf8_bytes_in_the_body_are_refused(
    server: LocalHTTPServer, tables: TableNames
) -> None:
    body = json.dumps(event_body("push.branch")).encode().replace(b"master", b"mas\xffter", 1)
    answer = deliver(server, "push", body)
    assert answer.status == 400 and "malformed JSON" in answer.body["error"]
    assert_nothing_written()


# -- what is legitimate still builds -------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "branch"),
    [
        # A 255-byte component (the most a ref component may have) inside a long ref.
        ("refs/heads/team/" + "g" * 255, "team/" + "g" * 255),
        # Non-ASCII branch names are legal in git; an astral character is a surrogate *pair*
        # in JSON's escapes and a valid character once decoded.
        ("refs/heads/feature/caf\u00e9-\U0001f680", "feature/caf\u00e9-\U0001f680"),
    ],
)
def test_long_and_non_ascii_refs_within_the_limits_still_build(
    server: LocalHTTPServer, tables: TableNames, ref: str, branch: str
) -> None:
    event, payload = push_with("ref", ref)
    answer = deliver(server, event, json.dumps(payload).encode(), delivery="ok-1")
    assert (answer.status, answer.body) == (202, {"job_id": "gh-ok-1"})
    [job] = JobModel.scan(consistent_read=True)
    assert (job.ref, job.branch) == (ref, branch)


# -- a reopened pull request builds again (issue 10, defect 10) -------------------------------


def build_request(event: str, name: str, delivery_id: str, **pull_request: Any) -> BuildRequest:
    body = event_body(name)
    if pull_request:
        body["pull_request"] = {**body["pull_request"], **pull_request}
    wanted = interpret(Delivery(event=event, delivery_id=delivery_id, payload=body))
    assert isinstance(wanted, BuildRequest)
    return wanted


LATER = "2019-05-16T09:00:00Z"  # pull_request.updated_at of a later close and reopen


def test_a_reopened_pull_request_has_a_trigger_key_of_its_own_reopening() -> None:
    opened = build_request("pull_request", "pull_request.opened", "p1")
    reopened = build_request("pull_request", "pull_request.reopened", "p2")
    later = build_request("pull_request", "pull_request.reopened", "p3", updated_at=LATER)
    # The same PR and head sha: what the trigger names is unchanged ...
    assert (reopened.trigger, reopened.sha) == (opened.trigger, opened.sha)
    # ... but a reopen asks for a build of its own, each time it happens ...
    assert len({opened.trigger_key, reopened.trigger_key, later.trigger_key}) == 3
    # ... and only then: the same signed body under a fresh X-GitHub-Delivery (which is not
    # signed) is the same reopening, so the same build.
    replayed = build_request("pull_request", "pull_request.reopened", "p9")
    assert replayed.trigger_key == reopened.trigger_key
    # Other actions keep the guard of (PR, sha): another delivery of them is the same build.
    assert build_request("pull_request", "pull_request.opened", "p4").trigger_key == (
        opened.trigger_key
    )


def test_a_reopened_pull_request_with_an_unchanged_head_builds_again_and_its_replay_finds_it(
    server: LocalHTTPServer, tables: TableNames
) -> None:
    def send(name: str, delivery_id: str, **pull_request: Any) -> Answer:
        body = event_body(name)
        body["pull_request"] = {**body["pull_request"], **pull_request}
        return deliver(server, "pull_request", json.dumps(body).encode(), delivery=delivery_id)

    opened = send("pull_request.opened", "pr-open-1")
    assert (opened.status, opened.body) == (202, {"job_id": "gh-pr-open-1"})
    # A second delivery of "opened" for the same commit is still the same build.
    assert send("pull_request.opened", "pr-open-2").body["job_id"] == "gh-pr-open-1"
    reopened = send("pull_request.reopened", "pr-reopen-1")
    assert (reopened.status, reopened.body) == (202, {"job_id": "gh-pr-reopen-1"})
    # GitHub's redelivery of the reopen reuses its delivery id: the same job, nothing new.
    again = send("pull_request.reopened", "pr-reopen-1")
    assert (again.status, again.body["job_id"]) == (200, "gh-pr-reopen-1")
    # A replay of the same signed body with made-up delivery ids: the same job every time.
    for n in range(3):
        replay = send("pull_request.reopened", f"replayed-{n}")
        assert (replay.status, replay.body["job_id"]) == (200, "gh-pr-reopen-1"), replay
    # Closed and reopened once more (GitHub moves updated_at): another build.
    assert send("pull_request.reopened", "pr-reopen-2", updated_at=LATER).status == 202
    jobs = sorted(job.job_id for job in JobModel.scan(consistent_read=True))
    assert jobs == ["gh-pr-open-1", "gh-pr-reopen-1", "gh-pr-reopen-2"]
    [counters] = [r for r in RepoModel.scan(consistent_read=True) if "/" in r.repo]
    assert counters.n_pending == 3
