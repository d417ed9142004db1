"""DynamoDB's TransactionConflict cancellation, which DynamoDB Local never returns, injected."""

from __future__ import annotations

from typing import Any

import pytest
from faults import inject_conflicts

from scheduler.db.models import RepoModel
from scheduler.db.store import JobState, JobStore, NewJob, StoreContended


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
