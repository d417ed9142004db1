"""Issue 10, defect 9: nothing re-drives a stalled queue. The sweeper promotes queued jobs of
repositories with free slots (a lost promotion, a raised concurrency limit), never more than
the limit however many sweepers race, and reads only sparse indexes."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from scheduler.db.clients import client
from scheduler.db.models import JobModel, RepoModel
from scheduler.db.store import JobState, JobStore, NewJob
from scheduler.db.tables import definitions, ensure_tables
from scheduler.settings import Settings, TableNames
from scheduler.stream.dispatcher import Dispatcher
from scheduler.stream.sweeper import QueueSweeper
from state_machines import Trigger


def sweeper(settings: Settings, limit: int) -> QueueSweeper:
    store = JobStore.from_settings(settings)
    dispatcher = Dispatcher(store, slot_limit_for=lambda _repo: limit)
    return QueueSweeper(store, dispatcher.promote)


def queue(store: JobStore, repo: str, count: int, prefix: str) -> list[JobState]:
    return [
        store.create(
            NewJob(
                job_id=f"{prefix}{n:02d}",
                repo=repo,
                event="push",
                sha=f"{n + 1:040x}",
                timeout_seconds=600,
            )
        )
        for n in range(count)
    ]


def statuses(job_ids: list[str]) -> list[str]:
    return [str(JobModel.get(j, consistent_read=True).status) for j in job_ids]


def test_a_lost_promotion_is_redriven_by_the_sweeper(store: JobStore, settings: Settings) -> None:
    first, _second = queue(store, "org/lost", 2, "lost")
    running = store.activate(first, slot_limit=1)
    # The finish frees the slot; the stream record that would promote the second is lost.
    store.transition(running, Trigger.PASS, actor="runner")
    assert statuses(["lost01"]) == ["pending"]

    assert sweeper(settings, limit=1).sweep_once() == {"org/lost": 1}
    assert statuses(["lost00", "lost01"]) == ["passed", "active"]
    assert RepoModel.get("org/lost", consistent_read=True).running == 1


def test_a_raised_concurrency_limit_is_picked_up_without_a_finish(
    store: JobStore, settings: Settings
) -> None:
    jobs = queue(store, "org/raised", 4, "raised")
    store.activate(jobs[0], slot_limit=1)
    assert sweeper(settings, limit=1).sweep_once() == {}  # full: nothing to do

    assert sweeper(settings, limit=3).sweep_once() == {"org/raised": 2}
    assert statuses([j.job_id for j in jobs]) == ["active", "active", "active", "pending"]


def test_every_stalled_repository_is_swept_and_full_ones_are_left_alone(
    store: JobStore, settings: Settings
) -> None:
    full = queue(store, "org/full", 2, "full")
    store.activate(full[0], slot_limit=1)
    for n in range(3):
        queue(store, f"org/free{n}", 1, f"free{n}-")
    assert sweeper(settings, limit=1).sweep_once() == {f"org/free{n}": 1 for n in range(3)}
    assert statuses(["full00", "full01"]) == ["active", "pending"]


def test_racing_sweepers_never_overfill_a_repository(store: JobStore, settings: Settings) -> None:
    jobs = queue(store, "org/race", 12, "race")
    sweepers = [sweeper(settings, limit=3) for _ in range(6)]
    barrier = threading.Barrier(len(sweepers))
    results: list[dict[str, int]] = []

    def sweep(one: QueueSweeper) -> None:
        barrier.wait()
        results.append(one.sweep_once())

    threads = [threading.Thread(target=sweep, args=(one,)) for one in sweepers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert sum(r.get("org/race", 0) for r in results) == 3
    assert Counter(statuses([j.job_id for j in jobs])) == {"active": 3, "pending": 9}
    repo = RepoModel.get("org/race", consistent_read=True)
    assert repo.running == 3


def test_a_long_queue_does_not_starve_another_repository(
    store: JobStore, settings: Settings
) -> None:
    """Issue 23: R1 (concurrency 1) has 101 jobs queued, all older than R2's one job, whose
    INSERT record was lost: R2 is visited within a bounded number of rounds all the same."""
    busy = queue(store, "org/busy", 102, "busy")
    store.activate(busy[0], slot_limit=1)
    queue(store, "org/quiet", 1, "quiet")
    one = sweeper(settings, limit=1)
    for _ in range(2):
        one.sweep_once()
    assert statuses(["quiet00"]) == ["active"]
    assert Counter(statuses([j.job_id for j in busy])) == {"active": 1, "pending": 101}


def test_tables_made_before_the_queue_index_get_it(settings: Settings) -> None:
    names = TableNames().with_prefix("old-")
    old = Settings.from_env({}).for_local(settings.dynamodb_endpoint or "", names)
    ddb: Any = client("dynamodb", old)
    kwargs = dict(definitions(old)[names.jobs].create_kwargs)
    kwargs["GlobalSecondaryIndexes"] = [
        index for index in kwargs["GlobalSecondaryIndexes"] if index["IndexName"] != "queued_by_age"
    ]
    kwargs["AttributeDefinitions"] = [
        a for a in kwargs["AttributeDefinitions"] if a["AttributeName"] != "queue_shard"
    ]
    existing = set(ddb.list_tables()["TableNames"])
    if names.jobs in existing:
        ddb.delete_table(TableName=names.jobs)
    ddb.create_table(TableName=names.jobs, **kwargs)

    ensure_tables(ddb, old)

    table = ddb.describe_table(TableName=names.jobs)["Table"]
    indexes = {i["IndexName"]: i["IndexStatus"] for i in table["GlobalSecondaryIndexes"]}
    assert indexes.get("queued_by_age") == "ACTIVE", indexes
