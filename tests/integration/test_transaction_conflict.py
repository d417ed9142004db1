"""DynamoDB's TransactionConflict cancellation, which DynamoDB Local never returns, injected."""

from __future__ import annotations

import json
from typing import Any

import pytest

from scheduler.models import RepoModel
from scheduler.store import JobState, JobStore, NewJob, StoreContended


class _Http:
    status_code = 400
    headers: dict[str, str] = {}


def inject_conflicts(store: JobStore, times: int) -> list[dict[str, Any]]:
    """Cancel the next ``times`` transactions with a TransactionConflict on the repo item.

    Returns the list of intercepted requests, so the test can check their shape.
    """
    seen: list[dict[str, Any]] = []

    def before_call(params: dict[str, Any], **_: Any) -> tuple[_Http, dict[str, Any]] | None:
        seen.append(json.loads(params["body"]))
        if len(seen) > times:
            return None  # let the real request through
        return _Http(), {
            "Error": {"Code": "TransactionCanceledException", "Message": "conflict"},
            "CancellationReasons": [{"Code": "None"}, {"Code": "TransactionConflict"}],
        }

    store.connection.client.meta.events.register(
        "before-call.dynamodb.TransactWriteItems", before_call
    )
    return seen


def test_conflicts_are_retried_then_succeed(settings: Any, tables: Any) -> None:
    sleeps: list[float] = []
    store = JobStore.from_settings(settings, sleep=sleeps.append)
    job = store.create(NewJob("c1", "org/r", "push", "c" * 40, 60))
    seen = inject_conflicts(store, times=2)
    result = store.activate(job, slot_limit=1)
    assert isinstance(result, JobState) and result.version == 1
    assert len(seen) == 3 and len(sleeps) == 2
    # Every retry sent the same two conditional updates.
    assert all(len(body["TransactItems"]) == 2 for body in seen)
    assert RepoModel.get("org/r", consistent_read=True).running == 1


def test_persistent_conflict_is_a_retryable_error_not_a_lost_race(
    settings: Any, tables: Any
) -> None:
    store = JobStore.from_settings(settings, sleep=lambda _: None, conflict_retries=3)
    job = store.create(NewJob("c2", "org/r", "push", "c" * 40, 60))
    inject_conflicts(store, times=100)
    with pytest.raises(StoreContended):
        store.activate(job, slot_limit=1)
    assert store.state("c2").status.value == "pending"
