"""Defect 10: a cancelled commit can be built again, by a new delivery or by the operator."""

from __future__ import annotations

from typing import Any

import pytest
from stream_records import lambda_record

from scheduler.config import parse_config
from scheduler.db.queries import Queries
from scheduler.db.store import JobStore
from scheduler.github.delivery import WebhookService
from scheduler.github.signature import sign
from scheduler.runs.operations import Operations
from scheduler.stream.dispatcher import Dispatcher
from state_machines import TransitionConflict

SECRET = b"rebuild-webhook-secret-0123456789"


def _push(service: WebhookService, delivery: str, sha: str) -> tuple[int, dict[str, Any]]:
    import json

    body = json.dumps(
        {
            "ref": "refs/heads/main",
            "after": sha,
            "repository": {"full_name": "octo-org/rebuild"},
            "sender": {"login": "octocat"},
        }
    ).encode()
    answer = service.receive(
        {
            "content-type": "application/json",
            "x-github-event": "push",
            "x-github-delivery": delivery,
            "x-hub-signature-256": sign(SECRET, body),
        },
        body,
    )
    return answer.status, answer.body


@pytest.fixture
def parts(store: JobStore) -> tuple[WebhookService, Operations, Dispatcher]:
    service = WebhookService(
        store, parse_config(""), secret=SECRET, clock=lambda: 1_800_000_000_000
    )
    return service, Operations(store, Queries()), Dispatcher(store)


def test_a_new_delivery_of_a_cancelled_commit_builds_it_again(
    store: JobStore, parts: tuple[WebhookService, Operations, Dispatcher]
) -> None:
    service, operations, dispatcher = parts
    status, first = _push(service, "d-1", "e" * 40)
    assert status == 202
    # While the first job holds the commit, another delivery of it is the same job.
    assert _push(service, "d-2", "e" * 40) == (
        200,
        {"job_id": first["job_id"], "reason": "this commit is already queued for this trigger"},
    )
    before = store.get(first["job_id"])
    operations.cancel(first["job_id"])
    dispatcher.handle_record(lambda_record(before, store.get(first["job_id"])))  # the stream's turn
    status, again = _push(service, "d-3", "e" * 40)
    assert status == 202 and again["job_id"] != first["job_id"]
    # The redelivery of the first delivery is still its (cancelled) job: one delivery, one job.
    assert _push(service, "d-1", "e" * 40)[1]["job_id"] == first["job_id"]


def test_the_operator_retries_a_cancelled_job_once_its_run_is_stopped(
    store: JobStore, parts: tuple[WebhookService, Operations, Dispatcher]
) -> None:
    service, operations, dispatcher = parts
    job_id = _push(service, "d-9", "f" * 40)[1]["job_id"]
    store.activate(store.state(job_id), slot_limit=2)
    before = store.get(job_id)
    operations.cancel(job_id)
    with pytest.raises(TransitionConflict):  # its run may still be stopping: slot still held
        operations.retry(job_id)
    dispatcher.handle_record(
        lambda_record(before, store.get(job_id))
    )  # no run claimed: freed at once
    changed = operations.retry(job_id)
    assert (changed.previous_status, changed.status, changed.attempt) == (
        "cancelled",
        "pending",
        2,
    )
