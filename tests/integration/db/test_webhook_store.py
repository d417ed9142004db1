"""The webhook's guarded create against DynamoDB Local: parity with JobStore.create, guards."""

from __future__ import annotations

import json
from typing import Any

import pytest
from faults import inject_conflicts

from scheduler.db.models import JobModel, RepoModel
from scheduler.db.store import DAY_MS, JobStore, NewJob, StoreContended
from scheduler.errors import JobExists, TriggerSeen
from scheduler.github.delivery import TRIGGER_PREFIX, create_guarded

NOW = 1_700_000_000_000


def new_job(job_id: str, repo: str) -> NewJob:
    return NewJob(
        job_id=job_id,
        repo=repo,
        event="pull_request",
        sha="c" * 40,
        timeout_seconds=600,
        ref="refs/pull/7/head",
        branch="feature",
        pr_number=7,
        sender="octocat",
        delivery_id=job_id.removeprefix("gh-"),
        priority=3,
    )


def item(job_id: str) -> dict[str, Any]:
    return JobModel.get(job_id, consistent_read=True).to_simple_dict()


def counters(repo: str) -> dict[str, Any]:
    return RepoModel.get(repo, consistent_read=True).to_simple_dict()


def test_job_item_and_counters_are_exactly_those_of_the_store(store: JobStore) -> None:
    clocked = JobStore(store.connection, clock=lambda: NOW)
    clocked.create(new_job("gh-a", "org/one"))
    assert create_guarded(store, new_job("gh-b", "org/two"), "k" * 64, now=NOW).job_id == "gh-b"

    def normalised(job_id: str, repo: str) -> dict[str, Any]:
        text = json.dumps(item(job_id)).replace(job_id, "<id>").replace(repo, "<repo>")
        return dict(json.loads(text), delivery_id="<delivery>")

    guarded = normalised("gh-b", "org/two")
    # The guarded job names its trigger, so that a cancel can release it; nothing else differs.
    assert guarded.pop("trigger_key") == "k" * 64
    assert guarded == normalised("gh-a", "org/one")
    assert {**counters("org/two"), "repo": "", "last_job_id": ""} == {
        **counters("org/one"),
        "repo": "",
        "last_job_id": "",
    }
    # The guard item holds its key, the job it names and when; nothing else (no counters).
    guard = store.connection.client.get_item(
        TableName=RepoModel.Meta.table_name,
        Key={"repo": {"S": TRIGGER_PREFIX + "k" * 64}},
        ConsistentRead=True,
    )["Item"]
    assert guard == {
        "repo": {"S": TRIGGER_PREFIX + "k" * 64},
        "last_job_id": {"S": "gh-b"},
        "last_received_at": {"N": str(NOW)},
    }


def test_same_delivery_is_job_exists_and_another_delivery_is_trigger_seen(
    store: JobStore,
) -> None:
    assert create_guarded(store, new_job("gh-1", "org/r"), "t" * 64, now=NOW).job_id == "gh-1"
    before = (item("gh-1"), counters("org/r"))
    with pytest.raises(JobExists):
        create_guarded(store, new_job("gh-1", "org/r"), "t" * 64, now=NOW + 1)
    with pytest.raises(TriggerSeen) as seen:
        create_guarded(store, new_job("gh-2", "org/r"), "t" * 64, now=NOW + 2)
    assert seen.value.job_id == "gh-1"
    assert (item("gh-1"), counters("org/r")) == before
    with pytest.raises(Exception, match="does not exist"):
        item("gh-2")


def test_a_guard_older_than_the_window_is_taken_over(store: JobStore) -> None:
    window = 30 * DAY_MS
    assert create_guarded(store, new_job("gh-old", "org/r"), "w" * 64, now=NOW).job_id == "gh-old"
    later = NOW + window + 1
    assert create_guarded(store, new_job("gh-new", "org/r"), "w" * 64, now=later).job_id == "gh-new"
    assert counters(TRIGGER_PREFIX + "w" * 64)["last_job_id"] == "gh-new"
    assert counters("org/r")["n_pending"] == 2


def test_transaction_conflicts_are_retried_with_the_same_three_items(
    settings: Any, tables: Any
) -> None:
    sleeps: list[float] = []
    store = JobStore.from_settings(settings, sleep=sleeps.append)
    seen = inject_conflicts(store, times=2)
    result = create_guarded(store, new_job("gh-c", "org/r"), "c" * 64, now=NOW)
    assert result.job_id == "gh-c" and len(seen) == 3 and len(sleeps) == 2
    assert all(len(body["TransactItems"]) == 3 for body in seen)
    assert counters("org/r")["n_pending"] == 1


def test_persistent_conflict_is_a_retryable_error(settings: Any, tables: Any) -> None:
    store = JobStore.from_settings(settings, sleep=lambda _: None)
    inject_conflicts(store, times=100)
    with pytest.raises(StoreContended):
        create_guarded(store, new_job("gh-p", "org/r"), "p" * 64, now=NOW)
    assert [job for job in JobModel.scan(consistent_read=True)] == []
