"""The stream's dead letters on AWS: the event source mapping's on-failure destination (SQS),
made replayable.

Lambda sends the queue a batch's metadata only (its shard and sequence-number range), not its
records. A letter's records are read back from the stream itself (``AT_SEQUENCE_NUMBER`` of the
first, up to the last), so a replay hands the handler exactly the batch that failed. The stream
keeps records 24 hours: an older letter can be listed, not replayed (its error says so). A
letter leaves the queue only once a replay of it reported no failed record.

The same operations as the local dead-letter table (:class:`scheduler.db.dead_letters.
DeadLetterStore`), so ``scheduler dlq list`` and ``replay`` work unchanged against either.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from scheduler.db.dead_letters import DeadLetter, Handler
from scheduler.errors import DomainError, StoreUnavailable
from scheduler.stream.events import lambda_record

__all__ = ["LetterNotReplayable", "QueuedDeadLetters"]

log = logging.getLogger(__name__)

RECEIVE_BATCH = 10  # SQS's most per ReceiveMessage
VISIBILITY_SECONDS = 60  # a received letter is hidden this long: time enough for its replay
DELIVERED = ("INSERT", "MODIFY")  # what the mapping's filter hands the function


class LetterNotReplayable(DomainError):
    """A letter whose records the stream no longer holds (past its 24 hours)."""

    exit_code = 1
    http_status = 410


class QueuedDeadLetters:
    def __init__(self, sqs: Any, streams: Any, queue_url: str) -> None:
        self._sqs = sqs
        self._streams = streams
        self._queue_url = queue_url
        self._receipts: dict[str, str] = {}  # letter id -> the newest receipt handle

    def list(self, limit: int = 100) -> list[DeadLetter]:
        """Up to ``limit`` letters, each with its records as the stream still has them."""
        return list(self._received(limit))

    def get(self, dead_letter_id: str) -> DeadLetter | None:
        for letter in self._received(limit=1000):
            if letter.dead_letter_id == dead_letter_id:
                return letter
        return None

    def replay(self, letter: DeadLetter, handler: Handler, now_ms: int) -> Any:
        """Hand the letter's records to ``handler``; delete the message if none failed."""
        if not letter.records:
            raise LetterNotReplayable(
                f"dead letter {letter.dead_letter_id}: its records are no longer in the stream"
                " (it keeps them 24 hours); nothing to replay"
            )
        response = handler({"Records": letter.records}, None)
        failures = (response or {}).get("batchItemFailures") if isinstance(response, dict) else []
        if not failures:
            self._delete(letter.dead_letter_id)
        return response

    # -- the queue --------------------------------------------------------------------------

    def _received(self, limit: int) -> Iterator[DeadLetter]:
        seen: set[str] = set()
        while len(seen) < limit:
            try:
                answer = self._sqs.receive_message(
                    QueueUrl=self._queue_url,
                    MaxNumberOfMessages=min(RECEIVE_BATCH, limit - len(seen)),
                    VisibilityTimeout=VISIBILITY_SECONDS,
                    WaitTimeSeconds=0,
                    MessageSystemAttributeNames=["SentTimestamp", "ApproximateReceiveCount"],
                )
            except (BotoCoreError, ClientError) as exc:
                raise StoreUnavailable(
                    f"cannot read the stream's dead-letter queue: {exc}"
                ) from exc
            messages = answer.get("Messages") or []
            fresh = [m for m in messages if m["MessageId"] not in seen]
            if not fresh:
                return
            for message in fresh:
                seen.add(message["MessageId"])
                letter = self._letter(message)
                if letter is not None:
                    self._receipts[letter.dead_letter_id] = message["ReceiptHandle"]
                    yield letter

    def _delete(self, dead_letter_id: str) -> None:
        receipt = self._receipts.get(dead_letter_id)
        if receipt is None:
            return
        try:
            self._sqs.delete_message(QueueUrl=self._queue_url, ReceiptHandle=receipt)
        except (BotoCoreError, ClientError) as exc:
            raise StoreUnavailable(f"replayed, but cannot remove {dead_letter_id}: {exc}") from exc

    def _letter(self, message: dict[str, Any]) -> DeadLetter | None:
        try:
            body = json.loads(message["Body"])
            batch = body["DDBStreamBatchInfo"]
            request = body.get("requestContext") or {}
            response = body.get("responseContext") or {}
            letter = DeadLetter(
                dead_letter_id=f"{batch['shardId']}#{batch['startSequenceNumber']}",
                condition=str(request.get("condition") or "RetryAttemptsExhausted"),
                stream_arn=str(batch["streamArn"]),
                shard_id=str(batch["shardId"]),
                start_sequence_number=str(batch["startSequenceNumber"]),
                end_sequence_number=str(batch["endSequenceNumber"]),
                batch_size=int(batch["batchSize"]),
                approximate_arrival_of_first_record=_epoch(
                    batch.get("approximateArrivalOfFirstRecord")
                ),
                approximate_arrival_of_last_record=_epoch(
                    batch.get("approximateArrivalOfLastRecord")
                ),
                attempts=int(request.get("approximateInvokeCount") or 0),
                error=str(response.get("functionError") or ""),
                failed_at=int((_epoch(body.get("timestamp")) or 0) * 1000),
                records=[],
            )
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("not a stream dead letter: %s", exc, extra={"id": message.get("MessageId")})
            return None
        return replace(letter, records=list(self._records(letter)))

    # -- the stream -------------------------------------------------------------------------

    def _records(self, letter: DeadLetter) -> Iterator[dict[str, Any]]:
        """The letter's records, first to last, as Lambda delivered them (none if trimmed)."""
        try:
            iterator = self._streams.get_shard_iterator(
                StreamArn=letter.stream_arn,
                ShardId=letter.shard_id,
                ShardIteratorType="AT_SEQUENCE_NUMBER",
                SequenceNumber=letter.start_sequence_number,
            )["ShardIterator"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in (
                "TrimmedDataAccessException",
                "ResourceNotFoundException",
            ):
                return
            raise StoreUnavailable(f"cannot read the stream: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreUnavailable(f"cannot read the stream: {exc}") from exc
        last = int(letter.end_sequence_number)
        empty = 0
        while iterator and empty < 3:
            try:
                page = self._streams.get_records(ShardIterator=iterator, Limit=1000)
            except (BotoCoreError, ClientError) as exc:
                raise StoreUnavailable(f"cannot read the stream: {exc}") from exc
            records = page.get("Records") or []
            empty = 0 if records else empty + 1
            for raw in records:
                if int(raw["dynamodb"]["SequenceNumber"]) > last:
                    return
                if raw.get("eventName") in DELIVERED:
                    yield lambda_record(raw, letter.stream_arn)
            iterator = page.get("NextShardIterator")


def _epoch(value: Any) -> float | None:
    """An ISO-8601 time of Lambda's destination record as epoch seconds."""
    if not isinstance(value, str) or not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
