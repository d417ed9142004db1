"""Stream records of real job items, as the event source mapping hands them to the dispatcher
(for tests that drive the dispatcher directly, record by record)."""

from __future__ import annotations

import itertools
from typing import Any, cast

from scheduler.db.models import JobModel
from scheduler.stream.events import StreamRecord

__all__ = ["image", "record"]

_sequence = itertools.count(10_000)


def image(job_id: str) -> dict[str, Any]:
    """The job's item as it is now, in DynamoDB's attribute-value shape."""
    return JobModel.get(job_id, consistent_read=True).serialize()


def record(job_id: str, old: dict[str, Any] | None = None) -> StreamRecord:
    """The stream record of the job's last change (an INSERT when ``old`` is None)."""
    data: dict[str, Any] = {
        "Keys": {"job_id": {"S": job_id}},
        "NewImage": image(job_id),
        "SequenceNumber": f"{next(_sequence):021d}",
        "StreamViewType": "NEW_AND_OLD_IMAGES",
    }
    if old is not None:
        data["OldImage"] = old
    return cast(StreamRecord, {"eventName": "MODIFY" if old else "INSERT", "dynamodb": data})
