"""The dead-letter table: the stream's on-failure destination, one item per batch that exhausted
its retry policy (Lambda's destination metadata and the records, gzipped for a replay).

The local stream runner writes it; the operator's ``dlq`` commands read it and replay from it.
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from scheduler.db import clients
from scheduler.errors import StoreUnavailable
from scheduler.settings import Settings

__all__ = ["DEAD_LETTER_SOURCE", "DeadLetter", "DeadLetterSource", "DeadLetterStore", "Handler"]

DEAD_LETTER_SOURCE = "jobs"
_MAX_DEAD_LETTER_BYTES = 350_000  # an item holds at most 400 KB

Handler = Callable[[dict[str, Any], Any], Any]
"""A Lambda handler: (event, context) -> response."""


@dataclass(frozen=True)
class DeadLetter:
    """A batch that exhausted its retry policy: Lambda's destination metadata and the records."""

    dead_letter_id: str
    condition: str  # RetryAttemptsExhausted | RecordAgeExceeded
    stream_arn: str
    shard_id: str
    start_sequence_number: str
    end_sequence_number: str
    batch_size: int
    approximate_arrival_of_first_record: float | None
    approximate_arrival_of_last_record: float | None
    attempts: int
    error: str
    failed_at: int
    records: list[dict[str, Any]] = field(repr=False)
    replayed_at: int | None = None

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> DeadLetter:
        """A letter from its item (as ``GetItem`` and ``Query`` return it)."""

        def num(key: str) -> float | None:
            return float(item[key]["N"]) if key in item else None

        return cls(
            dead_letter_id=item["dead_letter_id"]["S"],
            condition=item["condition"]["S"],
            stream_arn=item["stream_arn"]["S"],
            shard_id=item["shard_id"]["S"],
            start_sequence_number=item["start_sequence_number"]["S"],
            end_sequence_number=item["end_sequence_number"]["S"],
            batch_size=int(item["batch_size"]["N"]),
            approximate_arrival_of_first_record=num("approximate_arrival_of_first_record"),
            approximate_arrival_of_last_record=num("approximate_arrival_of_last_record"),
            attempts=int(item["attempts"]["N"]),
            error=item["error"]["S"],
            failed_at=int(item["failed_at"]["N"]),
            records=json.loads(gzip.decompress(item["records_gz"]["B"])),
            replayed_at=int(item["replayed_at"]["N"]) if "replayed_at" in item else None,
        )


class DeadLetterSource(Protocol):
    """Where the operator's ``dlq`` commands find letters: this table locally, the stream's
    on-failure queue on AWS (:mod:`scheduler.aws.stream_dead_letters`)."""

    def list(self, limit: int = 100) -> list[DeadLetter]: ...

    def get(self, dead_letter_id: str) -> DeadLetter | None: ...

    def replay(self, letter: DeadLetter, handler: Handler, now_ms: int) -> Any:
        """Invoke ``handler`` with the letter's records; mark it done if none failed."""


class DeadLetterStore:
    """The on-failure destination: one item per failed batch, records gzipped for replay."""

    def __init__(self, client: Any, table: str, source: str = DEAD_LETTER_SOURCE):
        self._client = client
        self._table = table
        self._source = source

    @classmethod
    def from_settings(cls, settings: Settings) -> DeadLetterStore:
        """The store of the settings' dead-letter table, on a client of their endpoint."""
        return cls(clients.client("dynamodb", settings), settings.tables.dead_letters)

    def put(self, letter: DeadLetter) -> list[str]:
        """Store ``letter``; a batch too large for one item is stored as several."""
        blob = gzip.compress(json.dumps(letter.records, default=_json_default).encode())
        if len(blob) > _MAX_DEAD_LETTER_BYTES and len(letter.records) > 1:
            half = len(letter.records) // 2
            ids = []
            for part, records in enumerate((letter.records[:half], letter.records[half:])):
                ids += self.put(_sub_letter(letter, records, f"{letter.dead_letter_id}.{part}"))
            return ids
        item: dict[str, Any] = {
            "source": {"S": self._source},
            "dead_letter_id": {"S": letter.dead_letter_id},
            "condition": {"S": letter.condition},
            "stream_arn": {"S": letter.stream_arn},
            "shard_id": {"S": letter.shard_id},
            "start_sequence_number": {"S": letter.start_sequence_number},
            "end_sequence_number": {"S": letter.end_sequence_number},
            "batch_size": {"N": str(letter.batch_size)},
            "attempts": {"N": str(letter.attempts)},
            "error": {"S": letter.error[:2000] or "-"},
            "failed_at": {"N": str(letter.failed_at)},
            "records_gz": {"B": blob},
        }
        for key, value in (
            ("approximate_arrival_of_first_record", letter.approximate_arrival_of_first_record),
            ("approximate_arrival_of_last_record", letter.approximate_arrival_of_last_record),
        ):
            if value is not None:
                item[key] = {"N": repr(float(value))}
        try:
            # The id is derived from the batch: a runner that dies after this write and
            # dead-letters the batch again overwrites the same item instead of adding one.
            self._client.put_item(TableName=self._table, Item=item)
        except (BotoCoreError, ClientError) as exc:
            raise StoreUnavailable(f"cannot write dead letter: {exc}") from exc
        return [letter.dead_letter_id]

    def list(self, limit: int = 100) -> list[DeadLetter]:
        try:
            page = self._client.query(
                TableName=self._table,
                KeyConditionExpression="#s = :s",
                ExpressionAttributeNames={"#s": "source"},
                ExpressionAttributeValues={":s": {"S": self._source}},
                ConsistentRead=True,
                Limit=limit,
            )
        except (BotoCoreError, ClientError) as exc:
            raise StoreUnavailable(f"cannot read dead letters: {exc}") from exc
        return [DeadLetter.from_item(item) for item in page["Items"]]

    def get(self, dead_letter_id: str) -> DeadLetter | None:
        """One letter by id: a consistent ``GetItem`` (a listing is one page, a lookup is exact)."""
        try:
            item = self._client.get_item(
                TableName=self._table,
                Key={"source": {"S": self._source}, "dead_letter_id": {"S": dead_letter_id}},
                ConsistentRead=True,
            ).get("Item")
        except (BotoCoreError, ClientError) as exc:
            raise StoreUnavailable(f"cannot read dead letter {dead_letter_id}: {exc}") from exc
        return None if item is None else DeadLetter.from_item(item)

    def mark_replayed(self, dead_letter_id: str, at: int) -> None:
        try:
            self._client.update_item(
                TableName=self._table,
                Key={"source": {"S": self._source}, "dead_letter_id": {"S": dead_letter_id}},
                UpdateExpression="SET replayed_at = :t",
                ExpressionAttributeValues={":t": {"N": str(at)}},
            )
        except (BotoCoreError, ClientError) as exc:
            raise StoreUnavailable(f"cannot mark dead letter {dead_letter_id}: {exc}") from exc

    def replay(self, letter: DeadLetter, handler: Handler, now_ms: int) -> Any:
        """Invoke ``handler`` with the letter's records again (the operator's replay)."""
        response = handler({"Records": letter.records}, None)
        failures = (response or {}).get("batchItemFailures") if isinstance(response, dict) else []
        if not failures:
            self.mark_replayed(letter.dead_letter_id, now_ms)
        return response


def _sub_letter(letter: DeadLetter, records: list[dict[str, Any]], new_id: str) -> DeadLetter:
    first, last = records[0]["dynamodb"], records[-1]["dynamodb"]
    return DeadLetter(
        dead_letter_id=new_id,
        condition=letter.condition,
        stream_arn=letter.stream_arn,
        shard_id=letter.shard_id,
        start_sequence_number=first["SequenceNumber"],
        end_sequence_number=last["SequenceNumber"],
        batch_size=len(records),
        approximate_arrival_of_first_record=first.get("ApproximateCreationDateTime"),
        approximate_arrival_of_last_record=last.get("ApproximateCreationDateTime"),
        attempts=letter.attempts,
        error=letter.error,
        failed_at=letter.failed_at,
        records=records,
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
