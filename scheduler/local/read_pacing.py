"""When a shard is read next while records flow fast.

Read again at once, a shard caught up with a busy stream brings back a record or two per
``GetRecords``: each read costs DynamoDB Local (which serves requests one at a time) about what
a write does, and each small batch costs the handler its fixed share. So once the records read
over the last second pass ``busy_records_per_second``, a read that found the shard caught up
(fewer records than it asked for) waits ``pause_seconds`` before the next one, and the records
written meanwhile come in one read and fewer, larger batches. Below that rate (a steady trickle
of deliveries) every read follows the last at once, as before: latency first.

Lambda's own mapping reads each shard about four times a second; this pause is far shorter.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

_WINDOW_SECONDS = 1.0


@dataclass
class ReadPacer:
    pause_seconds: float
    busy_records_per_second: float
    next_read_at: float = 0.0
    _reads: deque[tuple[float, int]] = field(default_factory=deque)
    _in_window: int = 0

    def ready(self, now: float) -> bool:
        return now >= self.next_read_at

    def read(self, now: float, count: int, asked: int) -> None:
        """``count`` records came back from a read that asked for ``asked``, at ``now``."""
        self._reads.append((now, count))
        self._in_window += count
        while self._reads and self._reads[0][0] <= now - _WINDOW_SECONDS:
            self._in_window -= self._reads.popleft()[1]
        busy = self._in_window >= self.busy_records_per_second * _WINDOW_SECONDS
        caught_up = count < asked
        self.next_read_at = now + self.pause_seconds if busy and caught_up and count else now
