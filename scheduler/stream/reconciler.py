"""The backstop that needs no stream record: works from the items, never the stream, never a scan.

The stream is the fast path: the record of a cancel (or of the reaper's timeout) stops the
run and frees the slot it kept once the run is known stopped, the record of a finish (or of a
retry) promotes the queue. The event source mapping on AWS gives a record up after its
retries, so each of those can be lost. The reconciliation runs on the reaper's schedule on
both runtimes (the reaper's Lambda function, the local stack's reaper loop) and redoes what
such a record owed:

1. every finished job that still holds a slot (the sparse ``held_slots`` index: cancelled
   runs, and runs the reaper timed out, not yet known stopped) is asked of the executor: a
   run known stopped (or one never claimed) has its slot freed and its repository promoted;
   a run that may still go is asked to stop again, and its slot stays until a later round
   finds it stopped;
2. every failure older than a grace left for its own record (the same index's RETRY_SHARD
   part: failures whose verdict on an automatic retry may be owed) is judged again with the
   repository's retry policy, by the same pure ``decide``: the retry it owed is made (the
   same conditional ``failed -> pending`` its record makes), or, when none is owed, the
   failure leaves the index;
3. every pipeline run that has run its steps for longer than the grace (the deadline index's
   RUN_SHARD part) gets the fan-in its steps' records make: a dropped record of a step's end
   would otherwise leave its dependents blocked, and the run unended, for ever; a cancelled
   run stays there until its steps are cancelled, which a lost record of its cancel owed;
4. the :class:`~scheduler.stream.sweeper.QueueSweeper` visits the repositories with queued
   work and promotes their oldest jobs into free slots (a retried job among them, and the
   jobs whose pipeline file is owed for long: their expansion is made again).

Everything it does is a conditional write that the stream's own handling of the same record
would make (a slot is freed once, a job activated once), so it may race the stream and itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from scheduler.db.models import JobModel
from scheduler.db.store import Clock, JobState, JobStore, system_clock
from scheduler.stream.sweeper import QueueSweeper
from state_machines import TransitionConflict

__all__ = ["Reconciled", "Reconciler", "Redrive", "RunStops"]

log = logging.getLogger(__name__)


class RunStops(Protocol):
    """What the reconciliation asks of the runtime's executor (both executors offer it)."""

    def stopped(self, run_id: str) -> bool: ...

    def cancel(self, run_id: str) -> None: ...


SettleRun = Callable[[str], str]
"""A pipeline run's fan-in by its id (``Dispatcher.settle_run``): what it found."""

Redrive = Callable[[JobModel], str]
"""Makes what a failure's lost record owed (``Dispatcher.redrive_failed``): ``retried``,
``settled`` (none owed) or ``already_done``."""

RETRY_GRACE_MS = 60_000
"""How long a failure is left to its own record before the reconciliation judges it: the
stream's normal delay, many times over (a retry made by both loses one conditional write)."""


@dataclass
class Reconciled:
    """What one round did: slots freed, stops asked again (not yet confirmed), retries made
    for lost failure records, failures found to owe none, promotions."""

    released: list[str] = field(default_factory=list)
    stopping: list[str] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)
    settled: list[str] = field(default_factory=list)
    promoted: dict[str, int] = field(default_factory=dict)
    runs_ended: list[str] = field(default_factory=list)  # pipeline runs ended by a fan-in

    def to_dict(self) -> dict[str, Any]:
        return {
            "released": self.released,
            "stopping": self.stopping,
            "retried": self.retried,
            "settled": self.settled,
            "promoted": self.promoted,
            "runs_ended": self.runs_ended,
        }


class Reconciler:
    """Every slot a repository counts belongs to an active job or to a finished one whose run
    is not yet known stopped, every failure that its policy retries has its retry made, and
    every repository with queued jobs and a free slot has its oldest queued jobs promoted
    within a bounded number of rounds, whatever records were lost.

    ``stops`` is the executor (None in a process that runs nothing: held slots then stay for
    the engine's own reconciliation, as nothing here can tell that their runs stopped).
    ``redrive`` judges failures (None: they are left to the stream).
    """

    def __init__(
        self,
        store: JobStore,
        promote: Callable[[str], int],
        sweeper: QueueSweeper,
        stops: RunStops | None,
        *,
        redrive: Redrive | None = None,
        settle_run: SettleRun | None = None,
        held_per_round: int = 100,
        retry_grace_ms: int = RETRY_GRACE_MS,
        clock: Clock = system_clock,
    ) -> None:
        self._store = store
        self._promote = promote
        self._sweeper = sweeper
        self.stops = stops
        self._redrive = redrive
        self._settle_run = settle_run
        self._held_per_round = held_per_round
        self._retry_grace_ms = retry_grace_ms
        self._clock = clock

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
        if self._redrive is not None:
            self._judge_failures(done)
        if self._settle_run is not None:
            self._settle_runs(done)
        for repo, count in self._sweeper.sweep_once().items():
            done.promoted[repo] = done.promoted.get(repo, 0) + count
        if done.released or done.stopping or done.retried:
            log.warning(
                "held slots and owed retries reconciled",
                extra={
                    "released": done.released,
                    "stopping": done.stopping,
                    "retried": done.retried,
                },
            )
        return done

    def _judge_failures(self, done: Reconciled) -> None:
        """Make the retries lost failure records owed; settle the failures that owe none."""
        assert self._redrive is not None
        before = self._clock() - self._retry_grace_ms
        for job in self._store.reads.owed_verdicts(before, limit=self._held_per_round):
            try:
                verdict = self._redrive(job)
            except Exception:
                log.exception("cannot judge a failure", extra={"job_id": job.job_id})
                continue  # the next round asks again: the mark stays
            if verdict == "retried":
                done.retried.append(job.job_id)
            elif verdict == "settled":
                done.settled.append(job.job_id)

    def _settle_runs(self, done: Reconciled) -> None:
        """The fan-in of every pipeline run running for longer than the grace (idempotent:
        with nothing lost it moves nothing, at one consistent read of its steps)."""
        assert self._settle_run is not None
        before = self._clock() - self._retry_grace_ms
        for run in self._store.reads.running_pipelines(before, limit=self._held_per_round):
            try:
                found = self._settle_run(run.job_id)
            except Exception:
                log.exception("cannot settle a pipeline run", extra={"job_id": run.job_id})
                continue  # the next round asks again
            if found in ("passed", "failed"):
                done.runs_ended.append(run.job_id)

    def _settle_held(self, job: JobModel) -> str:
        """Free ``job``'s slot if its run is known stopped, else ask for the stop again."""
        run_id = job.run_id
        if run_id is not None:
            if self.stops is None:
                return "unknown"
            try:
                if not self.stops.stopped(run_id):
                    # StopBuild only asks (and may have been throttled or lost with the cancel's
                    # record): ask again; the slot moves in a later round, once it is stopped.
                    self.stops.cancel(run_id)
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
