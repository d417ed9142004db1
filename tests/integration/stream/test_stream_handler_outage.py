"""Issue 10, defect 2 on AWS: the stream function waits out a throttled or unreachable table
within its invocation instead of using up the mapping's retry attempts on it."""

from __future__ import annotations

from typing import Any

from faults import inject_throttling

from scheduler.db.models import JobModel
from scheduler.db.store import JobStore, NewJob
from scheduler.errors import BatchInterrupted
from scheduler.settings import Settings
from scheduler.stream.dispatcher import Dispatcher

SEQUENCE = "000000000000000000777"


def insert_event(job_id: str) -> dict[str, Any]:
    """The stream batch of one new job, as Lambda's event source mapping sends it."""
    image = JobModel.get(job_id, consistent_read=True)
    return {
        "Records": [
            {
                "eventID": "e1",
                "eventName": "INSERT",
                "eventSource": "aws:dynamodb",
                "dynamodb": {
                    "Keys": {"job_id": {"S": job_id}},
                    "NewImage": image.serialize(),
                    "SequenceNumber": SEQUENCE,
                    "StreamViewType": "NEW_AND_OLD_IMAGES",
                },
            }
        ]
    }


def new_job(store: JobStore, job_id: str) -> None:
    store.create(
        NewJob(job_id=job_id, repo="org/app", event="push", sha="c" * 40, timeout_seconds=600)
    )


def throttled_dispatcher(settings: Settings, times: int) -> tuple[Dispatcher, list[Any]]:
    """A dispatcher whose store's next ``times`` transactions are throttled."""
    store = JobStore.from_settings(settings)
    seen = inject_throttling(store, times=times, operation="TransactWriteItems")
    return Dispatcher(store), seen


def test_a_throttled_activation_is_retried_within_the_invocation(
    store: JobStore, settings: Settings
) -> None:
    new_job(store, "throttled")
    event = insert_event("throttled")
    dispatcher, seen = throttled_dispatcher(settings, times=4)

    response = dispatcher.handle_event(event, time_left_ms=lambda: 60_000)

    assert response == {"batchItemFailures": []}
    assert len(seen) >= 5  # the SDK's own attempts, then ours after a pause
    assert all("TransactItems" in body for body in seen)
    assert store.state("throttled").status.value == "active"


def test_when_the_invocation_runs_out_of_time_the_record_is_reported_not_raised(
    store: JobStore, settings: Settings
) -> None:
    new_job(store, "late")
    dispatcher, _seen = throttled_dispatcher(settings, times=1000)

    response = dispatcher.handle_event(insert_event("late"), time_left_ms=lambda: 5_000)

    assert response == {"batchItemFailures": [{"itemIdentifier": SEQUENCE}]}
    assert store.state("late").status.value == "pending"


def test_without_a_deadline_the_local_runner_is_told_to_wait(
    store: JobStore, settings: Settings
) -> None:
    new_job(store, "waits")
    dispatcher, _seen = throttled_dispatcher(settings, times=1000)
    try:
        dispatcher.handle_event(insert_event("waits"))
    except BatchInterrupted as exc:
        assert exc.sequence_number == SEQUENCE
    else:
        raise AssertionError("BatchInterrupted was not raised")
