"""The doctor's pure ``examine`` on concurrency groups: two of a group's jobs holding slots is a
drift; a queued job of a held group waits for it (not stranded), one of a free group with a
free slot is stranded. Items built in memory: no table is read."""

from __future__ import annotations

from scheduler.db.models import JobModel, RepoModel
from scheduler.runs.doctor import QUEUED_WITH_FREE_SLOT, Drift, examine

REPO = "octo-org/deploys"
NOW = 10_000_000
OLD = NOW - 600_000  # older than the doctor's 5 minutes: a stranding if nothing holds it


def item(
    job_id: str,
    status: str,
    group: str | None = None,
    *,
    slot_held: bool = False,
    at: int = OLD,
) -> JobModel:
    return JobModel(
        job_id,
        repo=REPO,
        status=status,
        received_at=at,
        updated_at=at,
        finished_at=at if status in ("passed", "cancelled") else None,
        concurrency_group=group,
        slot_held=True if slot_held else None,
    )


def counters(jobs: list[JobModel], limit: int, running: int) -> RepoModel:
    """Counters that agree with ``jobs`` (``running`` slots held)."""
    repo = RepoModel(REPO, running=running, slot_limit=limit)
    for job in jobs:
        name = f"n_{job.status}"
        setattr(repo, name, int(getattr(repo, name) or 0) + 1)
    return repo


def test_two_jobs_of_a_group_holding_slots_is_a_drift_of_the_group() -> None:
    jobs = [
        item("d1", "active", "deploy"),
        item("d2", "active", "deploy"),
        item("x1", "active", "docs"),
        item("u1", "active"),
        item("u2", "active"),
    ]
    drift, _ = examine(counters(jobs, limit=5, running=5), jobs, NOW, 300_000)
    assert drift == [Drift(REPO, "group:deploy", 1, 2)]
    # A cancelled job whose run is not known stopped still holds its slot, and its group.
    held = [item("d1", "cancelled", "deploy", slot_held=True), item("d2", "active", "deploy")]
    drift, _ = examine(counters(held, limit=5, running=2), held, NOW, 300_000)
    assert drift == [Drift(REPO, "group:deploy", 1, 2)]
    # Once its slot is released, the group is the next job's: no drift.
    freed = [item("d1", "cancelled", "deploy"), item("d2", "active", "deploy")]
    drift, _ = examine(counters(freed, limit=5, running=1), freed, NOW, 300_000)
    assert drift == []


def test_a_queued_job_of_a_held_group_is_not_stranded_one_of_a_free_group_is() -> None:
    jobs = [
        item("holder", "active", "deploy"),
        item("waits", "pending", "deploy"),  # its group held: it waits for the holder's end
        item("free", "pending", "docs"),  # its group held by nobody, a slot free: stranded
        item("plain", "pending"),  # no group, a slot free: stranded
        item("recent", "pending", "docs", at=NOW - 1_000),  # too recent to judge
    ]
    drift, stranded = examine(counters(jobs, limit=3, running=1), jobs, NOW, 300_000)
    assert drift == []
    assert [(s.job_id, s.problem) for s in stranded] == [
        ("free", QUEUED_WITH_FREE_SLOT),
        ("plain", QUEUED_WITH_FREE_SLOT),
    ]
    # The group held by a cancelled job whose slot is not released yet: still waiting.
    cancelled = [item("holder", "cancelled", "deploy", slot_held=True), jobs[1]]
    _, stranded = examine(counters(cancelled, limit=3, running=1), cancelled, NOW, 300_000)
    assert [(s.job_id, s.problem) for s in stranded] == [("holder", "holds_slot_after_finish")]
    # The holder ended and freed its slot: the waiting job, with a slot free, is stranded.
    ended = [item("holder", "passed", "deploy"), jobs[1]]
    _, stranded = examine(counters(ended, limit=3, running=0), ended, NOW, 300_000)
    assert [(s.job_id, s.problem) for s in stranded] == [("waits", QUEUED_WITH_FREE_SLOT)]
    # No slot free: the repository's limit, not the group, holds it.
    full = [item("holder", "passed", "deploy"), jobs[1], item("u", "active")]
    _, stranded = examine(counters(full, limit=1, running=1), full, NOW, 300_000)
    assert stranded == []
