"""The StreamFunction's event source mapping with the template's settings (``MappingConfig``
read from ``infra/template.yaml``), delivering from DynamoDB Local's stream the way Lambda does:

- a reader follows the table's stream (boto3 ``dynamodbstreams``; shards in lineage order),
  keeps the records the FilterCriteria lets through, and puts each in the lane of its key
  (``ParallelizationFactor`` lanes; a key's records stay in order in one lane);
- each lane sends batches of up to ``BatchSize`` records (after ``MaximumBatchingWindow``)
  to its own StreamFunction process, one batch at a time, so lanes run concurrently;
- a partial batch response (``ReportBatchItemFailures``) retries from the first failed record
  on; a function error (or a killed process) retries the batch, bisected when
  ``BisectBatchOnFunctionError`` is set, each half keeping the retry count;
- a batch past ``MaximumRetryAttempts`` retries, or records older than
  ``MaximumRecordAgeInSeconds`` (in compressed time, ``time_scale``), go to the on-failure
  destination (recorded as Lambda's SQS message plus the records, for the test) and the lane
  goes on;
- ``drop_when`` gives records up on purpose, as the mapping does after its retries;
  ``duplicate_every`` delivers every n-th batch twice (Lambda delivers at least once).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from lambda_functions import FunctionPool, InvocationFailed

from scheduler.local.lanes import lane_index
from scheduler.local.mapping import MappingConfig
from scheduler.stream.events import lambda_record

__all__ = ["Dropped", "EventSourceMapping", "kind_of"]

DropRule = Callable[[dict[str, Any]], bool]


def status_of(image: dict[str, Any] | None) -> str | None:
    if not image:
        return None
    return str(image.get("status", {}).get("S")) if "status" in image else None


def kind_of(record: dict[str, Any]) -> str:
    """A record's kind for the books: ``INSERT`` or ``<old>-><new>`` for a MODIFY."""
    data = record["dynamodb"]
    if record["eventName"] == "INSERT":
        return "INSERT"
    return f"{status_of(data.get('OldImage'))}->{status_of(data.get('NewImage'))}"


def job_of(record: dict[str, Any]) -> str:
    return str(record["dynamodb"]["Keys"]["job_id"]["S"])


@dataclass
class Dropped:
    """One on-failure destination message (Lambda's SQS shape) and the records it names."""

    condition: str  # RetryAttemptsExhausted | RecordAgeExceeded | chosen
    message: dict[str, Any]
    records: list[dict[str, Any]]
    at: float


@dataclass
class _Cursor:
    """Where the reader is: the stream, each shard's iterator and last sequence read."""

    arn: str | None = None
    positions: dict[str, str] = field(default_factory=dict)
    iterators: dict[str, str | None] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)


@dataclass
class MappingBooks:
    batches: int = 0
    records_delivered: int = 0
    partial_failures: int = 0
    function_errors: int = 0
    bisections: int = 0
    duplicates: int = 0
    longest_invocation: float = 0.0
    dropped: list[Dropped] = field(default_factory=list)
    lane_concurrency_max: int = 0


class EventSourceMapping:
    def __init__(
        self,
        streams: Any,
        dynamodb: Any,
        table: str,
        config: MappingConfig,
        function: FunctionPool,
        *,
        time_scale: float = 1.0,
        retry_pause: float = 0.05,
    ) -> None:
        assert len(function.members) == config.parallelization_factor
        self._streams, self._dynamodb, self._table = streams, dynamodb, table
        self.config, self.function = config, function
        self.time_scale, self.retry_pause = time_scale, retry_pause
        self.books = MappingBooks()
        self.drop_rules: list[DropRule] = []
        self.duplicate_every = 0
        self._delivered_batches = 0
        self._lanes: list[queue.Queue[tuple[float, dict[str, Any]]]] = [
            queue.Queue() for _ in range(config.parallelization_factor)
        ]
        self._busy = [False] * config.parallelization_factor
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._read, daemon=True)] + [
            threading.Thread(target=self._serve, args=(n,), daemon=True)
            for n in range(config.parallelization_factor)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def drop_when(self, rule: DropRule) -> None:
        """Give up on the records ``rule`` picks (it may count and stop picking)."""
        self.drop_rules.append(rule)

    def idle(self) -> bool:
        """Nothing buffered or in flight, and the stream read since the last write settled."""
        return not any(self._busy) and all(lane.empty() for lane in self._lanes)

    # -- reading --------------------------------------------------------------------------

    def _read(self) -> None:
        cursor = _Cursor()
        while not self._stop.is_set():
            try:
                if not self._poll(cursor):
                    self._stop.wait(0.02)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code in ("ExpiredIteratorException", "TrimmedDataAccessException"):
                    cursor.iterators = {}
                elif code == "ResourceNotFoundException":
                    cursor.arn = None
                self._stop.wait(0.2)
            except BotoCoreError:
                cursor.iterators = {}
                self._stop.wait(0.2)  # DynamoDB Local down: read on when it is back

    def _poll(self, cursor: _Cursor) -> bool:
        """One pass over the readable shards; True if it read a record to deliver."""
        if cursor.arn is None:
            table = self._dynamodb.describe_table(TableName=self._table)["Table"]
            cursor.arn = table.get("LatestStreamArn")
            if cursor.arn is None:
                return False
        arn = cursor.arn
        shards = self._streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]
        known = {s["ShardId"] for s in shards}
        read_any = False
        for shard in shards:
            sid, parent = shard["ShardId"], shard.get("ParentShardId")
            if sid in cursor.finished or (parent in known and parent not in cursor.finished):
                continue  # lineage: a child after its parent is read to its end
            if cursor.iterators.get(sid) is None:
                cursor.iterators[sid] = self._iterator(arn, sid, cursor.positions.get(sid))
            response = self._streams.get_records(ShardIterator=cursor.iterators[sid], Limit=1000)
            cursor.iterators[sid] = response.get("NextShardIterator")
            if cursor.iterators[sid] is None:
                cursor.finished.add(sid)
            for raw in response.get("Records", []):
                cursor.positions[sid] = raw["dynamodb"]["SequenceNumber"]
                names = self.config.event_names
                if names is not None and raw["eventName"] not in names:
                    continue  # FilterCriteria: never delivered
                record = lambda_record(raw, arn)
                lane = lane_index(record, self.config.parallelization_factor)
                self._lanes[lane].put((time.monotonic(), record))
                read_any = True
        return read_any

    def _iterator(self, arn: str, shard_id: str, position: str | None) -> str:
        kwargs: dict[str, Any] = {"StreamArn": arn, "ShardId": shard_id}
        if position:
            kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", SequenceNumber=position)
        else:
            kwargs["ShardIteratorType"] = self.config.starting_position
        return str(self._streams.get_shard_iterator(**kwargs)["ShardIterator"])

    # -- delivering -----------------------------------------------------------------------

    def _serve(self, lane: int) -> None:
        source = self._lanes[lane]
        while not self._stop.is_set():
            try:
                first = source.get(timeout=0.1)
            except queue.Empty:
                continue
            self._busy[lane] = True
            try:
                window_end = time.monotonic() + self.config.batching_window_seconds
                batch = [first]
                while len(batch) < self.config.batch_size:
                    try:
                        batch.append(source.get(timeout=max(0.0, window_end - time.monotonic())))
                    except queue.Empty:
                        break
                self._deliver(lane, batch, retries=0)
            finally:
                self._busy[lane] = False

    def _deliver(self, lane: int, batch: list[tuple[float, dict[str, Any]]], retries: int) -> None:
        while batch and not self._stop.is_set():
            batch = self._give_up_chosen(batch)
            batch = self._give_up_old(batch)
            if not batch:
                return
            records = [record for _, record in batch]
            with self._lock:
                self.books.batches += 1
                busy = sum(self._busy)
                self.books.lane_concurrency_max = max(self.books.lane_concurrency_max, busy)
            called = time.monotonic()
            try:
                answer = self.function.invoke({"Records": records}, member=lane)
            except InvocationFailed:
                self._took(called)
                self.books.function_errors += 1
                if self.config.bisect_on_error and len(batch) > 1:
                    # Lambda splits the batch and retries each half; a split is not a retry.
                    self.books.bisections += 1
                    half = len(batch) // 2
                    self._deliver(lane, batch[:half], retries)
                    batch = batch[half:]
                    continue
                retries += 1
                if retries > self.config.max_retry_attempts >= 0:
                    self._drop(batch, "RetryAttemptsExhausted")
                    return
                self._stop.wait(self.retry_pause * retries)
                continue
            self._took(called)
            failed = {
                str(item.get("itemIdentifier"))
                for item in (answer or {}).get("batchItemFailures", [])
            }
            if not failed:
                self.books.records_delivered += len(batch)
                self._maybe_again(lane, records)
                return
            self.books.partial_failures += 1
            sequences = [str(r["dynamodb"]["SequenceNumber"]) for r in records]
            first = min((sequences.index(s) for s in failed if s in sequences), default=0)
            self.books.records_delivered += first
            batch = batch[first:]  # checkpoint before the first failure; retry the rest
            retries += 1
            if retries > self.config.max_retry_attempts >= 0:
                self._drop(batch, "RetryAttemptsExhausted")
                return
            self._stop.wait(self.retry_pause * retries)

    def _took(self, called: float) -> None:
        with self._lock:
            self.books.longest_invocation = max(
                self.books.longest_invocation, time.monotonic() - called
            )

    def _maybe_again(self, lane: int, records: list[dict[str, Any]]) -> None:
        """At-least-once: every ``duplicate_every``-th batch is delivered a second time."""
        with self._lock:
            self._delivered_batches += 1
            again = self.duplicate_every > 0 and self._delivered_batches % self.duplicate_every == 0
        if not again:
            return
        self.books.duplicates += 1
        # The first delivery counted; a failure of this one is a redelivery's only.
        with contextlib.suppress(InvocationFailed):
            self.function.invoke({"Records": records}, member=lane)

    def _give_up_chosen(
        self, batch: list[tuple[float, dict[str, Any]]]
    ) -> list[tuple[float, dict[str, Any]]]:
        kept, chosen = [], []
        for item in batch:
            (chosen if any(rule(item[1]) for rule in self.drop_rules) else kept).append(item)
        for item in chosen:
            self._drop([item], "RetryAttemptsExhausted", chosen=True)
        return kept

    def _give_up_old(
        self, batch: list[tuple[float, dict[str, Any]]]
    ) -> list[tuple[float, dict[str, Any]]]:
        limit = self.config.max_record_age_seconds
        if limit < 0:
            return batch
        now = time.monotonic()
        old = [item for item in batch if (now - item[0]) / self.time_scale > limit]
        if old:
            self._drop(old, "RecordAgeExceeded")
        return [item for item in batch if item not in old]

    def _drop(
        self, batch: list[tuple[float, dict[str, Any]]], condition: str, *, chosen: bool = False
    ) -> None:
        records = [record for _, record in batch]
        sequences = [str(r["dynamodb"]["SequenceNumber"]) for r in records]
        message = {
            "requestContext": {"condition": condition, "functionArn": "StreamFunction"},
            "DDBStreamBatchInfo": {
                "shardId": "local",
                "startSequenceNumber": sequences[0],
                "endSequenceNumber": sequences[-1],
                "batchSize": len(records),
                "streamArn": records[0]["eventSourceARN"],
            },
        }
        with self._lock:
            self.books.dropped.append(
                Dropped("chosen" if chosen else condition, message, records, time.monotonic())
            )
