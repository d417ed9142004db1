"""A batch of finishes of one repository promotes its queue once, at the end of the batch,
without letting a new job overtake the queue and without losing a promotion to a failure."""

from __future__ import annotations

from typing import cast

import pytest
from stream_records import image, record

from scheduler.db.models import JobModel
from scheduler.db.store import JobStore, NewJob, system_clock
from scheduler.errors import BatchInterrupted, StoreUnavailable
from scheduler.stream.dispatcher import Dispatcher
from scheduler.stream.events import StreamEvent, StreamRecord
from state_machines import Trigger
from tests.conftest import counting_activations, counting_queue_reads

REPO = "org/batched"


def create(store: JobStore, job_id: str) -> None:
    store.create(NewJob(job_id=job_id, repo=REPO, event="push", sha="e" * 40, timeout_seconds=60))


def finish(store: JobStore, job_id: str) -> StreamRecord:
    old = image(job_id)
    store.transition(store.state(job_id), Trigger.PASS, actor="runner")
    return record(job_id, old)


def status(job_id: str) -> str:
    return str(JobModel.get(job_id, consistent_read=True).status)


def setup_repo(store: JobStore, limit: int, jobs: int) -> list[str]:
    """``jobs`` jobs of REPO: the first ``limit`` active, the rest queued (oldest first)."""
    ids = [f"b{n}" for n in range(jobs)]
    for job_id in ids:
        create(store, job_id)
    for job_id in ids[:limit]:
        store.activate(store.state(job_id), slot_limit=limit)
    return ids


def test_finishes_of_one_repository_promote_once_per_batch(store: JobStore) -> None:
    ids = setup_repo(store, limit=3, jobs=7)
    event = cast(StreamEvent, {"Records": [finish(store, j) for j in ids[:3]]})
    dispatcher = Dispatcher(store, slot_limit_for=lambda _repo: 3)
    calls = counting_queue_reads(store)

    assert dispatcher.handle_event(event) == {"batchItemFailures": []}
    assert calls == [REPO]  # one read of the queue for three finishes
    assert [status(j) for j in ids[3:]] == ["active"] * 3 + ["pending"]  # the oldest first


def test_a_new_job_does_not_overtake_an_owed_promotion(store: JobStore) -> None:
    ids = setup_repo(store, limit=1, jobs=2)  # b0 active, b1 queued
    finished = finish(store, ids[0])
    create(store, "newer")
    event = cast(StreamEvent, {"Records": [finished, record("newer")]})

    Dispatcher(store, slot_limit_for=lambda _repo: 1).handle_event(event)
    assert (status(ids[1]), status("newer")) == ("active", "pending")


@pytest.mark.parametrize("error", [RuntimeError("boom"), StoreUnavailable("down")])
def test_a_failed_promotion_fails_the_first_record_that_owed_it(
    store: JobStore, error: Exception, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = setup_repo(store, limit=2, jobs=4)
    records = [finish(store, j) for j in ids[:2]]
    dispatcher = Dispatcher(store, slot_limit_for=lambda _repo: 2)

    def failing(_repo: str) -> int:
        raise error

    monkeypatch.setattr(dispatcher, "promote", failing)
    first = records[0]["dynamodb"]["SequenceNumber"]
    event = cast(StreamEvent, {"Records": records})

    if isinstance(error, StoreUnavailable):  # the local runner waits and delivers it again
        with pytest.raises(BatchInterrupted) as raised:
            dispatcher.handle_event(event)
        assert raised.value.sequence_number == first
    else:
        assert dispatcher.handle_event(event) == {"batchItemFailures": [{"itemIdentifier": first}]}
    # Delivered again (from the first record on), the promotion happens.
    assert Dispatcher(store, slot_limit_for=lambda _repo: 2).handle_event(event) == {
        "batchItemFailures": []
    }
    assert [status(j) for j in ids[2:]] == ["active", "active"]


def test_a_full_repository_is_tried_once_for_the_jobs_queued_before_it_was_found_full(
    store: JobStore,
) -> None:
    ids = setup_repo(store, limit=2, jobs=2)  # both slots taken
    for n in range(5):
        create(store, f"new{n}")
    later = [system_clock() + 5_000]  # the records are read well after the jobs queued
    dispatcher = Dispatcher(store, slot_limit_for=lambda _repo: 2, clock=lambda: later[0])
    attempts = counting_activations(store)

    event = cast(StreamEvent, {"Records": [record(f"new{n}") for n in range(5)]})
    assert dispatcher.handle_event(event) == {"batchItemFailures": []}
    assert attempts == ["RepositoryFull"]  # the first new job learned it; the rest were not tried
    assert [status(f"new{n}") for n in range(5)] == ["pending"] * 5

    # A job queued after that moment is tried (a slot may have been freed and promoted since).
    create(JobStore(store.connection, clock=lambda: later[0]), "fresh")
    attempts.clear()
    dispatcher.handle_event(cast(StreamEvent, {"Records": [record("fresh")]}))
    assert attempts == ["RepositoryFull"]
    # A finish frees a slot: the queue gets it, oldest first, whatever the hint says.
    dispatcher.handle_event(cast(StreamEvent, {"Records": [finish(store, ids[0])]}))
    assert status("new0") == "active"
    assert [status(f"new{n}") for n in range(1, 5)] + [status("fresh")] == ["pending"] * 5


def test_a_promotion_tries_only_as_many_jobs_as_there_are_free_slots(store: JobStore) -> None:
    ids = setup_repo(store, limit=3, jobs=10)
    event = cast(StreamEvent, {"Records": [finish(store, j) for j in ids[:2]]})
    attempts = counting_activations(store)

    Dispatcher(store, slot_limit_for=lambda _repo: 3).handle_event(event)
    assert attempts == ["ok", "ok"]  # two slots freed, two activations, none refused
    assert [status(j) for j in ids[3:6]] == ["active", "active", "pending"]
