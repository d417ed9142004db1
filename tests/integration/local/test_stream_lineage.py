"""Shard lineage (splits cannot be forced on DynamoDB Local): a fake streams client, whose
response shapes a test checks against the real server's."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from scheduler.db.clients import client
from scheduler.db.dead_letters import DeadLetterStore
from scheduler.local.checkpoints import CheckpointStore
from scheduler.local.mapping import MappingConfig, PollingConfig
from scheduler.local.stream_runner import StreamRunner
from scheduler.settings import Settings, TableNames

CREATED = datetime(2026, 1, 1, tzinfo=UTC)
ARN = "arn:aws:dynamodb:ddblocal:000000000000:table/fake/stream/2026-01-01T00:00:00.000"


def _record(seq: int) -> dict[str, Any]:
    return {
        "eventID": f"e{seq}",
        "eventName": "INSERT",
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "ddblocal",
        "dynamodb": {
            "ApproximateCreationDateTime": CREATED.timestamp(),  # records come as sent
            "Keys": {"job_id": {"S": f"j{seq}"}},
            "NewImage": {"job_id": {"S": f"j{seq}"}},
            "SequenceNumber": f"{seq:021d}",
            "SizeBytes": 20,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        },
    }


class FakeStreams:
    """A parent shard (closed) split into two children; the newest child still open."""

    def __init__(self) -> None:
        self.shards: dict[str, dict[str, Any]] = {
            "shardId-parent": {"records": [1, 2, 3], "closed": True, "parent": None},
            "shardId-child-a": {"records": [10, 11], "closed": True, "parent": "shardId-parent"},
            "shardId-child-b": {"records": [20], "closed": False, "parent": "shardId-parent"},
        }

    def describe_stream(self, **kwargs: Any) -> dict[str, Any]:
        shards = []
        for shard_id, shard in self.shards.items():
            entry: dict[str, Any] = {
                "ShardId": shard_id,
                "SequenceNumberRange": {"StartingSequenceNumber": f"{shard['records'][0]:021d}"},
            }
            if shard["parent"]:
                entry["ParentShardId"] = shard["parent"]
            if shard["closed"]:
                entry["SequenceNumberRange"]["EndingSequenceNumber"] = (
                    f"{shard['records'][-1]:021d}"
                )
            shards.append(entry)
        return {
            "StreamDescription": {
                "StreamArn": kwargs["StreamArn"],
                "StreamLabel": "2026-01-01T00:00:00.000",
                "StreamStatus": "ENABLED",
                "StreamViewType": "NEW_AND_OLD_IMAGES",
                "CreationRequestDateTime": CREATED,
                "TableName": "fake",
                "KeySchema": [{"AttributeName": "job_id", "KeyType": "HASH"}],
                "Shards": shards,
            }
        }

    def get_shard_iterator(self, **kwargs: Any) -> dict[str, Any]:
        records = self.shards[kwargs["ShardId"]]["records"]
        start = 0
        if kwargs["ShardIteratorType"] == "AFTER_SEQUENCE_NUMBER":
            start = [r for r in records if r <= int(kwargs["SequenceNumber"])].__len__()
        return {"ShardIterator": f"{ARN}|{kwargs['ShardId']}|{start}"}

    def get_records(self, **kwargs: Any) -> dict[str, Any]:
        _, shard_id, start = kwargs["ShardIterator"].split("|")
        shard = self.shards[shard_id]
        end = int(start) + kwargs.get("Limit", 1000)
        response: dict[str, Any] = {
            "Records": [_record(seq) for seq in shard["records"][int(start) : end]]
        }
        if not shard["closed"] or end < len(shard["records"]):
            response["NextShardIterator"] = f"{ARN}|{shard_id}|{min(end, len(shard['records']))}"
        return response


class FakeTable:
    def describe_table(self, **_: Any) -> dict[str, Any]:
        return {"Table": {"LatestStreamArn": ARN}}


def _shape(value: Any) -> Any:
    """Keys (recursively) and leaf types of a response, without metadata."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items() if k != "ResponseMetadata"}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__


def test_the_fake_answers_in_the_real_apis_shapes(settings: Settings, ddb: Any) -> None:
    streams = client("dynamodbstreams", settings)
    arn = ddb.describe_table(TableName=settings.tables.jobs)["Table"]["LatestStreamArn"]
    ddb.put_item(
        TableName=settings.tables.jobs,
        Item={"job_id": {"S": "shape-probe"}, "status": {"S": "probe"}},
    )
    real_description = streams.describe_stream(StreamArn=arn)
    shard_id = real_description["StreamDescription"]["Shards"][0]["ShardId"]
    real_iterator = streams.get_shard_iterator(
        StreamArn=arn, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
    )
    real_records = streams.get_records(ShardIterator=real_iterator["ShardIterator"], Limit=1)
    ddb.delete_item(TableName=settings.tables.jobs, Key={"job_id": {"S": "shape-probe"}})

    fake = FakeStreams()
    fake_description = fake.describe_stream(StreamArn=ARN)
    open_shard = fake_description["StreamDescription"]["Shards"][2]
    assert _shape(real_description["StreamDescription"]["Shards"][0]) == _shape(
        {k: v for k, v in open_shard.items() if k != "ParentShardId"}
    )
    real_top = _shape(real_description)["StreamDescription"]
    fake_top = _shape(fake_description)["StreamDescription"]
    assert {k: v for k, v in real_top.items() if k != "Shards"} == {
        k: v for k, v in fake_top.items() if k != "Shards"
    }
    assert _shape(real_iterator) == _shape(
        fake.get_shard_iterator(ShardId=open_shard["ShardId"], ShardIteratorType="TRIM_HORIZON")
    )
    fake_records = fake.get_records(ShardIterator=f"{ARN}|shardId-child-b|0", Limit=1)

    def without_images(record: dict[str, Any]) -> dict[str, Any]:
        data = {k: v for k, v in record["dynamodb"].items() if not k.endswith("Image")}
        return {**record, "dynamodb": data}

    real_record, fake_record = real_records["Records"][0], fake_records["Records"][0]
    assert _shape(without_images(real_record)) == _shape(without_images(fake_record))
    assert "NewImage" in real_record["dynamodb"] or "OldImage" in real_record["dynamodb"]
    assert set(real_records) - {"ResponseMetadata"} == set(fake_records)


class Checkpoints(CheckpointStore):
    def __init__(self) -> None:
        self.saved: list[tuple[str, str | None, bool]] = []

    def load(self, stream_arn: str) -> dict[str, Any]:
        return {}

    def save(
        self, stream_arn: str, shard_id: str, sequence_number: str | None, finished: bool = False
    ) -> bool:
        self.saved.append((shard_id, sequence_number, finished))
        return True


def test_children_are_read_only_after_their_parent_is_finished() -> None:
    delivered: list[tuple[str, int]] = []

    def handler(event: dict[str, Any], context: Any) -> Any:
        for record in event["Records"]:
            delivered.append((record["eventSourceARN"], int(record["dynamodb"]["SequenceNumber"])))
        return {"batchItemFailures": []}

    checkpoints = Checkpoints()
    runner = StreamRunner(
        dynamodb=FakeTable(),
        streams=FakeStreams(),
        table_name="fake",
        checkpoints=checkpoints,
        dead_letters=DeadLetterStore(None, TableNames().dead_letters),
        handler=handler,
        mapping=MappingConfig(batch_size=2),
        polling=PollingConfig(idle_min_seconds=0, idle_max_seconds=0, discovery_seconds=0),
    )
    for _ in range(20):
        runner.step()
    sequence = [seq for _, seq in delivered]
    assert sequence[:3] == [1, 2, 3]  # the parent first, in order
    assert sorted(sequence[3:]) == [10, 11, 20]
    assert sequence.index(10) < sequence.index(11)  # each child in order
    finished = [shard for shard, _, done in checkpoints.saved if done]
    assert finished[0] == "shardId-parent" and "shardId-child-a" in finished
    assert "shardId-child-b" not in finished  # still open
