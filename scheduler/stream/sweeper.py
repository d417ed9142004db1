"""Re-drives stalled queues: promotes queued jobs of repositories that have free slots.

Promotion normally rides on the stream record of a new job or of a finish
(:mod:`scheduler.stream.dispatcher`). Anything that loses that record (a record the event
source mapping gave up on, a promotion the eventually consistent ``queued`` index missed on
AWS, a concurrency limit raised in the configuration, which no finish announces) can leave a
slot unused with jobs waiting. The sweeper runs beside the reaper and visits the repositories
with queued work, which the transaction that queues a job marks (the repos table's sparse
``with_queue`` index), and asks each to promote its oldest jobs.

Fair by construction: each round reads the marked repositories by name from where the last
round stopped (at most ``per_round`` of them, wrapping around), so every repository with queued
work is visited within ``ceil(marked / per_round)`` rounds however long another one's queue
is. A round costs one query per ``per_round`` marked repositories and one promotion per
repository visited (one query of its queue and one counters read; a full repository writes
nothing); a repository whose pending count is 0 has its mark cleared instead (one conditional
write). Promotion is idempotent and guarded by the slot counter, so a sweep racing the stream
(or another sweeper) never over-fills a repository.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from scheduler.db.store import JobStore

__all__ = ["QueueSweeper"]

log = logging.getLogger(__name__)

Promote = Callable[[str], int]
"""Fills a repository's free slots from its queue; returns how many jobs it activated."""


class QueueSweeper:
    def __init__(self, store: JobStore, promote: Promote, *, per_round: int = 100) -> None:
        self._store = store
        self._promote = promote
        self._per_round = per_round  # marked repositories visited per round
        self._after: str | None = None  # where the next round goes on (None: from the start)
        self._lock = threading.Lock()

    def sweep_once(self) -> dict[str, int]:
        """Promote in the next ``per_round`` repositories with queued work; return what was
        promoted, by repository."""
        with self._lock:
            after = self._after
        marked, next_after = self._store.reads.repos_with_queue(after=after, limit=self._per_round)
        with self._lock:
            self._after = next_after
        promoted = {}
        for repo, pending in marked:
            if pending <= 0 and self._store.clear_queue_mark(repo):
                continue  # nothing queued: it leaves the index until a job is queued again
            count = self._promote(repo)
            if count:
                promoted[repo] = count
        if promoted:
            log.info("stalled queues promoted", extra={"promoted": promoted})
        return promoted
