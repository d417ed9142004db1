"""When each repository was last found full, in this process: a hint, never a guard.

A new job whose repository was found full after the job joined its queue stays queued without
an activation that could only be refused: whoever frees or hands on a slot after that moment
reads the queue afterwards, and finds the job there. Each activation still checks the slot
count in its own write, so a wrong hint costs a wait for the next promotion (or the sweeper),
never a slot too many.

Found full: an activation refused for want of a slot, and nothing else. A finish that hands
its slot to the head of the queue does not say so: the repository may have free slots (the
head's own record had yet to activate it into one), and a job skipped on that word would wait
with a slot free for the sweep (issue 23).
"""

from __future__ import annotations

import threading

from scheduler.db.store import Clock, system_clock

__all__ = ["FullRepos"]


class FullRepos:
    def __init__(self, *, margin_ms: int = 1_000, clock: Clock = system_clock) -> None:
        """``margin_ms`` covers clocks apart and an index that lags the table (on AWS); the
        local runtime has one clock and DynamoDB Local's indexes follow each write."""
        self._at: dict[str, int] = {}
        self._lock = threading.Lock()
        self._margin_ms = margin_ms
        self._clock = clock

    def found_full(self, repo: str, at: int | None = None) -> None:
        """``repo`` had no free slot at ``at`` (epoch ms; default now)."""
        at = self._clock() if at is None else at
        with self._lock:
            self._at[repo] = max(at, self._at.get(repo, at))

    def joined_before_full(self, repo: str, queued_at: int | None) -> bool:
        """Whether a job that joined ``repo``'s queue at ``queued_at`` did so before the
        repository was last found full."""
        full_at = self._at.get(repo)
        return (
            full_at is not None and queued_at is not None and queued_at < full_at - self._margin_ms
        )
