"""The heads of repositories' queues, for finishing runs to hand their slots to.

A finish that hands its slot on (:class:`~scheduler.db.store.HandOff`) needs the job at the head
of its repository's queue. Read one at a time, that is one query per finish; here the queue is
read a few jobs ahead, and each job is handed to one finish only. What was read is a hint, not
a promise: every hand-off is conditioned on the job being as read, so a job that moved since
(a promotion, a cancel) only costs that hand-off (refused, the finish is made on its own and
its record promotes the queue), and the repository's heads are read again. A short lifetime
bounds how long a newer job of higher priority waits behind the jobs read before it.

A job of a concurrency group is never handed a slot: a hand-off cannot take its group in the
finish's write (see ``JobStore.activate``). At the head of the queue with its group free, it
stops the hand-off (the finish is made on its own and its record promotes the queue, in its
order); with its group held, it is passed over, and the jobs behind it may have the slot.

A job given out stays pending until its hand-off commits, which under load takes a good part
of a second: it is reserved (:mod:`scheduler.runs.reservations`, shared with the dispatcher's
promotions) until the hand-off is settled, and a read skips the jobs reserved, or two writers
would activate the same job and one of them be refused.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

from scheduler.db.models import JobModel
from scheduler.db.reads import JobReads
from scheduler.db.store import Clock, system_clock
from scheduler.runs.reservations import Reservations
from state_machines import JobStatus

__all__ = ["QueueHead", "QueueHeads"]

_MAX_SKIPPED = 16  # reserved jobs a read looks past, at most (about one per runner and lane)


@dataclass(frozen=True, slots=True)
class QueueHead:
    job: JobModel
    read_at: int  # when its queue was read (epoch ms): the repository was full then


@dataclass
class _Read:
    at: int
    jobs: deque[JobModel]
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Concurrency group -> (when read, the job holding it or None): see QueueHeads._holder.
    holders: dict[str, tuple[int, str | None]] = field(default_factory=dict)


class QueueHeads:
    def __init__(
        self,
        reads: JobReads,
        *,
        reservations: Reservations | None = None,
        read_ahead: int = 4,
        max_age_ms: int = 2_000,
        clock: Clock = system_clock,
    ) -> None:
        self._reads = reads
        self._reservations = reservations or Reservations(ttl_ms=max_age_ms, clock=clock)
        self._read_ahead = read_ahead
        self._max_age_ms = max_age_ms
        self._clock = clock
        self._by_repo: dict[str, _Read] = {}
        self._guard = threading.Lock()

    def take(self, repo: str, finishing: str | None = None) -> QueueHead | None:
        """The next queued job of ``repo`` that no other finish or promotion holds, reserved
        for the caller until :meth:`settled`; None if it has none, or if the next one is a job
        of a concurrency group that is free (or freed by ``finishing``, the job whose finish
        asks): a hand-off cannot take a group in the finish's write, so that finish goes alone
        and its record promotes the queue, in its order. A job whose group is held is passed
        over: the jobs behind it may have the slot."""
        with self._guard:
            read = self._by_repo.setdefault(repo, _Read(0, deque()))
        with read.lock:  # one query at a time per repository: the others wait and share it
            now = self._clock()
            if not read.jobs or now - read.at > self._max_age_ms:
                self._read(repo, read, now)
            while read.jobs:
                group = read.jobs[0].concurrency_group
                if group is not None:
                    holder = self._holder(repo, group, read, now)
                    if holder is None or holder == finishing:
                        return None
                    read.jobs.popleft()  # it waits for its group: its holder's end promotes it
                    continue
                job = read.jobs.popleft()
                if self._reservations.reserve(job.job_id):
                    return QueueHead(job, read.at)
            return None

    def _holder(self, repo: str, group: str, read: _Read, now: int) -> str | None:
        """The job holding ``group``, as read at most the queue's lifetime ago (a hint, as the
        queue is: a group freed since only lets a hand-off pass its job over for that long,
        and the holder's own finish promotes it)."""
        known = read.holders.get(group)
        if known is None or now - known[0] > self._max_age_ms:
            known = (now, self._reads.group_holder(repo, group))
            read.holders[group] = known
        return known[1]

    def _read(self, repo: str, read: _Read, now: int) -> None:
        held = self._reservations.held()
        limit = self._read_ahead + min(len(held), _MAX_SKIPPED)  # the held ones come first
        read.at = now
        read.jobs = deque(
            job
            for job in self._reads.queued(repo, limit=limit, page_size=limit)
            if job.status == JobStatus.PENDING.value and job.job_id not in held
        )

    def settled(self, job_id: str) -> None:
        """The hand-off to ``job_id`` is over (made, refused or failed): it is free again."""
        self._reservations.release(job_id)

    def forget(self, repo: str) -> None:
        """Read ``repo``'s queue again next time (a head proved stale); the jobs given out
        are still skipped."""
        with self._guard:
            read = self._by_repo.get(repo)
        if read is not None:
            with read.lock:
                read.jobs.clear()
