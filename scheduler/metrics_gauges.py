"""Gauges read at scrape time: queue depth, slots in use and jobs by status per repository,
and the age of the job at the head of the queue.

Never a scan. The repositories worth showing are those with live work, which sparse indexes
already list: the repos table's ``with_queue`` index (repositories with queued jobs, with their
pending count) and the jobs table's ``active_by_deadline`` and ``held_slots`` indexes (jobs
holding slots: at most the sum of the concurrency limits). Their counters items then come in
one ``BatchGetItem`` per 100 repositories; the head of the queue is the first key of the
``queued_by_age`` index (priority, then arrival). Everything is capped by ``max_repos``, so a
scrape costs a handful of requests however many jobs exist. A repository whose work is done
leaves the gauges (Prometheus then stops its series): its totals live in its counters item
(``scheduler stats``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from scheduler.db.models import QUEUED_SHARD, JobModel, RepoModel
from scheduler.db.store import JobStore
from scheduler.errors import StoreUnavailable

__all__ = ["STATUSES", "QueueGauges", "RepoGauge", "read_gauges"]

STATUSES = ("waiting", "blocked", "pending", "active", "passed", "failed", "cancelled", "skipped")
_BATCH = 100  # BatchGetItem's most keys


@dataclass(frozen=True)
class RepoGauge:
    repo: str
    pending: int
    running: int
    slot_limit: int | None
    jobs: dict[str, int] = field(default_factory=dict)  # status -> count (its counters item)


@dataclass(frozen=True)
class QueueGauges:
    repos: list[RepoGauge]
    oldest_queued_age_seconds: float | None  # the head of the queue; None if none is queued
    truncated: bool  # more repositories have live work than ``max_repos``

    @property
    def queued(self) -> int:
        return sum(r.pending for r in self.repos)


def read_gauges(
    store: JobStore, now_ms: int, *, max_repos: int = 200, counters: bool = True
) -> QueueGauges:
    """The gauges now (see the module docstring for what is read).

    Without ``counters`` no counters item is read: queue depths come from the ``with_queue``
    index's projection and slots in use from the jobs holding them (what the reaper's role
    may read on AWS); limits and counts by status are then unknown.
    """
    marked, more = store.reads.repos_with_queue(after=None, limit=max_repos)
    names = dict.fromkeys(repo for repo, _pending in marked)
    holding = [*store.reads.active(limit=max_repos * 8), *store.reads.held_slots(limit=max_repos)]
    for job in holding:
        names.setdefault(job.repo)
    truncated = more is not None or len(names) > max_repos
    shown = list(names)[:max_repos]
    if counters:
        items = _counters(store, shown)
        repos = [_gauge(name, items.get(name, {})) for name in shown]
    else:
        pending = dict(marked)
        held = Counter(job.repo for job in holding)
        repos = [RepoGauge(name, max(0, pending.get(name, 0)), held[name], None) for name in shown]
    return QueueGauges(repos, _head_age(store, now_ms), truncated)


def _counters(store: JobStore, names: list[str]) -> dict[str, dict[str, Any]]:
    """Counters items by repository name (eventually consistent: a gauge, not a decision)."""
    client = store.connection.client
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(names), _BATCH):
        keys: list[dict[str, Any]] = [{"repo": {"S": n}} for n in names[start : start + _BATCH]]
        while keys:
            try:
                answer = client.batch_get_item(
                    RequestItems={RepoModel.Meta.table_name: {"Keys": keys}}
                )
            except (BotoCoreError, ClientError) as exc:
                raise StoreUnavailable(f"cannot read the repositories' counters: {exc}") from exc
            for item in answer.get("Responses", {}).get(RepoModel.Meta.table_name, []):
                found[item["repo"]["S"]] = item
            keys = (
                answer.get("UnprocessedKeys", {}).get(RepoModel.Meta.table_name, {}).get("Keys", [])
            )
    return found


def _number(item: dict[str, Any], name: str) -> int | None:
    value = item.get(name, {}).get("N")
    return int(value) if value is not None else None


def _gauge(repo: str, item: dict[str, Any]) -> RepoGauge:
    return RepoGauge(
        repo=repo,
        pending=max(0, _number(item, "n_pending") or 0),
        running=max(0, _number(item, "running") or 0),
        slot_limit=_number(item, "slot_limit"),
        jobs={status: _number(item, f"n_{status}") or 0 for status in STATUSES},
    )


def _head_age(store: JobStore, now_ms: int) -> float | None:
    """Seconds the job at the head of the queue has waited (its key holds its arrival)."""
    try:
        page = store.connection.client.query(
            TableName=JobModel.Meta.table_name,
            IndexName="queued_by_age",
            KeyConditionExpression="queue_shard = :queued",
            ExpressionAttributeValues={":queued": {"S": QUEUED_SHARD}},
            Limit=1,
        )
    except (BotoCoreError, ClientError) as exc:
        raise StoreUnavailable(f"cannot read the head of the queue: {exc}") from exc
    return head_age(page.get("Items", []), now_ms)


def head_age(items: Iterable[dict[str, Any]], now_ms: int) -> float | None:
    """The age in seconds of the first ``queued_by_age`` item (``priority#received#job``)."""
    for item in items:
        _priority, received, _job = item["queue_key"]["S"].split("#", 2)
        return max(0.0, (now_ms - int(received)) / 1000)
    return None
