"""Stream checkpoints in DynamoDB: per shard, the last sequence number the runner finished, so a
restarted runner resumes where it stopped (and two runners can never move one back)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from scheduler.errors import StoreUnavailable

__all__ = ["Checkpoint", "CheckpointStore", "sequence_position"]

_SEQUENCE_DIGITS = 40  # DynamoDB sequence numbers are decimal strings of up to 40 digits


def sequence_position(sequence_number: str) -> str:
    """A sequence number as a string that sorts like the number (for conditions)."""
    return sequence_number.zfill(_SEQUENCE_DIGITS)


@dataclass(frozen=True)
class Checkpoint:
    sequence_number: str | None
    finished: bool


class CheckpointStore:
    """Per-shard checkpoints in the runner-state table (hash: stream ARN, range: shard id)."""

    def __init__(self, client: Any, table: str, owner: str, wall: Callable[[], float] = time.time):
        self._client = client
        self._table = table
        self._owner = owner
        self._wall = wall

    def load(self, stream_arn: str) -> dict[str, Checkpoint]:
        found: dict[str, Checkpoint] = {}
        try:
            paginator = self._client.get_paginator("query")
            for page in paginator.paginate(
                TableName=self._table,
                KeyConditionExpression="stream_arn = :a",
                ExpressionAttributeValues={":a": {"S": stream_arn}},
                ConsistentRead=True,
            ):
                for item in page["Items"]:
                    found[item["shard_id"]["S"]] = Checkpoint(
                        item["sequence_number"]["S"] if "sequence_number" in item else None,
                        bool(item.get("finished", {}).get("BOOL", False)),
                    )
        except (BotoCoreError, ClientError) as exc:
            raise StoreUnavailable(f"cannot read checkpoints: {exc}") from exc
        return found

    def save(
        self, stream_arn: str, shard_id: str, sequence_number: str | None, finished: bool = False
    ) -> bool:
        """Move the shard's checkpoint forward; False if another runner is already further.

        Condition: the stored position is absent or not beyond ours, so two runners on one
        stream (an operator's mistake) can never move a checkpoint back.
        """
        sets = ["updated_at = :t", "#owner = :o", "finished = :f"]
        values: dict[str, Any] = {
            ":t": {"N": str(int(self._wall() * 1000))},
            ":o": {"S": self._owner},
            ":f": {"BOOL": finished},
        }
        condition = None
        if sequence_number is not None:
            sets += ["sequence_number = :s", "#pos = :p"]
            values[":s"] = {"S": sequence_number}
            values[":p"] = {"S": sequence_position(sequence_number)}
            condition = "attribute_not_exists(#pos) OR #pos <= :p"
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "Key": {"stream_arn": {"S": stream_arn}, "shard_id": {"S": shard_id}},
            "UpdateExpression": "SET " + ", ".join(sets),
            "ExpressionAttributeNames": {"#owner": "owner"},
            "ExpressionAttributeValues": values,
        }
        if condition:
            kwargs["ConditionExpression"] = condition
            kwargs["ExpressionAttributeNames"]["#pos"] = "position"
        try:
            self._client.update_item(**kwargs)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                return False
            raise StoreUnavailable(f"cannot save checkpoint of {shard_id}: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreUnavailable(f"cannot save checkpoint of {shard_id}: {exc}") from exc
        return True
