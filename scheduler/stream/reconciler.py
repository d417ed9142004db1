"""The backstop that needs no stream record: works from the items, never the stream, never a scan.

The stream is the fast path: the record of a cancel stops the run and frees the slot the
cancel kept, the record of a finish (or of a retry) promotes the queue. The event source
mapping on AWS gives a record up after its retries, so each of those can be lost. The
reconciliation runs on the reaper's schedule on both runtimes (the reaper's Lambda function,
the local stack's reaper loop) and redoes what such a record owed:

1. every finished job that still holds a slot (the sparse ``held_slots`` index: cancelled
   runs not yet known stopped) is asked of the executor: a run known stopped (or one never
   claimed) has its slot freed and its repository promoted; a run that may still go is asked
   to stop again, and its slot stays until a later round finds it stopped;
2. the :class:`~scheduler.stream.sweeper.QueueSweeper` visits the repositories with queued
   work and promotes their oldest jobs into free slots.

Everything it does is a conditional write that the stream's own handling of the same record
would make (a slot is freed once, a job activated once), so it may race the stream and itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from scheduler.db.models import JobModel
from scheduler.db.store import JobState, JobStore
from scheduler.stream.sweeper import QueueSweeper
from state_machines import TransitionConflict

__all__ = ["Reconciled", "Reconciler", "RunStops"]

log = logging.getLogger(__name__)


class RunStops(Protocol):
    """What the reconciliation asks of the runtime's executor (both executors offer it)."""

    def stopped(self, run_id: str) -> bool: ...

    def cancel(self, run_id: str) -> None: ...


@dataclass
class Reconciled:
    """What one round did: slots freed, stops asked again (not yet confirmed), promotions."""

    released: list[str] = field(default_factory=list)
    stopping: list[str] = field(default_factory=list)
    promoted: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"released": self.released, "stopping": self.stopping, "promoted": self.promoted}


class Reconciler:
    """Every slot a repository counts belongs to an active job or to a finished one whose run
    is not yet known stopped, and every repository with queued jobs and a free slot has its
    oldest queued jobs promoted within a bounded number of rounds, whatever records were lost.

    ``stops`` is the executor (None in a process that runs nothing: held slots then stay for
    the engine's own reconciliation, as nothing here can tell that their runs stopped).
    """

    def __init__(
        self,
        store: JobStore,
        promote: Callable[[str], int],
        sweeper: QueueSweeper,
        stops: RunStops | None,
        *,
        held_per_round: int = 100,
    ) -> None:
        self._store = store
        self._promote = promote
        self._sweeper = sweeper
        self._stops = stops
        self._held_per_round = held_per_round

    def run_once(self) -> Reconciled:
        """One round: free the slots whose runs are known stopped, then sweep the queues."""
        done = Reconciled()
        freed: dict[str, None] = {}
        for job in self._store.reads.held_slots(limit=self._held_per_round):
            verdict = self._settle_held(job)
            if verdict == "released":
                done.released.append(job.job_id)
                freed.setdefault(job.repo, None)
            elif verdict == "stopping":
                done.stopping.append(job.job_id)
        for repo in freed:
            # What the lost cancel record owed after freeing the slot: offer it to the queue.
            count = self._promote(repo)
            if count:
                done.promoted[repo] = count
        for repo, count in self._sweeper.sweep_once().items():
            done.promoted[repo] = done.promoted.get(repo, 0) + count
        if done.released or done.stopping:
            log.warning(
                "held slots reconciled",
                extra={"released": done.released, "stopping": done.stopping},
            )
        return done

    def _settle_held(self, job: JobModel) -> str:
        """Free ``job``'s slot if its run is known stopped, else ask for the stop again."""
        run_id = job.run_id
        if run_id is not None:
            if self._stops is None:
                return "unknown"
            try:
                if not self._stops.stopped(run_id):
                    # StopBuild only asks (and may have been throttled or lost with the cancel's
                    # record): ask again; the slot moves in a later round, once it is stopped.
                    self._stops.cancel(run_id)
                    log.info("stop asked again", extra={"job_id": job.job_id, "run_id": run_id})
                    return "stopping"
            except Exception:
                log.exception("cannot stop the run", extra={"job_id": job.job_id, "run_id": run_id})
                return "stopping"
        # Known stopped, or never claimed (a claim needs an active job: nothing can start).
        try:
            self._store.release_slot(JobState.from_model(job))
        except TransitionConflict:
            return "already_done"  # the cancel's record (or another round) freed it first
        return "released"
