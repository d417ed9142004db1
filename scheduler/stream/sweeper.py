"""Re-drives stalled queues: promotes queued jobs of repositories that have free slots.

Promotion normally rides on the stream record of a finish (:mod:`scheduler.stream.dispatcher`).
Two things can leave a slot unused with jobs waiting: a promotion that was lost (on AWS, the
eventually consistent ``queued`` index can miss a job that was queued a moment before), and a
concurrency limit raised in the configuration, which no finish announces. The sweeper runs
beside the reaper, reads the sparse ``queued_by_age`` index (one query, no scan) for the
repositories that have queued jobs, and asks each to promote. Promotion is idempotent and
guarded by the slot counter, so a sweep racing the stream (or another sweeper) never
over-fills a repository; a full repository costs one query and one refused transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from scheduler.db.reads import JobReads

__all__ = ["QueueSweeper"]

log = logging.getLogger(__name__)

Promote = Callable[[str], int]
"""Fills a repository's free slots from its queue; returns how many jobs it activated."""


class QueueSweeper:
    def __init__(self, reads: JobReads, promote: Promote, *, head: int = 100) -> None:
        self._reads = reads
        self._promote = promote
        self._head = head  # queued jobs read per sweep (the oldest, of any repository)

    def sweep_once(self) -> dict[str, int]:
        """Promote in every repository at the head of the queue; return what was promoted."""
        promoted = {}
        for repo in self._reads.queued_repos(limit=self._head):
            count = self._promote(repo)
            if count:
                promoted[repo] = count
        if promoted:
            log.info("stalled queues promoted", extra={"promoted": promoted})
        return promoted
