"""Stream records of real job items, as the event source mapping hands them to the dispatcher
(for tests that drive the dispatcher directly, record by record)."""

from __future__ import annotations

import itertools
from typing import Any, cast

from scheduler.db.models import JobModel
from scheduler.stream.events import StreamRecord

__all__ = ["image", "lambda_event", "lambda_record", "record"]

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


def lambda_record(old: JobModel, new: JobModel) -> dict[str, Any]:
    """A MODIFY record from ``old`` to ``new``, whole, as Lambda's event source mapping sends it
    (for the AWS entry points, which check the record's shape)."""
    return {
        "eventID": f"e{next(_sequence)}",
        "eventName": "MODIFY",
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": {
            "Keys": {"job_id": {"S": new.job_id}},
            "OldImage": old.serialize(),
            "NewImage": new.serialize(),
            "SequenceNumber": f"{next(_sequence):021d}",
            "SizeBytes": 100,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        },
        "eventSourceARN": "arn:aws:dynamodb:us-east-1:123:table/jobs/stream/x",
    }


def lambda_event(old: JobModel, new: JobModel) -> dict[str, Any]:
    """A stream batch of that one record."""
    return {"Records": [lambda_record(old, new)]}
