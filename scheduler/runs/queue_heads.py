"""The heads of repositories' queues, for finishing runs to hand their slots to.

A finish that hands its slot on (:class:`~scheduler.db.store.HandOff`) needs the job at the head
of its repository's queue. Read one at a time, that is one query per finish; here the queue is
read a few jobs ahead, and each job is handed to one finish only. What was read is a hint, not
a promise: every hand-off is conditioned on the job being as read, so a job that moved since
(a promotion, a cancel) only costs that hand-off (refused, the finish is made on its own and
its record promotes the queue), and the repository's heads are read again. A short lifetime
bounds how long a newer job of higher priority waits behind the jobs read before it.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

from scheduler.db.models import JobModel
from scheduler.db.reads import JobReads
from scheduler.db.store import Clock, system_clock
from state_machines import JobStatus

__all__ = ["QueueHead", "QueueHeads"]


@dataclass(frozen=True, slots=True)
class QueueHead:
    job: JobModel
    read_at: int  # when its queue was read (epoch ms): the repository was full then


@dataclass
class _Read:
    at: int
    jobs: deque[JobModel]
    lock: threading.Lock = field(default_factory=threading.Lock)


class QueueHeads:
    def __init__(
        self,
        reads: JobReads,
        *,
        read_ahead: int = 4,
        max_age_ms: int = 2_000,
        clock: Clock = system_clock,
    ) -> None:
        self._reads = reads
        self._read_ahead = read_ahead
        self._max_age_ms = max_age_ms
        self._clock = clock
        self._by_repo: dict[str, _Read] = {}
        self._guard = threading.Lock()

    def take(self, repo: str) -> QueueHead | None:
        """The next queued job of ``repo`` that no other finish was given, if it has one."""
        with self._guard:
            read = self._by_repo.setdefault(repo, _Read(0, deque()))
        with read.lock:  # one query at a time per repository: the others wait and share it
            if not read.jobs or self._clock() - read.at > self._max_age_ms:
                read.at = self._clock()
                read.jobs = deque(
                    job
                    for job in self._reads.queued(
                        repo, limit=self._read_ahead, page_size=self._read_ahead
                    )
                    if job.status == JobStatus.PENDING.value
                )
            if not read.jobs:
                return None
            return QueueHead(read.jobs.popleft(), read.at)

    def forget(self, repo: str) -> None:
        """Read ``repo``'s queue again next time (a head proved stale)."""
        with self._guard:
            self._by_repo.pop(repo, None)
