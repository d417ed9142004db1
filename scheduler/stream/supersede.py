"""Supersede: a newer job of a branch (or pull request) cancels that lane's older jobs.

Carried out on the new job's INSERT record (the :class:`~scheduler.stream.decide.SupersedeOlder`
action), before the new job is activated. "Older" is the job order ``(received_at, job_id)``:
a total order, so of two racing pushes exactly one is the newer, and a job never cancels a
newer one.

A job waiting for approval (a fork's pull request) is superseded by any newer job of its pull
request whatever the mode: its commit was never approved, and nobody should approve a stale head.

Both ends of a race are covered: the newer job's record cancels the older jobs it can see,
and a job whose own record finds a newer job of its lane already there cancels itself (the
newer job's record may have been processed before this one was written).

Every cancel is the ordinary guarded ``cancel`` transition (status and version as read), so
it is safe to repeat: a replayed record finds the older jobs cancelled already. A job that
started meanwhile is left alone under "queued"; under "all" an active job's run is stopped by
its cancel's own stream record, before its slot is released (the operator's cancel path).
Store failures propagate: the record is tried again (see the dispatcher's outage handling).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from pynamodb.expressions.condition import Condition

from scheduler.config import SupersedeMode
from scheduler.db.models import JobModel
from scheduler.db.store import JobState, JobStore, Outcome
from scheduler.errors import JobNotFound
from scheduler.stream.decide import Lane
from state_machines import JobStatus, TransitionConflict, Trigger

__all__ = ["ACTOR", "SUPERSEDED", "Superseder", "lane_condition", "order"]

log = logging.getLogger(__name__)

SUPERSEDED = "superseded"
ACTOR = "supersede"  # the history's actor is ``supersede:<newer job id>``
_ELIGIBLE: dict[SupersedeMode, frozenset[JobStatus]] = {
    "off": frozenset({JobStatus.WAITING}),
    "queued": frozenset({JobStatus.WAITING, JobStatus.PENDING}),
    "all": frozenset({JobStatus.WAITING, JobStatus.PENDING, JobStatus.ACTIVE}),
}
_ATTEMPTS = 3  # re-reads after a lost race (a stale index entry, a job that moved on)


def order(job: JobState | JobModel) -> tuple[int, str]:
    """The job order: received first is older; the job id breaks a tie in one millisecond."""
    return int(job.received_at), str(job.job_id)


def lane_condition(lane: Lane) -> Condition:
    """The filter that selects a lane's jobs within its repository's partition: deliveries'
    jobs, never a pipeline's steps (superseding their run cancels them)."""
    condition: Condition = (JobModel.event == lane.event) & JobModel.run_of.does_not_exist()
    if lane.pr_number is not None:
        condition &= JobModel.pr_number == lane.pr_number
    else:
        condition &= JobModel.branch == (lane.branch or "")
    return condition


class Superseder:
    def __init__(self, store: JobStore) -> None:
        self._store = store

    def run(self, job: JobState, lane: Lane, mode: SupersedeMode) -> int:
        """Cancel ``lane``'s jobs older than ``job`` (and ``job`` itself if a newer one is
        there) that ``mode`` covers; returns how many were cancelled now."""
        eligible = _ELIGIBLE[mode]
        if lane.pr_number is None:
            eligible -= {JobStatus.WAITING}  # only a pull request's jobs can wait
        if not eligible:
            return 0
        condition = lane_condition(lane)
        found = self._store.reads.unfinished_in_lane(
            lane.repo,
            condition,
            with_active=JobStatus.ACTIVE in eligible,
            with_pending=JobStatus.PENDING in eligible,
            # Only a pull request's jobs can wait for approval.
            with_waiting=lane.pr_number is not None,
        )
        # Keyed by id: a job read from both indexes (it moved in between) is one candidate.
        older = {m.job_id: JobState.from_model(m) for m in found if order(m) < order(job)}
        cancelled = sum(
            self._cancel(other, eligible, by=job.job_id)
            for other in sorted(older.values(), key=order)
        )
        newer = next(self._newer(job, condition), None)
        if newer is not None:
            cancelled += self._cancel(job, eligible, by=newer.job_id)
        return cancelled

    def _newer(self, job: JobState, condition: Condition) -> Iterator[JobModel]:
        """The jobs of the lane newer than ``job``, oldest first (whatever their status)."""
        for model in self._store.reads.in_lane_since(job.repo, condition, job.received_at):
            if order(model) > order(job):
                yield model

    def _cancel(self, job: JobState, eligible: frozenset[JobStatus], *, by: str) -> bool:
        """One guarded cancel; on a lost race, read the job again and decide again."""
        for _ in range(_ATTEMPTS):
            if job.status not in eligible:
                return False  # started (under "queued") or ended meanwhile: left alone
            try:
                self._store.transition(
                    job,
                    Trigger.CANCEL,
                    actor=f"{ACTOR}:{by}",
                    outcome=Outcome(reason=SUPERSEDED, detail=f"superseded by job {by}"),
                )
            except TransitionConflict:
                try:
                    job = self._store.state(job.job_id)
                except JobNotFound:
                    return False
                continue
            log.info(
                "job superseded",
                extra={"job_id": job.job_id, "repo": job.repo, "by": by, "was": job.status.value},
            )
            return True
        return False
