"""The stream's dead letters on AWS: the on-failure destination's messages (SQS, stubbed with
botocore's Stubber, which checks every request against the service model) made replayable by
reading the batch's records back from a real DynamoDB Local stream."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from scheduler.aws.stream_dead_letters import LetterNotReplayable, QueuedDeadLetters
from scheduler.db.clients import client
from scheduler.settings import Settings
from scheduler.stream.dead_letters import DeadLetterQueue

QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/scheduler-stream-dlq"
RECEIVE = {
    "QueueUrl": QUEUE,
    "MaxNumberOfMessages": 10,
    "VisibilityTimeout": 60,
    "WaitTimeSeconds": 0,
    "MessageSystemAttributeNames": ["SentTimestamp", "ApproximateReceiveCount"],
}


@dataclass
class Stream:
    arn: str
    shard_id: str
    sequence: dict[str, str]  # "<event> <key>" -> its record's sequence number


@pytest.fixture
def stream(settings: Settings) -> Iterator[Stream]:
    """A table with a stream and five changes on it: three jobs made, one changed, one removed."""
    dynamodb = client("dynamodb", settings)
    table = f"dlq-{uuid.uuid4().hex[:8]}"
    dynamodb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "job_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "job_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    try:
        for job in ("gh-a", "gh-b", "gh-c"):
            dynamodb.put_item(TableName=table, Item={"job_id": {"S": job}, "v": {"N": "0"}})
        dynamodb.put_item(TableName=table, Item={"job_id": {"S": "gh-b"}, "v": {"N": "1"}})
        dynamodb.delete_item(TableName=table, Key={"job_id": {"S": "gh-c"}})
        arn = dynamodb.describe_table(TableName=table)["Table"]["LatestStreamArn"]
        streams = client("dynamodbstreams", settings)
        (shard,) = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]
        iterator = streams.get_shard_iterator(
            StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        records = streams.get_records(ShardIterator=iterator)["Records"]
        sequence = {
            f"{r['eventName']} {r['dynamodb']['Keys']['job_id']['S']}": r["dynamodb"][
                "SequenceNumber"
            ]
            for r in records
        }
        yield Stream(arn, shard["ShardId"], sequence)
    finally:
        dynamodb.delete_table(TableName=table)


def destination_message(stream: Stream, first: str, last: str, size: int) -> dict[str, Any]:
    """One message as Lambda's on-failure destination sends it for a stream batch."""
    body = {
        "requestContext": {
            "requestId": str(uuid.uuid4()),
            "functionArn": "arn:aws:lambda:us-east-1:123456789012:function:stream",
            "condition": "RetryAttemptsExhausted",
            "approximateInvokeCount": 4,
        },
        "responseContext": {"statusCode": 200, "functionError": "Unhandled"},
        "version": "1.0",
        "timestamp": "2026-11-23T10:00:00.000Z",
        "DDBStreamBatchInfo": {
            "shardId": stream.shard_id,
            "startSequenceNumber": first,
            "endSequenceNumber": last,
            "approximateArrivalOfFirstRecord": "2026-11-23T09:59:00Z",
            "approximateArrivalOfLastRecord": "2026-11-23T09:59:01Z",
            "batchSize": size,
            "streamArn": stream.arn,
        },
    }
    return {"MessageId": str(uuid.uuid4()), "ReceiptHandle": "receipt-1", "Body": json.dumps(body)}


def queued(settings: Settings) -> tuple[QueuedDeadLetters, Any]:
    sqs = boto3.client(
        "sqs", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    return QueuedDeadLetters(sqs, client("dynamodbstreams", settings), QUEUE), sqs


class Handler:
    def __init__(self, fails: bool = False) -> None:
        self.events: list[dict[str, Any]] = []
        self.fails = fails

    def __call__(self, event: dict[str, Any], _context: Any) -> dict[str, Any]:
        self.events.append(event)
        if self.fails:
            first = event["Records"][0]["dynamodb"]["SequenceNumber"]
            return {"batchItemFailures": [{"itemIdentifier": first}]}
        return {"batchItemFailures": []}


def test_a_letter_is_read_back_from_the_stream_and_replayed_then_removed(
    settings: Settings, stream: Stream
) -> None:
    # The failed batch: from gh-b's INSERT to gh-c's REMOVE (a TTL-like removal the mapping's
    # filter never delivers, so a replay does not either).
    first, last = stream.sequence["INSERT gh-b"], stream.sequence["REMOVE gh-c"]
    message = destination_message(stream, first, last, 4)
    letters, sqs = queued(settings)
    handler = Handler()
    with Stubber(sqs) as stub:
        stub.add_response("receive_message", {"Messages": [message]}, RECEIVE)
        stub.add_response("receive_message", {"Messages": []}, RECEIVE)
        stub.add_response("delete_message", {}, {"QueueUrl": QUEUE, "ReceiptHandle": "receipt-1"})
        queue = DeadLetterQueue(letters, now_ms=lambda: 1)
        (letter,) = queue.list()
        assert letter.dead_letter_id == f"{stream.shard_id}#{first}"
        assert (letter.condition, letter.attempts, letter.error) == (
            "RetryAttemptsExhausted",
            4,
            "Unhandled",
        )
        seen = [(r["eventName"], r["dynamodb"]["Keys"]["job_id"]["S"]) for r in letter.records]
        assert seen == [("INSERT", "gh-b"), ("INSERT", "gh-c"), ("MODIFY", "gh-b")]
        assert all(r["eventSourceARN"] == stream.arn for r in letter.records)
        result = queue.replay(letter, handler)
        stub.assert_no_pending_responses()  # ...the message was deleted
    assert result.ok
    assert handler.events == [{"Records": letter.records}]


def test_a_letter_that_still_fails_stays_in_the_queue(settings: Settings, stream: Stream) -> None:
    first = last = stream.sequence["MODIFY gh-b"]
    letters, sqs = queued(settings)
    with Stubber(sqs) as stub:
        stub.add_response(
            "receive_message", {"Messages": [destination_message(stream, first, last, 1)]}, RECEIVE
        )
        stub.add_response("receive_message", {"Messages": []}, RECEIVE)
        queue = DeadLetterQueue(letters, now_ms=lambda: 1)
        (letter,) = queue.list()
        result = queue.replay(letter, Handler(fails=True))
        stub.assert_no_pending_responses()  # no DeleteMessage was made
    assert not result.ok and result.failed_records == [first]


def test_a_letter_past_the_streams_retention_is_listed_but_not_replayed(
    settings: Settings, stream: Stream
) -> None:
    gone = Stream(stream.arn.replace(stream.arn[-8:], "00000000"), stream.shard_id, {})
    letters, sqs = queued(settings)
    with Stubber(sqs) as stub:
        trimmed = destination_message(gone, "1".zfill(21), "2".zfill(21), 2)
        stub.add_response("receive_message", {"Messages": [trimmed]}, RECEIVE)
        stub.add_response("receive_message", {"Messages": []}, RECEIVE)
        (letter,) = letters.list()
    assert letter.records == []
    with pytest.raises(LetterNotReplayable, match="24 hours"):
        letters.replay(letter, Handler(), 1)


def test_a_message_that_is_no_stream_letter_is_skipped(settings: Settings) -> None:
    letters, sqs = queued(settings)
    with Stubber(sqs) as stub:
        odd = {"MessageId": "m-1", "ReceiptHandle": "r", "Body": "{not json"}
        stub.add_response("receive_message", {"Messages": [odd]}, RECEIVE)
        stub.add_response("receive_message", {"Messages": []}, RECEIVE)
        assert letters.list() == []


def test_the_cli_reads_the_queue_on_aws_and_the_table_locally(settings: Settings) -> None:
    from dataclasses import replace

    from scheduler.cli.commands import dead_letter_queue

    on_aws = replace(settings, dynamodb_endpoint=None, stream_dlq_url=QUEUE)
    assert isinstance(dead_letter_queue(on_aws)._store, QueuedDeadLetters)
    local = replace(settings, stream_dlq_url=QUEUE)  # a local stack is meant: its table
    assert not isinstance(dead_letter_queue(local)._store, QueuedDeadLetters)
