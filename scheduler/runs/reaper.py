"""Fails active jobs whose deadline passed (``timed_out``) and stops their runs.

Overdue jobs are found with one query on the sparse ``active_by_deadline`` index (only active
jobs carry its keys, see :meth:`scheduler.db.reads.JobReads.overdue`), never a scan.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from scheduler.db.store import Clock, JobState, JobStore, Outcome, system_clock
from state_machines import TIMED_OUT, TransitionConflict, Trigger

log = logging.getLogger(__name__)


class Reaper:
    def __init__(
        self,
        store: JobStore,
        *,
        cancel_run: Callable[[str], None] | None = None,
        clock: Clock = system_clock,
        page_size: int = 50,
    ) -> None:
        self._store = store
        self._cancel_run = cancel_run
        self._clock = clock
        self._page_size = page_size

    def reap_once(self) -> list[str]:
        """Time out every overdue active job; return the ids this call timed out."""
        reaped = []
        for job in self._store.reads.overdue(self._clock(), limit=self._page_size):
            state = JobState.from_model(job)
            try:
                self._store.transition(
                    state,
                    Trigger.TIME_OUT,
                    actor="reaper",
                    outcome=Outcome(reason=TIMED_OUT, detail="deadline passed with no report"),
                )
            except TransitionConflict:
                continue  # it finished (or was reaped) meanwhile
            reaped.append(job.job_id)
            log.warning("job timed out", extra={"job_id": job.job_id, "run_id": job.run_id})
            if job.run_id and self._cancel_run is not None:
                try:
                    self._cancel_run(job.run_id)
                except Exception:
                    log.exception("could not stop run", extra={"run_id": job.run_id})
        return reaped
