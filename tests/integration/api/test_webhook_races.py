"""Concurrent deliveries over real HTTP: every delivery makes exactly one job, counters exact."""

from __future__ import annotations

import http.client
import json
import random
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from scheduler.api.app import create_app
from scheduler.db.models import RepoModel
from scheduler.github.signature import sign
from scheduler.local.http_server import LocalHTTPServer
from scheduler.settings import Settings, TableNames

EVENTS = Path(__file__).resolve().parents[2] / "events"
SECRET = b"race-webhook-secret-0123456789abcdef"
PUSH: dict[str, Any] = json.loads((EVENTS / "push.branch.json").read_text())


@pytest.fixture(scope="module")
def server(settings: Settings) -> Iterator[LocalHTTPServer]:
    app = create_app(replace(settings, webhook_secret=SECRET.decode()))
    with LocalHTTPServer(app) as running:
        yield running


def push_body(repo: str, sha: str) -> bytes:
    payload = {**PUSH, "after": sha, "repository": {**PUSH["repository"], "full_name": repo}}
    return json.dumps(payload).encode()


class Client:
    """One keep-alive connection per thread, as a pool of GitHub senders would have."""

    def __init__(self, server: LocalHTTPServer) -> None:
        self.address = server.address
        self.local = threading.local()

    def post(self, delivery: str, body: bytes) -> tuple[int, dict[str, Any]]:
        connection = getattr(self.local, "connection", None)
        if connection is None:
            connection = http.client.HTTPConnection(*self.address, timeout=60)
            self.local.connection = connection
        headers = {
            "Content-Type": "application/json",
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": sign(SECRET, body),
        }
        connection.request("POST", "/webhook", body, headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())


def count_jobs(ddb: Any, settings: Settings) -> int:
    return int(
        ddb.scan(TableName=settings.tables.jobs, Select="COUNT", ConsistentRead=True)["Count"]
    )


def test_50_concurrent_identical_deliveries_make_one_job(
    server: LocalHTTPServer, tables: TableNames, ddb: Any, settings: Settings
) -> None:
    body = push_body("octo-org/api", "a" * 40)
    barrier = threading.Barrier(50)
    answers: list[tuple[int, dict[str, Any]]] = []
    lock = threading.Lock()

    def send() -> None:
        connection = http.client.HTTPConnection(*server.address, timeout=60)
        connection.connect()
        barrier.wait()  # all connected, then all at once
        headers = {
            "Content-Type": "application/json",
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": "0f1e2d3c-0000-4000-8000-000000000050",
            "X-Hub-Signature-256": sign(SECRET, body),
        }
        connection.request("POST", "/webhook", body, headers)
        response = connection.getresponse()
        with lock:
            answers.append((response.status, json.loads(response.read())))
        connection.close()

    threads = [threading.Thread(target=send) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert len(answers) == 50
    assert {body["job_id"] for _, body in answers} == {"gh-0f1e2d3c-0000-4000-8000-000000000050"}
    assert Counter(status for status, _ in answers) == {202: 1, 200: 49}
    assert count_jobs(ddb, settings) == 1
    assert RepoModel.get("octo-org/api", consistent_read=True).n_pending == 1


def test_500_distinct_deliveries_sent_3_times_shuffled_from_16_threads(
    server: LocalHTTPServer, tables: TableNames, ddb: Any, settings: Settings
) -> None:
    repos = [f"octo-org/repo-{n}" for n in range(10)]
    deliveries = [
        (f"00000000-0000-4000-8000-{n:012d}", push_body(repos[n % 10], f"{n + 1:040x}"))
        for n in range(500)
    ]
    sends = deliveries * 3
    random.Random(20260312).shuffle(sends)
    client = Client(server)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda item: (item[0], *client.post(*item)), sends))

    assert all(body["job_id"] == f"gh-{delivery}" for delivery, _, body in answers)
    assert Counter(status for _, status, _ in answers) == {202: 500, 200: 1000}
    assert count_jobs(ddb, settings) == 500
    pending = {repo: RepoModel.get(repo, consistent_read=True).n_pending for repo in repos}
    assert pending == dict.fromkeys(repos, 50)


def test_concurrent_deliveries_of_one_commit_under_different_ids_make_one_job(
    server: LocalHTTPServer, tables: TableNames, ddb: Any, settings: Settings
) -> None:
    body = push_body("octo-org/api", "b" * 40)
    client = Client(server)
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda n: client.post(f"dup-{n}", body), range(32)))
    job_ids = {answer["job_id"] for _, answer in answers}
    assert len(job_ids) == 1
    assert Counter(status for status, _ in answers) == {202: 1, 200: 31}
    assert count_jobs(ddb, settings) == 1
    assert RepoModel.get("octo-org/api", consistent_read=True).n_pending == 1
