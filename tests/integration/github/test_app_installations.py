"""The App's installed repositories are the same for every process (the repos table), and a
redelivered or late installation change cannot undo a newer one.

Two "processes": two webhook applications, each with a GitHub App of its own (built apart, as
two Lambda functions would be), serving over loopback on one DynamoDB Local. Payloads are
GitHub's own samples (npm @octokit/webhooks-examples); the GitHub API stand-in checks every
request the Apps make.
"""

from __future__ import annotations

import copy
import http.client
import json
import random
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from github_api_stand_in import GitHubStandIn

from scheduler.api.app import create_app
from scheduler.db import installations
from scheduler.db.queries import Queries
from scheduler.github import app_mode
from scheduler.github.app_events import change_time
from scheduler.github.signature import sign
from scheduler.local.http_server import LocalHTTPServer
from scheduler.settings import Settings, TableNames

EXAMPLES = (
    Path(__file__).resolve().parents[2]
    / "github-webhook-examples/node_modules/@octokit/webhooks-examples/api.github.com/index.json"
)
SECRET = "app-installations-secret-0123456789abcdef"
STAND_IN_PORT = 19061
PORTS = (19062, 19063)
INSTALLATION = 55
CACHE_SECONDS = 0.3  # how long a process may trust what it read (shortened for the test)
T0 = 1_796_000_000_000_000  # epoch microseconds of the first change


def samples() -> dict[str, list[dict[str, Any]]]:
    assert EXAMPLES.is_file(), f"{EXAMPLES} missing: run `make webhook-examples`"
    return {entry["name"]: entry["examples"] for entry in json.loads(EXAMPLES.read_text())}


SAMPLES = samples()


def uuid1_at(epoch_us: int) -> str:
    """A delivery id as GitHub makes them: a version 1 UUID holding the delivery's time."""
    ticks = epoch_us * 10 + 0x01B21DD213814000
    clock_seq = random.getrandbits(14)
    return str(
        uuid.UUID(
            fields=(
                ticks & 0xFFFFFFFF,
                (ticks >> 32) & 0xFFFF,
                ((ticks >> 48) & 0x0FFF) | 0x1000,
                ((clock_seq >> 8) & 0x3F) | 0x80,
                clock_seq & 0xFF,
                random.getrandbits(48),
            )
        )
    )


class Change:
    """An ``installation_repositories`` delivery (GitHub's sample) for one repository."""

    def __init__(self, action: str, repo: str, at_us: int, *, delivery: str | None = None) -> None:
        body = copy.deepcopy(
            next(s for s in SAMPLES["installation_repositories"] if s["action"] == action)
        )
        body["installation"]["id"] = INSTALLATION
        body["installation"]["updated_at"] = at_us // 1_000_000
        body["repositories_added"] = [{"full_name": repo}] if action == "added" else []
        body["repositories_removed"] = [{"full_name": repo}] if action == "removed" else []
        self.body = json.dumps(body).encode()
        self.delivery = delivery or uuid1_at(at_us)


class Process:
    """One webhook application with an App of its own, served over loopback."""

    def __init__(self, settings: Settings, port: int) -> None:
        app_mode._APPS.clear()  # nothing shared with the other process
        self.server = LocalHTTPServer(create_app(settings), port=port).start()
        (self.app,) = app_mode._APPS.values()  # the App this process made for itself

    def post(self, event: str, body: bytes, delivery: str) -> tuple[int, dict[str, Any]]:
        connection = http.client.HTTPConnection(*self.server.address, timeout=30)
        headers = {
            "Content-Type": "application/json",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": sign(SECRET.encode(), body),
        }
        connection.request("POST", "/webhook", body, headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())

    def deliver(self, change: Change) -> dict[str, Any]:
        status, answer = self.post("installation_repositories", change.body, change.delivery)
        assert status == 202, answer
        return answer

    def push(self, repo: str) -> dict[str, Any]:
        push = json.loads((Path(__file__).parents[2] / "events/push.branch.json").read_text())
        push["repository"]["full_name"] = repo
        push["after"] = uuid.uuid4().hex + "0" * 8
        status, answer = self.post("push", json.dumps(push).encode(), str(uuid.uuid4()))
        assert status == 202, answer
        return answer

    def builds(self, repo: str) -> bool:
        answer = self.push(repo)
        if "job_id" in answer:
            return True
        assert "uninstalled" in answer["reason"], answer
        return False


@pytest.fixture(scope="module")
def github() -> Iterator[GitHubStandIn]:
    with GitHubStandIn(port=STAND_IN_PORT) as stand_in:
        yield stand_in


@pytest.fixture
def processes(
    settings: Settings, tables: TableNames, github: GitHubStandIn, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Process, Process]]:
    monkeypatch.setattr(installations, "CACHE_SECONDS", CACHE_SECONDS)
    monkeypatch.setattr(app_mode, "_APPS", {})
    app_settings = replace(
        settings,
        webhook_secret=SECRET,
        github_app_id=str(github.app_id),
        github_app_private_key=github.private_key_pem,
        github_api_url=github.url,
    )
    github.problems.clear()
    one, two = Process(app_settings, PORTS[0]), Process(app_settings, PORTS[1])
    assert one.app is not two.app and one.app.installed is not two.app.installed
    try:
        yield one, two
    finally:
        one.server.stop()
        two.server.stop()
    assert github.problems == []


def settle() -> None:
    """Past every process's cache: what each says now comes from the table."""
    threading.Event().wait(CACHE_SECONDS + 0.1)


def test_an_installation_change_delivered_to_one_process_is_honoured_by_the_other(
    processes: tuple[Process, Process],
) -> None:
    one, two = processes
    repo = "octo-org/moving"
    assert two.builds(repo)  # never named by an installation: built as before
    assert one.deliver(Change("removed", repo, T0))["removed"] == [repo]
    settle()  # two read the repository above: its answer stands for the cache's seconds
    assert not two.builds(repo)  # two never heard the delivery, and reads the table
    assert two.deliver(Change("added", repo, T0 + 1_000_000))["added"] == [repo]
    settle()
    assert one.builds(repo)
    assert two.builds(repo)


def test_a_redelivered_addition_cannot_bring_back_a_repository_removed_after_it(
    processes: tuple[Process, Process],
) -> None:
    one, two = processes
    repo = "octo-org/leaving"
    added = Change("added", repo, T0)
    assert one.deliver(added)["added"] == [repo]
    assert two.deliver(Change("removed", repo, T0 + 2_000_000))["removed"] == [repo]
    again = one.deliver(added)  # GitHub's "Redeliver": the same id, the same payload
    assert again["added"] == [] and "newer change" in again["reason"], again
    settle()
    assert not one.builds(repo)
    assert not two.builds(repo)


def test_a_late_removal_does_not_take_away_a_repository_added_since(
    processes: tuple[Process, Process],
) -> None:
    one, two = processes
    repo = "octo-org/returning"
    assert one.deliver(Change("added", repo, T0 + 5_000_000))["added"] == [repo]
    late = two.deliver(Change("removed", repo, T0 + 4_000_000))  # sent first, arrived last
    assert late["removed"] == [], late
    settle()
    assert one.builds(repo) and two.builds(repo)


def test_changes_within_one_second_are_ordered_by_their_delivery_ids(
    processes: tuple[Process, Process],
) -> None:
    """``installation.updated_at`` has whole seconds; the delivery id's own time orders a
    removal and an addition 3 ms apart, and a redelivery of the removal then changes nothing."""
    one, two = processes
    repo = "octo-org/flapping"
    removed = Change("removed", repo, T0 + 7_000_000)
    added = Change("added", repo, T0 + 7_003_000)
    seconds = [json.loads(c.body)["installation"]["updated_at"] for c in (removed, added)]
    assert seconds[0] == seconds[1]
    assert one.deliver(removed)["removed"] == [repo]
    assert two.deliver(added)["added"] == [repo]
    assert two.deliver(removed)["removed"] == []
    settle()
    assert one.builds(repo)


def test_concurrent_changes_end_with_the_newest_in_every_process(
    processes: tuple[Process, Process],
) -> None:
    """Twelve changes delivered at once, in a random order, half to each process, each twice:
    every conditional write races, and the newest change is what both processes see."""
    one, two = processes
    repo = "octo-org/racing"
    changes = [
        Change("added" if n % 2 else "removed", repo, T0 + 10_000_000 + n * 1000) for n in range(12)
    ]
    newest = changes[-1]  # n = 11: added
    order = [(n, change) for n, change in enumerate(changes)] * 2
    random.shuffle(order)
    barrier = threading.Barrier(len(order))
    errors: list[BaseException] = []

    def send(n: int, change: Change) -> None:
        try:
            barrier.wait(10)
            (one if n % 2 else two).deliver(change)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send, args=pair) for pair in order]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    settle()
    assert one.builds(repo) and two.builds(repo)
    assert two.deliver(changes[-2])["removed"] == []  # older than the newest: refused
    assert one.deliver(newest)["added"] == [repo]  # its own redelivery: the same answer


def test_the_counters_scans_leave_installation_items_out(
    processes: tuple[Process, Process], settings: Settings
) -> None:
    one, _two = processes
    one.deliver(Change("removed", "octo-org/hidden", T0))
    one.push("octo-org/counted")
    names = [stats.repo for stats in Queries.from_settings(settings).repositories()]
    assert names == ["octo-org/counted"], names


@pytest.mark.parametrize(
    ("delivery", "updated_at", "expected"),
    [
        (uuid1_at(T0 + 123), 1, T0 + 123),  # the delivery id's time wins
        (str(uuid.uuid4()), 1_557_933_591, 1_557_933_591_000_000),  # GitHub's epoch seconds
        (str(uuid.uuid4()), "2021-04-28T22:32:50.000-04:00", 1_619_663_570_000_000),
        (str(uuid.uuid4()), "2021-04-29T02:32:50Z", 1_619_663_570_000_000),
        ("not-a-uuid", None, None),  # nothing says when: the receiving process's clock
        (str(uuid.uuid4()), "yesterday", None),
    ],
)
def test_a_change_is_timed_by_its_delivery_id_else_by_the_installations_update(
    delivery: str, updated_at: object, expected: int | None
) -> None:
    assert change_time(delivery, updated_at) == expected
