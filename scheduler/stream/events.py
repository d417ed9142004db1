"""Event shapes of Lambda's DynamoDB stream event source mapping (and what the local runner
sends): the batch event and the partial batch response keyed by sequence number."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal, NotRequired, TypedDict

__all__ = [
    "BatchItemFailure",
    "PartialBatchResponse",
    "StreamEvent",
    "StreamRecord",
    "StreamRecordData",
    "lambda_record",
]


def lambda_record(raw: Mapping[str, Any], stream_arn: str) -> dict[str, Any]:
    """A ``GetRecords`` record in the shape Lambda delivers it (epoch seconds, source ARN)."""
    record = dict(raw)
    data = dict(raw["dynamodb"])
    created = data.get("ApproximateCreationDateTime")
    if isinstance(created, datetime):
        data["ApproximateCreationDateTime"] = created.timestamp()
    record["dynamodb"] = data
    record["eventSourceARN"] = stream_arn
    return record


class StreamRecordData(TypedDict):
    Keys: dict[str, Any]
    SequenceNumber: str
    SizeBytes: int
    StreamViewType: str
    ApproximateCreationDateTime: NotRequired[float]
    NewImage: NotRequired[dict[str, Any]]
    OldImage: NotRequired[dict[str, Any]]


class StreamRecord(TypedDict):
    eventID: str
    eventName: Literal["INSERT", "MODIFY", "REMOVE"]
    eventVersion: str
    eventSource: str
    awsRegion: str
    dynamodb: StreamRecordData
    eventSourceARN: str


class StreamEvent(TypedDict):
    Records: list[StreamRecord]


class BatchItemFailure(TypedDict):
    itemIdentifier: str


class PartialBatchResponse(TypedDict):
    batchItemFailures: list[BatchItemFailure]
