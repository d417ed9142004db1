"""A pipeline run's steps as jobs of their own: fan-out makes them, fan-in moves them on.

Each step is a job item (``<run>.s<n>``, in pipeline order), so it has the lifecycle, queue,
slots, claims, reaper and retries of any job: started at most once per attempt, counted against
its repository's limit while it runs. What is new is how steps begin:

- **Fan-out** (:meth:`PipelineRuns.fan_out`) records the run's step count (only while the run is
  pending: a cancelled run makes none), then puts each step ``blocked`` with a condition that it
  is not there yet, up to 99 steps a transaction with their repository's counters (a run
  of 50 steps is one write). A replay, or a fan-out cut short and done again, makes only what
  is missing. Nothing runs yet: the steps without needs are unblocked by the first fan-in,
  once the run itself is ``active``, so a run cancelled meanwhile starts none of them.
- **Fan-in** (:meth:`PipelineRuns.fan_in`), called whenever a step ends (and by whoever sees a
  run that may owe one), reads every step consistently, asks the pure
  :func:`~scheduler.pipelines.decide` which blocked steps can run or must be skipped, and moves
  them with the lifecycle's guarded writes (``blocked -> pending`` or ``blocked -> skipped``,
  each conditional on the status and version read), up to 99 steps a transaction: a matrix's
  48 variants are queued by one write. However many processes do it at once, however often a
  record is replayed or in whatever order steps end, each step is unblocked or skipped
  exactly once: the second writer's condition fails and it writes nothing. The last need to
  end is always seen ended by the fan-in its own end calls for, because reads are consistent
  and come after that end was written.

A step that failed and whose automatic retry is still owed (its retry mark), or whose run is
not known stopped yet (it keeps its slot), has not ended for its dependents.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scheduler.config import RetryPolicy
from scheduler.db.models import JobModel
from scheduler.db.store import WRITE_BATCH, JobState, JobStore, NewJob, StoreContended
from scheduler.pipelines import (
    Pipeline,
    RunFacts,
    StepRecord,
    StepStatus,
    Verdict,
    decide,
    pipeline_from_records,
    step_from_record,
    step_record,
    verdict,
)
from state_machines import JobStatus, Trigger

__all__ = ["FanIn", "PipelineRuns", "facts_of", "step_id", "step_retry", "step_status"]

log = logging.getLogger(__name__)

ACTOR = "pipeline"
_TAG_PREFIX = "refs/tags/"
_CONTENDED_TRIES = 5
_FAILED = ("failed", "cancelled")


def step_id(run_id: str, index: int) -> str:
    """The job id of a run's ``index``-th step (from 1, in pipeline order)."""
    return f"{run_id}.s{index}"


def step_retry(job: JobModel) -> RetryPolicy | None:
    """A pipeline step's own retry policy (None: not a step, or none of its own)."""
    return step_from_record(_record(job)).retry if job.step is not None else None


def facts_of(run: JobModel) -> RunFacts:
    """What a step's ``if`` may read of its run's delivery."""
    ref = run.ref or ""
    return RunFacts(
        branch=run.branch or "",
        tag=ref[len(_TAG_PREFIX) :] if ref.startswith(_TAG_PREFIX) else "",
        event=run.event,
        pr=str(int(run.pr_number)) if run.pr_number is not None else "",
    )


def step_status(step: JobModel) -> StepStatus:
    """A step's status as its dependents see it: one that still owes a retry's verdict or a
    confirmed stop has not ended yet (it counts as running)."""
    status = JobStatus(step.status)
    if status.is_terminal and step.held_shard is not None:
        return "active"
    if status is JobStatus.WAITING:
        return "blocked"
    return status.value  # type: ignore[return-value]  # the other statuses are steps' own


@dataclass(frozen=True, slots=True)
class FanIn:
    """What one fan-in did: the steps it moved, and the run's verdict after it."""

    unblocked: tuple[str, ...]
    skipped: tuple[str, ...]
    verdict: Verdict
    failed: tuple[str, ...] = ()  # the keys of the steps that failed or were cancelled


class PipelineRuns:
    """Fan-out and fan-in of pipeline runs, through the store's guarded writes."""

    def __init__(self, store: JobStore, *, actor: str = ACTOR) -> None:
        self._store = store
        self._actor = actor

    def fan_out(self, run: JobModel, pipeline: Pipeline) -> list[str]:
        """Make the run's steps; return the ids made by this call (none on a replay)."""
        self._store.record_step_count(run.job_id, len(pipeline))
        news = [
            NewJob(
                job_id=step_id(run.job_id, index),
                repo=run.repo,
                event=run.event,
                sha=run.sha,
                timeout_seconds=step.timeout_seconds or int(run.timeout_seconds),
                ref=run.ref,
                branch=run.branch,
                pr_number=int(run.pr_number) if run.pr_number is not None else None,
                sender=run.sender,
                priority=int(run.priority or 0),
                trace_id=run.trace_id,
                clone_url=run.clone_url,
                fork=bool(run.fork),
                status=JobStatus.BLOCKED,
                run_of=run.job_id,
                step_key=step.key,
                step=json.dumps(step_record(step), separators=(",", ":")),
            )
            for index, step in enumerate(pipeline.steps, 1)
        ]
        # Up to 99 steps a write; those an earlier fan-out of this run made are left.
        return self._store.create_all(news, actor=self._actor)

    def steps(self, run_id: str, count: int) -> list[JobModel]:
        """The run's step items, read consistently, in pipeline order (missing ones left out:
        a fan-out still under way)."""
        ids = [step_id(run_id, index) for index in range(1, count + 1)]
        found = {item.job_id: item for item in JobModel.batch_get(ids, consistent_read=True)}
        return [found[job_id] for job_id in ids if job_id in found]

    def fan_in(self, run: JobModel) -> FanIn:
        """Unblock or skip every blocked step whose needs have all ended; the run's verdict.

        A run whose fan-out is not finished yet (fewer items than its count) decides nothing
        and is ``running``: the fan-out's replay makes the rest, and its steps' ends call for
        the fan-in again.
        """
        count = int(run.step_count or 0)
        items = self.steps(run.job_id, count)
        if count == 0 or len(items) < count:
            return FanIn((), (), "running")
        pipeline = pipeline_from_records(_record(item) for item in items)
        by_key = {str(item.step_key): item for item in items}
        statuses: dict[str, StepStatus] = {key: step_status(i) for key, i in by_key.items()}
        decision = decide(pipeline, statuses, facts_of(run))
        unblocked = self._move(decision.runnable, by_key, Trigger.UNBLOCK)
        skipped = self._move(decision.skipped, by_key, Trigger.SKIP)
        for key in decision.runnable:
            statuses[key] = "pending"
        for key in decision.skipped:
            statuses[key] = "skipped"
        failed = tuple(key for key, status in statuses.items() if status in _FAILED)
        return FanIn(unblocked, skipped, verdict(pipeline, statuses), failed)

    def _move(
        self, keys: Sequence[str], by_key: Mapping[str, JobModel], trigger: Trigger
    ) -> tuple[str, ...]:
        """The steps' guarded moves, up to 99 a write; the ids this call moved (those another
        writer moved or cancelled since they were read are left)."""
        moved: list[str] = []
        for first in range(0, len(keys), WRITE_BATCH):
            batch = [JobState.from_model(by_key[key]) for key in keys[first : first + WRITE_BATCH]]
            for attempt in range(_CONTENDED_TRIES):
                try:
                    done = self._store.transition_all(batch, trigger, actor=self._actor)
                except StoreContended:
                    if attempt == _CONTENDED_TRIES - 1:
                        raise
                    continue  # nothing happened: the same guarded write again
                moved.extend(done)
                break
        keys_of = {str(by_key[key].job_id): key for key in keys}
        for job_id in moved:
            log.info(
                "step moved",
                extra={"job_id": job_id, "step": keys_of[job_id], "trigger": str(trigger)},
            )
        return tuple(moved)


def _record(item: JobModel) -> StepRecord:
    record: StepRecord = json.loads(item.step or "{}")
    return record
