"""Event shapes of Lambda's DynamoDB stream event source mapping (and what the local runner
sends): the batch event and the partial batch response keyed by sequence number."""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

__all__ = [
    "BatchItemFailure",
    "PartialBatchResponse",
    "StreamEvent",
    "StreamRecord",
    "StreamRecordData",
]


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
