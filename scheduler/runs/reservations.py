"""Queued jobs this process is activating right now: a finish handing its slot on, or a
promotion of the stream's dispatcher.

Both read the head of the same queue, and without a word between them both write the same
activation, one of which can only be refused (a wasted transaction, and for a hand-off a finish
made again on its own). Each activator reserves the job first; the others skip a reserved job.
A hint, never a guard: the conditional write still decides, and a reservation never released
(a thread that died between the two) lapses after ``ttl_ms``.
"""

from __future__ import annotations

import threading

from scheduler.db.store import Clock, system_clock

__all__ = ["Reservations"]


class Reservations:
    def __init__(self, *, ttl_ms: int = 2_000, clock: Clock = system_clock) -> None:
        self._ttl_ms = ttl_ms
        self._clock = clock
        self._held: dict[str, int] = {}  # job id -> reserved at (epoch ms)
        self._lock = threading.Lock()

    def reserve(self, job_id: str) -> bool:
        """Whether ``job_id`` is now this caller's to activate (no one else holds it)."""
        now = self._clock()
        with self._lock:
            at = self._held.get(job_id)
            if at is not None and now - at <= self._ttl_ms:
                return False
            self._held[job_id] = now
            return True

    def release(self, job_id: str) -> None:
        with self._lock:
            self._held.pop(job_id, None)

    def held(self) -> frozenset[str]:
        """The jobs reserved now (lapsed ones are dropped)."""
        now = self._clock()
        with self._lock:
            self._held = {job: at for job, at in self._held.items() if now - at <= self._ttl_ms}
            return frozenset(self._held)
