"""A local event source mapping: reads the jobs table's stream on DynamoDB Local and invokes the
stream handler with Lambda-shaped events, with the semantics of Lambda's ESM for DynamoDB Streams.

- Shards are discovered with ``DescribeStream`` and re-discovered periodically and whenever a
  shard is finished; a child shard is read only once its parent is finished; records of an
  item are delivered in order (with a factor of 1, all records of a shard).
- A batch is handed to the handler when it holds ``BatchSize`` records, when the batching window
  has passed since its first record, or when the shard has no more records.
- After a batch succeeds the shard's checkpoint moves up to it in DynamoDB (conditionally, so
  a checkpoint never moves back), so a restarted runner resumes where it stopped: at least once,
  nothing skipped, at most the unfinished batch repeated.
- A partial batch response resumes from the lowest reported sequence number (the records before
  it are checkpointed). A failed batch is retried with backoff; with ``BisectBatchOnFunctionError``
  it is split in two first (a split does not use up a retry, so a poison record is isolated in
  about log2(BatchSize) invocations and the good records around it go through). A batch whose
  retries (``MaximumRetryAttempts``) or age (``MaximumRecordAgeInSeconds``) run out goes to the
  on-failure destination, a dead-letter table holding the batch metadata and its records, and
  the shard moves on, but only once the dead letter is durably written: the checkpoint never
  passes a record that is neither processed nor dead-lettered.
- The database's failures are not the function's (:mod:`scheduler.db.outage`). A batch the
  handler could not finish because DynamoDB was unreachable, throttled or failing
  (:class:`~scheduler.errors.BatchInterrupted`) waits with backoff and is delivered again until
  the database is back; it uses no retry attempt and is never dead-lettered for it.
- A record's age counts only while this runner runs and only once the record has failed: a
  stack stopped (or a database down) for longer than ``MaximumRecordAgeInSeconds`` resumes its
  backlog instead of dead-lettering it. (Lambda's mapping never stops; this runner does.)
- Expired iterators, ``TrimmedDataAccessException`` (DynamoDB Local raises it on an iterator
  opened on an empty shard after another table wrote records) and a stream re-enabled under a
  new ARN are handled by taking a fresh iterator or re-discovering, never by crashing.

Polling is adaptive: the shard is read again at once while records flow, and the pause between
empty polls doubles up to ``idle_max_seconds`` when the stream is idle (an empty ``GetRecords``
is not free on DynamoDB Local). Under a heavy flow a read that found the shard caught up waits
a moment before the next (:mod:`scheduler.local.read_pacing`): fewer reads, larger batches.

Shards are served one after another in one thread (DynamoDB Local keeps one open shard per
stream); Lambda would run one invocation per shard concurrently. Within a shard,
``ParallelizationFactor`` lanes (:mod:`scheduler.local.lanes`) run batches of different items
side by side on worker threads; everything above holds per lane, the loop's thread alone
changes the runner's state, and a shard's checkpoint is the last record before which every
record of every lane is finished.

This module is the shard loop; the mapping's settings are in :mod:`scheduler.local.mapping`,
the checkpoints in :mod:`scheduler.local.checkpoints` and the on-failure destination in
:mod:`scheduler.db.dead_letters`.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from scheduler.db.dead_letters import DeadLetter, DeadLetterStore, Handler
from scheduler.db.outage import error_code, is_outage
from scheduler.errors import BatchInterrupted, StoreUnavailable
from scheduler.local.checkpoints import Checkpoint, CheckpointStore, sequence_position
from scheduler.local.lanes import Batch, Lane, Progress, lane_index, sequence_of
from scheduler.local.mapping import STREAM_FUNCTION, MappingConfig, PollingConfig
from scheduler.local.read_pacing import ReadPacer
from scheduler.settings import Settings
from scheduler.store_outage import STORE
from scheduler.stream.events import lambda_record

__all__ = ["RunnerStats", "StreamRunner", "lambda_record"]

log = logging.getLogger(__name__)

_MAX_GET_RECORDS = 1000  # GetRecords' largest Limit


# -- records ------------------------------------------------------------------------------------


@dataclass
class _Shard:
    shard_id: str
    parent_id: str | None
    closed: bool
    checkpoint: str | None = None  # last sequence number processed (and persisted)
    position: str | None = None  # last sequence number read from the stream
    finished: bool = False
    exhausted: bool = False  # the stream said: no more records, ever (closed and read)
    iterator: str | None = None
    lanes: list[Lane] = field(default_factory=lambda: [Lane(0)])
    progress: Progress = field(default_factory=Progress)  # read, not yet behind the checkpoint
    not_before: float = 0.0  # backoff after a stream API error
    last_read: int = 0  # records the last GetRecords returned, before any filter
    pacer: ReadPacer = field(default_factory=lambda: ReadPacer(0.0, 0.0))

    @property
    def idle(self) -> bool:
        return all(lane.idle for lane in self.lanes)

    @property
    def buffered(self) -> int:
        return sum(len(lane.buffer) for lane in self.lanes)


@dataclass(frozen=True)
class _Outcome:
    """What the handler did with a lane's batch: its response, or what it raised."""

    shard: _Shard
    lane: Lane
    batch: Batch
    response: Any
    error: Exception | None


@dataclass
class RunnerStats:
    records_read: int = 0
    invocations: int = 0
    records_succeeded: int = 0
    records_dead_lettered: int = 0
    function_errors: int = 0
    store_outages: int = 0  # invocations or dead-letter writes the database failed
    iterator_renewals: int = 0
    polls: int = 0
    empty_polls: int = 0


# -- the runner ---------------------------------------------------------------------------------


class StreamRunner:
    def __init__(
        self,
        *,
        dynamodb: Any,
        streams: Any,
        table_name: str,
        checkpoints: CheckpointStore,
        dead_letters: DeadLetterStore,
        handler: Handler,
        mapping: MappingConfig,
        polling: PollingConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        function_arn: str = f"local:function:{STREAM_FUNCTION}",
    ) -> None:
        self._dynamodb = dynamodb
        self._streams = streams
        self._table = table_name
        self._checkpoints = checkpoints
        self._dead_letters = dead_letters
        self._handler = handler
        self._mapping = mapping
        self._polling = polling or PollingConfig()
        self._clock = clock
        self._wall = wall
        self._function_arn = function_arn
        self._stream_arn: str | None = None
        self._shards: dict[str, _Shard] = {}
        self._first_start = False
        self._saved: dict[str, Checkpoint] = {}
        self._next_discovery = 0.0
        self._idle_delay = self._polling.idle_min_seconds
        self._running_since = wall()  # record ages count from here at the earliest
        self._outages = 0  # consecutive database failures, for the backoff
        # ParallelizationFactor > 1: lanes' batches go to worker threads; their outcomes come
        # back through a queue and are applied on the loop's thread (all state lives there).
        factor = mapping.parallelization_factor
        self._pool = (
            ThreadPoolExecutor(factor, thread_name_prefix="stream-lane") if factor > 1 else None
        )
        self._outcomes: queue.SimpleQueue[_Outcome] = queue.SimpleQueue()
        self._wake = threading.Event()  # set when a lane's invocation returns
        self.stats = RunnerStats()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        handler: Handler,
        mapping: MappingConfig | None = None,
        polling: PollingConfig | None = None,
        owner: str | None = None,
    ) -> StreamRunner:
        from scheduler.db.clients import client

        dynamodb = client("dynamodb", settings)
        owner = owner or f"runner-{uuid.uuid4().hex[:8]}"
        return cls(
            dynamodb=dynamodb,
            streams=client("dynamodbstreams", settings),
            table_name=settings.tables.jobs,
            checkpoints=CheckpointStore(dynamodb, settings.tables.runner_state, owner),
            dead_letters=DeadLetterStore(dynamodb, settings.tables.dead_letters),
            handler=handler,
            mapping=mapping or MappingConfig.from_settings(settings),
            polling=polling,
        )

    @property
    def stream_arn(self) -> str | None:
        return self._stream_arn

    # -- the loop ---------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Poll until ``stop`` is set: at once while records flow, backing off while idle."""
        log.info("stream runner started", extra={"table": self._table})
        try:
            while not stop.is_set():
                self._wake.clear()  # before step(): an outcome arriving after it wakes the wait
                try:
                    worked = self.step()
                except StoreUnavailable as exc:
                    STORE.failed(exc, "stream runner step")  # one line per outage
                    worked = False
                    self._idle_delay = self._polling.idle_max_seconds
                except Exception:
                    # Nothing but a stop may end the loop: a dead runner thread would leave
                    # every later job pending. The shard state is as the failed step left it
                    # (checkpoints never pass an unfinished record), so the next step resumes.
                    log.exception("stream runner step failed; backing off")
                    worked = False
                    self._idle_delay = self._polling.idle_max_seconds
                if worked:
                    self._idle_delay = self._polling.idle_min_seconds
                    continue
                if self._in_flight():
                    self._wake.wait(self._sleep_for())
                else:
                    stop.wait(self._sleep_for())
                self._idle_delay = min(self._idle_delay * 2, self._polling.idle_max_seconds)
        finally:
            self.close()
        log.info("stream runner stopped", extra={"table": self._table})

    def close(self) -> None:
        """Let the lanes' invocations in flight end and checkpoint what they finished."""
        if self._pool is None:
            return
        self._pool.shutdown(wait=True)
        with contextlib.suppress(StoreUnavailable):
            self._collect()

    def _in_flight(self) -> bool:
        return any(lane.in_flight for s in self._shards.values() for lane in s.lanes)

    def _sleep_for(self) -> float:
        """The idle pause, cut short by the earliest pending retry or batching deadline."""
        now = self._clock()
        delay = self._idle_delay
        window = self._mapping.batching_window_seconds
        for shard in self._shards.values():
            for lane in shard.lanes:
                if lane.in_flight:
                    continue
                if lane.batches:
                    delay = min(delay, max(0.0, lane.batches[0].retry_at - now))
                elif lane.buffer:
                    delay = min(delay, max(0.0, lane.buffer_since + window - now))
            if shard.pacer.next_read_at > now:
                delay = min(delay, shard.pacer.next_read_at - now)
        return delay

    def step(self) -> bool:
        """One pass over the readable shards; True if any record moved."""
        if self._stream_arn is None or self._clock() >= self._next_discovery:
            self.discover()
        worked = self._collect()
        for shard in self._readable():
            worked = self._serve(shard) or worked
        return worked

    def drain(self, timeout: float = 30.0, quiet_polls: int = 3) -> None:
        """Step until nothing moved for ``quiet_polls`` passes (tests, the bench, replays)."""
        deadline = self._clock() + timeout
        quiet = 0
        while quiet < quiet_polls:
            if self._clock() > deadline:
                raise TimeoutError("stream did not drain")
            empty_before = self.stats.empty_polls
            if self.step() or self._busy() or self.stats.empty_polls == empty_before:
                # Records moved, a batch waits, or the read failed: not quiet yet.
                quiet = 0
                time.sleep(min(0.005, self._sleep_for()))
            else:
                quiet += 1

    def _busy(self) -> bool:
        return any(not s.idle for s in self._shards.values())

    def skip_to_end(self) -> int:
        """Checkpoint every shard at its newest record without invoking (start from "now")."""
        self.discover()
        skipped = 0
        for shard in self._shards.values():
            if shard.finished:
                continue
            errors = 0
            while errors < 10:
                records = self._fetch(shard, 1000)
                if records is None:  # renewing an iterator, or backing off: try again
                    errors += 1
                    time.sleep(max(0.0, shard.not_before - self._clock()))
                    continue
                skipped += shard.last_read
                if not shard.last_read or shard.exhausted:
                    break
            for lane in shard.lanes:
                lane.buffer.clear()
            shard.progress.clear()
            if shard.position is not None:
                self._checkpoint(shard, shard.position)
        return skipped

    # -- discovery ----------------------------------------------------------------------

    def discover(self) -> None:
        """Find the table's current stream and its shards; pick up new and closed shards."""
        self._next_discovery = self._clock() + self._polling.discovery_seconds
        try:
            table = self._dynamodb.describe_table(TableName=self._table)["Table"]
        except (BotoCoreError, ClientError) as exc:
            _warn_or_outage(exc, "stream discovery", "cannot describe table %s: %s", self._table)
            return
        arn = table.get("LatestStreamArn")
        if not arn:
            return
        if arn != self._stream_arn:
            saved = self._checkpoints.load(arn)  # first: a failed read changes nothing
            if self._stream_arn is not None:
                log.warning(
                    "stream ARN changed, following the new stream",
                    extra={"old": self._stream_arn, "new": arn},
                )
            self._stream_arn = arn
            self._shards = {}
            self._first_start = not saved
            self._saved = saved
        try:
            listed = list(self._describe_shards(arn))
        except ClientError as exc:
            if error_code(exc) == "ResourceNotFoundException":
                self._stream_arn = None  # gone: look for the table's new stream next time
            _warn_or_outage(exc, "stream discovery", "cannot describe stream %s: %s", arn)
            return
        except BotoCoreError as exc:
            _warn_or_outage(exc, "stream discovery", "cannot describe stream %s: %s", arn)
            return
        for raw in listed:
            shard_id = raw["ShardId"]
            closed = "EndingSequenceNumber" in raw.get("SequenceNumberRange", {})
            known = self._shards.get(shard_id)
            if known is not None:
                known.closed = closed
                continue
            mark = self._saved.get(shard_id) or Checkpoint(None, False)
            self._shards[shard_id] = _Shard(
                shard_id=shard_id,
                parent_id=raw.get("ParentShardId"),
                closed=closed,
                checkpoint=mark.sequence_number,
                position=mark.sequence_number,
                finished=mark.finished,
                lanes=[Lane(n) for n in range(self._mapping.parallelization_factor)],
                pacer=ReadPacer(
                    self._polling.busy_pause_seconds, self._polling.busy_records_per_second
                ),
            )
        # Shards that left the listing were trimmed (24 h retention): nothing more to read.
        listed_ids = {raw["ShardId"] for raw in listed}
        for shard_id in list(self._shards):
            shard = self._shards[shard_id]
            if shard_id not in listed_ids and shard.idle:
                del self._shards[shard_id]

    def _describe_shards(self, arn: str) -> Iterator[dict[str, Any]]:
        start: str | None = None
        while True:
            kwargs: dict[str, Any] = {"StreamArn": arn}
            if start:
                kwargs["ExclusiveStartShardId"] = start
            description = self._streams.describe_stream(**kwargs)["StreamDescription"]
            yield from description.get("Shards", [])
            start = description.get("LastEvaluatedShardId")
            if not start:
                return

    def _readable(self) -> list[_Shard]:
        """Unfinished shards whose parent is finished (or gone): lineage order."""
        ready = []
        for shard in self._shards.values():
            if shard.finished:
                continue
            parent = self._shards.get(shard.parent_id) if shard.parent_id else None
            if parent is None or parent.finished:
                ready.append(shard)
        return ready

    # -- one shard ------------------------------------------------------------------------

    def _serve(self, shard: _Shard) -> bool:
        """Retry or dead-letter the lanes' waiting batches, read on, invoke the lanes' next."""
        worked = False
        now = self._clock()
        for lane in shard.lanes:
            # A failed batch blocks its lane (with a factor of 1: its shard) until it succeeds
            # or is dropped; the other lanes go on.
            if lane.in_flight or not lane.batches or lane.batches[0].retry_at > now:
                continue
            if lane.batches[0].condemned:
                self._flush_dead_letter(shard, lane)
            else:
                self._invoke(shard, lane)
            worked = True
        read = 0
        room = self._mapping.batch_size * len(shard.lanes) - shard.buffered
        blocked = all(lane.batches and not lane.in_flight for lane in shard.lanes)
        if not shard.exhausted and room > 0 and not blocked and shard.pacer.ready(now):
            asked = min(room, _MAX_GET_RECORDS)
            records = self._fetch(shard, asked)
            read = len(records or [])
            if records is not None:
                shard.pacer.read(self._clock(), shard.last_read, asked)
        now = self._clock()
        size = self._mapping.batch_size
        for lane in shard.lanes:
            if lane.batches or not lane.buffer or not self._batch_ready(shard, lane, now):
                continue
            lane.batches.append(Batch(lane.buffer[:size]))
            del lane.buffer[:size]
            lane.buffer_since = now
            self._invoke(shard, lane)
            worked = True
        if shard.exhausted and shard.idle:
            self._finish(shard)
            return True
        return worked or read > 0

    def _batch_ready(self, shard: _Shard, lane: Lane, now: float) -> bool:
        return (
            len(lane.buffer) >= self._mapping.batch_size
            or shard.exhausted
            or now - lane.buffer_since >= self._mapping.batching_window_seconds
        )

    def _finish(self, shard: _Shard) -> None:
        self._checkpoint(shard, shard.position, finished=True)
        shard.finished = True
        self._next_discovery = 0.0  # a finished parent may release children: look now
        log.info("shard finished", extra={"shard_id": shard.shard_id})

    def _open_iterator(self, shard: _Shard) -> str | None:
        assert self._stream_arn is not None
        kwargs: dict[str, Any] = {"StreamArn": self._stream_arn, "ShardId": shard.shard_id}
        if shard.position is not None:
            kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", SequenceNumber=shard.position)
        elif self._first_start and shard.parent_id not in self._shards:
            kwargs["ShardIteratorType"] = self._mapping.starting_position
        else:
            kwargs["ShardIteratorType"] = "TRIM_HORIZON"  # shards born later: from their start
        try:
            return str(self._streams.get_shard_iterator(**kwargs)["ShardIterator"])
        except ClientError as exc:
            if error_code(exc) == "TrimmedDataAccessException" and shard.position is not None:
                # Our position is older than the stream's retention: the oldest record left
                # is the best we can do (and is logged, since records were lost).
                log.error("checkpoint trimmed away, reading from the oldest record")
                kwargs.pop("SequenceNumber", None)
                kwargs["ShardIteratorType"] = "TRIM_HORIZON"
                return str(self._streams.get_shard_iterator(**kwargs)["ShardIterator"])
            raise

    def _fetch(self, shard: _Shard, limit: int) -> list[dict[str, Any]] | None:
        """Read up to ``limit`` records into the shard's buffer; None after an API error."""
        if self._clock() < shard.not_before:
            return None
        try:
            if shard.iterator is None:
                shard.iterator = self._open_iterator(shard)
            self.stats.polls += 1
            response = self._streams.get_records(ShardIterator=shard.iterator, Limit=limit)
        except ClientError as exc:
            code = error_code(exc)
            shard.iterator = None
            if code in ("ExpiredIteratorException", "TrimmedDataAccessException"):
                # Take a fresh iterator at our position and go on (see the module docstring).
                self.stats.iterator_renewals += 1
                log.info("renewing iterator", extra={"shard_id": shard.shard_id, "error": code})
                return None
            if code == "ResourceNotFoundException":
                self._next_discovery = 0.0
            _warn_or_outage(exc, "stream read", "get_records failed on %s: %s", shard.shard_id)
            shard.not_before = self._clock() + self._polling.retry_base_seconds
            return None
        except BotoCoreError as exc:
            _warn_or_outage(exc, "stream read", "get_records failed on %s: %s", shard.shard_id)
            shard.not_before = self._clock() + self._polling.retry_base_seconds
            return None
        STORE.answered()
        assert self._stream_arn is not None
        raw_records = response.get("Records", [])
        records = self._accept(shard, raw_records, self._stream_arn)
        shard.iterator = response.get("NextShardIterator")
        if shard.iterator is None:
            shard.exhausted = True  # a closed shard, read to its end
        shard.last_read = len(raw_records)
        if raw_records:  # filtered-out records are passed too: read, never delivered
            shard.position = raw_records[-1]["dynamodb"]["SequenceNumber"]
        if records:
            self.stats.records_read += len(records)
        elif not raw_records:
            self.stats.empty_polls += 1
        return records

    def _accept(
        self, shard: _Shard, raw_records: list[dict[str, Any]], stream_arn: str
    ) -> list[dict[str, Any]]:
        """Put the records read into their items' lanes, in order; filtered-out ones are done."""
        wanted = self._mapping.event_names
        records = []
        now = self._clock()
        for raw in raw_records:
            sequence_number = str(raw["dynamodb"]["SequenceNumber"])
            if wanted is not None and raw.get("eventName") not in wanted:
                shard.progress.add([sequence_number], done=True)  # read, never delivered
                continue
            record = lambda_record(raw, stream_arn)
            lane = shard.lanes[lane_index(record, len(shard.lanes))]
            if not lane.buffer:
                lane.buffer_since = now
            lane.buffer.append(record)
            shard.progress.add([sequence_number])
            records.append(record)
        # A finished prefix left by filtered-out records goes now (memory stays bounded); the
        # checkpoint covers it with the next batch, as it would have without lanes.
        shard.progress.advance()
        return records

    # -- invocation and failure policy ---------------------------------------------------------

    def _invoke(self, shard: _Shard, lane: Lane) -> None:
        """Hand the lane's head batch to the handler: inline, or on a worker with lanes."""
        batch = lane.batches[0]
        if self._mapping.max_record_age_seconds >= 0 and self._expire(shard, lane, batch):
            return
        self.stats.invocations += 1
        if self._pool is None:
            self._settle(_Outcome(shard, lane, batch, *self._call(batch)))
            return
        lane.in_flight = True
        self._pool.submit(self._work, shard, lane, batch)

    def _call(self, batch: Batch) -> tuple[Any, Exception | None]:
        try:
            return self._handler({"Records": batch.records}, None), None
        except Exception as exc:
            return None, exc

    def _work(self, shard: _Shard, lane: Lane, batch: Batch) -> None:
        """A worker thread: the handler only; the outcome is applied on the loop's thread."""
        self._outcomes.put(_Outcome(shard, lane, batch, *self._call(batch)))
        self._wake.set()

    def _collect(self) -> bool:
        """Apply the outcomes the lanes' workers returned; True if there were any."""
        collected = False
        while True:
            try:
                outcome = self._outcomes.get_nowait()
            except queue.Empty:
                return collected
            collected = True
            outcome.lane.in_flight = False
            if self._shards.get(outcome.shard.shard_id) is outcome.shard:
                self._settle(outcome)  # else: a stream that was replaced; redelivered anyway

    def _settle(self, outcome: _Outcome) -> None:
        """Apply the failure policy to a batch the handler returned (or raised) on."""
        shard, lane, batch, exc = outcome.shard, outcome.lane, outcome.batch, outcome.error
        if exc is None:
            failed_at, error = self._first_failure(batch, outcome.response)
        elif is_outage(exc):  # the database's failure, not the function's
            self._wait_for_store(shard, batch, exc)
            return
        else:
            log.warning("stream function error: %r", exc, extra={"shard_id": shard.shard_id})
            failed_at, error = 0, f"{type(exc).__name__}: {exc}"
        self._outages = 0
        if failed_at is None:
            lane.batches.popleft()
            self.stats.records_succeeded += len(batch.records)
            self._done(shard, batch.records)
            return
        self.stats.function_errors += 1
        if failed_at > 0:  # the records before the first failure succeeded
            self.stats.records_succeeded += failed_at
            done, batch.records = batch.records[:failed_at], batch.records[failed_at:]
            self._done(shard, done)
        batch.error = error
        if self._mapping.bisect_on_error and len(batch.records) > 1:
            # Split and retry at once; a split does not use up a retry (Lambda's rule), so the
            # failing record ends up alone and only it meets the retry limit.
            half = len(batch.records) // 2
            lane.batches.popleft()
            lane.batches.extendleft(
                [
                    Batch(batch.records[half:], batch.attempts, error=error),
                    Batch(batch.records[:half], batch.attempts, error=error),
                ]
            )
            return
        batch.attempts += 1
        retries = self._mapping.max_retry_attempts
        if 0 <= retries < batch.attempts:
            batch.condemned = "RetryAttemptsExhausted"
            self._flush_dead_letter(shard, lane)
            return
        pause = min(
            self._polling.retry_max_seconds,
            self._polling.retry_base_seconds * 2 ** (batch.attempts - 1),
        )
        batch.retry_at = self._clock() + pause * random.uniform(0.8, 1.2)

    def _done(self, shard: _Shard, records: list[dict[str, Any]]) -> None:
        """Records finished (processed or dead-lettered): checkpoint the gapless prefix."""
        shard.progress.finish(sequence_of(r) for r in records)
        checkpoint = shard.progress.advance()
        if checkpoint is not None:
            self._checkpoint(shard, checkpoint)

    def _wait_for_store(self, shard: _Shard, batch: Batch, exc: BaseException) -> None:
        """The database failed the batch: keep what is done, try the rest again later.

        Neither a retry attempt nor a step toward the dead-letter table: the records are not
        at fault. The records before the interruption are dropped from the batch; the next
        checkpoint covers them.
        """
        self.stats.store_outages += 1
        if isinstance(exc, BatchInterrupted):
            done = [str(r["dynamodb"]["SequenceNumber"]) for r in batch.records]
            if exc.sequence_number in done:
                finished = done.index(exc.sequence_number)
                self.stats.records_succeeded += finished
                # Finished, and covered by the next checkpoint (the store is out just now).
                shard.progress.finish(done[:finished])
                batch.records = batch.records[finished:]
        pause = self._outage_pause()
        batch.retry_at = self._clock() + pause
        STORE.failed(exc, "stream batch")  # one line per outage, then only counted
        log.debug(
            "store unavailable: the batch waits for it",
            extra={"first": batch.first_sequence, "pause_s": round(pause, 2), "error": str(exc)},
        )

    def _outage_pause(self) -> float:
        self._outages += 1
        pause = self._polling.retry_base_seconds * 2 ** min(self._outages - 1, 16)
        return float(min(self._polling.outage_max_seconds, pause) * random.uniform(0.8, 1.2))

    def _first_failure(self, batch: Batch, response: Any) -> tuple[int | None, str]:
        """Index of the lowest failed record per the partial batch response, or None."""
        if not self._mapping.report_batch_item_failures or not isinstance(response, dict):
            return None, ""
        failures = response.get("batchItemFailures")
        if not failures:
            return None, ""
        index = {str(r["dynamodb"]["SequenceNumber"]): n for n, r in enumerate(batch.records)}
        found = []
        for failure in failures:
            identifier = failure.get("itemIdentifier") if isinstance(failure, dict) else None
            if not identifier or str(identifier) not in index:
                # Lambda's rule: an empty or unknown identifier fails the whole batch.
                return 0, f"invalid batchItemFailures entry: {failure!r}"
            found.append(index[str(identifier)])
        lowest = min(found)
        return lowest, f"record {batch.records[lowest]['dynamodb']['SequenceNumber']} failed"

    def _expire(self, shard: _Shard, lane: Lane, batch: Batch) -> bool:
        """Dead-letter the failed records older than MaximumRecordAgeInSeconds.

        True if it did (the rest of the batch is invoked at the next turn). Age counts from the
        record's creation or this runner's start, whichever is later, and only for a batch that
        has failed: a backlog left by a stopped stack or a database outage is processed.
        """
        if not batch.attempts:
            return False
        oldest_allowed = self._wall() - self._mapping.max_record_age_seconds
        expired = 0
        if self._running_since < oldest_allowed:
            expired = next(
                (
                    n
                    for n, record in enumerate(batch.records)
                    if (created := record["dynamodb"].get("ApproximateCreationDateTime")) is None
                    or created >= oldest_allowed
                ),
                len(batch.records),
            )
        if not expired:
            return False
        old = Batch(
            batch.records[:expired],
            batch.attempts,
            error=batch.error or "too old",
            condemned="RecordAgeExceeded",
        )
        batch.records = batch.records[expired:]
        if not batch.records:
            lane.batches.popleft()
        lane.batches.appendleft(old)
        self._flush_dead_letter(shard, lane)
        return True

    def _flush_dead_letter(self, shard: _Shard, lane: Lane) -> None:
        """Write the condemned head batch to the dead-letter table, then move past it.

        If the write fails (the table is in the same database) the batch stays at the head of
        its lane and the write is tried again after a pause: nothing is checkpointed past it.
        """
        batch = lane.batches[0]
        assert batch.condemned is not None
        try:
            self._write_dead_letter(shard, batch, batch.condemned)
        except StoreUnavailable as exc:
            self._wait_for_store(shard, batch, exc)
            return
        self._outages = 0
        lane.batches.popleft()
        # The lane moves on: the batch is in the destination, its records are done here.
        self._done(shard, batch.records)

    def _write_dead_letter(self, shard: _Shard, batch: Batch, condition: str) -> None:
        assert self._stream_arn is not None
        first, last = batch.records[0]["dynamodb"], batch.records[-1]["dynamodb"]
        now_ms = int(self._wall() * 1000)
        letter = DeadLetter(
            dead_letter_id=f"{shard.shard_id}#{sequence_position(batch.first_sequence)}",
            condition=condition,
            stream_arn=self._stream_arn,
            shard_id=shard.shard_id,
            start_sequence_number=batch.first_sequence,
            end_sequence_number=batch.last_sequence,
            batch_size=len(batch.records),
            approximate_arrival_of_first_record=first.get("ApproximateCreationDateTime"),
            approximate_arrival_of_last_record=last.get("ApproximateCreationDateTime"),
            attempts=batch.attempts,
            error=batch.error,
            failed_at=now_ms,
            records=batch.records,
        )
        self._dead_letters.put(letter)
        self.stats.records_dead_lettered += len(batch.records)
        log.error(
            "batch sent to the dead-letter table",
            extra={
                "shard_id": shard.shard_id,
                "condition": condition,
                "start": batch.first_sequence,
                "end": batch.last_sequence,
            },
        )

    def _checkpoint(
        self, shard: _Shard, sequence_number: str | None, finished: bool = False
    ) -> None:
        assert self._stream_arn is not None
        if not self._checkpoints.save(self._stream_arn, shard.shard_id, sequence_number, finished):
            log.warning("another runner is ahead on shard %s", shard.shard_id)
        if sequence_number is not None:
            shard.checkpoint = sequence_number


def _warn_or_outage(exc: BaseException, where: str, message: str, *args: object) -> None:
    """A failed stream call: the database's outage is noted once (:data:`STORE`); anything
    else (a missing table or stream, a refused request) is worth its own warning."""
    missing = isinstance(exc, ClientError) and error_code(exc) == "ResourceNotFoundException"
    if is_outage(exc) and not missing:
        STORE.failed(exc, where)
    else:
        log.warning(message, *args, exc)
