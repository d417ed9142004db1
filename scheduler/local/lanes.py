"""Lanes of a shard: Lambda's ``ParallelizationFactor`` for the local stream runner.

Within a shard, records are partitioned by their item's key into N lanes. A lane is what a shard
is with a factor of 1: its own buffer, batches, retries, bisection and dead letters, one batch
in flight at a time, so the records of one item stay in order while the records of other items
run beside them.

The shard's checkpoint is the last sequence number below which *every* record read is finished
(succeeded, dead-lettered or filtered out): the lowest unfinished record across the lanes, minus
one. A lane that runs ahead never moves the checkpoint past a record another lane still holds;
after a crash everything after the checkpoint is delivered again (at least once), which the
dispatcher tolerates because every transition is a conditional write.
"""

from __future__ import annotations

import json
import zlib
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Batch", "Lane", "Progress", "lane_index"]


def lane_index(record: Mapping[str, Any], factor: int) -> int:
    """The lane of a record: a stable hash of its item's key (Lambda hashes the partition key)."""
    if factor <= 1:
        return 0
    keys = record.get("dynamodb", {}).get("Keys", {})
    return zlib.crc32(json.dumps(keys, sort_keys=True).encode()) % factor


def sequence_of(record: Mapping[str, Any]) -> str:
    return str(record["dynamodb"]["SequenceNumber"])


@dataclass
class Batch:
    records: list[dict[str, Any]]
    attempts: int = 0  # failed invocations of this batch (a split does not count)
    retry_at: float = 0.0
    error: str = ""
    condemned: str | None = None  # a dead-letter condition whose write is still to be made

    @property
    def first_sequence(self) -> str:
        return sequence_of(self.records[0])

    @property
    def last_sequence(self) -> str:
        return sequence_of(self.records[-1])


@dataclass
class Lane:
    index: int
    buffer: list[dict[str, Any]] = field(default_factory=list)
    buffer_since: float = 0.0
    batches: deque[Batch] = field(default_factory=deque)  # the head is the one invoked
    in_flight: bool = False  # the head batch is with the handler (on a worker thread)

    @property
    def idle(self) -> bool:
        return not self.buffer and not self.batches and not self.in_flight


class Progress:
    """Records read from a shard in order, and how far they are finished without a gap.

    ``add`` the sequence numbers in read order (filtered-out ones as ``done``), ``finish`` them
    as lanes complete them; ``advance`` returns the new checkpoint when the finished prefix grew.
    """

    def __init__(self) -> None:
        self._order: deque[str] = deque()
        self._done: set[str] = set()

    def add(self, sequence_numbers: Iterable[str], done: bool = False) -> None:
        for sequence_number in sequence_numbers:
            self._order.append(sequence_number)
            if done:
                self._done.add(sequence_number)

    def finish(self, sequence_numbers: Iterable[str]) -> None:
        self._done.update(sequence_numbers)

    def advance(self) -> str | None:
        """Drop the finished prefix; its last sequence number (the new checkpoint), or None."""
        last = None
        while self._order and self._order[0] in self._done:
            last = self._order.popleft()
            self._done.discard(last)
        return last

    def clear(self) -> None:
        self._order.clear()
        self._done.clear()

    def __len__(self) -> int:
        """Records read and not yet behind the checkpoint."""
        return len(self._order)
