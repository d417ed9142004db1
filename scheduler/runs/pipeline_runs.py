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

- **Re-run** (:meth:`PipelineRuns.rerun`, an operator's): steps and everything downstream of
  them go back to ``blocked`` (``reblock``: a new attempt for a step that ran), dependents
  first, each with its guarded write; then one guarded write of the run itself, after them:
  an ended run is re-run (``rerun``: active again, its fan-in decides the reset steps), a
  running one has its version moved. A fan-in ends its run conditioned on the version it read
  *before* reading the steps, so no fan-in that saw the reset steps still ended can end the
  run afterwards. Racing re-runs reset each step once (the loser's write is refused); one cut
  short (steps blocked, the run still failed) is finished by the next, which counts blocked
  steps of an ended run among those to run again.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from scheduler.config import RetryPolicy
from scheduler.db.models import JobModel, step_id
from scheduler.db.store import WRITE_BATCH, JobState, JobStore, NewJob, StoreContended
from scheduler.errors import RerunRefused
from scheduler.pipelines import (
    ENDED_STATUSES,
    Pipeline,
    RunFacts,
    StepRecord,
    StepStatus,
    Verdict,
    decide,
    downstream,
    pipeline_from_records,
    step_from_record,
    step_record,
    verdict,
)
from state_machines import GuardRefused, JobStatus, TransitionConflict, Trigger

__all__ = [
    "FanIn",
    "PipelineRuns",
    "Rerun",
    "facts_of",
    "status_label",
    "step_id",
    "step_retry",
    "step_status",
]

log = logging.getLogger(__name__)

ACTOR = "pipeline"
_TAG_PREFIX = "refs/tags/"
_CONTENDED_TRIES = 5
_HOLD_TRIES = 32
_FAILED = ("failed", "cancelled")
_BATCHED = (Trigger.UNBLOCK, Trigger.SKIP)

FAN_IN_ATTRIBUTES = (
    # What a fan-in reads of each step: its definition, its status as its dependents see it,
    # and what its guarded move needs (JobState). Not its history, the bulk of an item, which
    # grows with every transition: the 50 steps of a run are read at every step's end.
    "job_id",
    "repo",
    "status",
    "version",
    "attempt",
    "timeout_seconds",
    "received_at",
    "priority",
    "start_delay_ms",
    "step_count",
    "held_shard",
    "step_key",
    "step",
)  # a fan-in's: neither a slot nor an attempt


def step_retry(job: JobModel) -> RetryPolicy | None:
    """A pipeline step's own retry policy (None: not a step, or none of its own)."""
    return step_from_record(_record(job)).retry if job.step is not None else None


FORK_GROUP_PREFIX = "fork#"
"""A fork's pull request's steps take their concurrency groups under this prefix: a group
name can hold no ``#``, so no file of a fork can take (and hold for its timeout) a group the
repository's own runs use, such as its deploy."""


def group_of(name: str | None, *, fork: bool) -> str | None:
    """The concurrency group a step of ``name`` takes (a fork's pull request: its own)."""
    return FORK_GROUP_PREFIX + name if name is not None and fork else name


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


def status_label(step: JobModel) -> str:
    """A step's status as an operator is told it: an end whose stop or automatic retry is
    still owed says so (its dependents see it running)."""
    if JobStatus(step.status).is_terminal and step.held_shard is not None:
        return f"{step.status} (its stop or automatic retry still owed)"
    return str(step.status)


@dataclass(frozen=True, slots=True)
class FanIn:
    """What one fan-in did: the steps it moved, and the run's verdict after it."""

    unblocked: tuple[str, ...]
    skipped: tuple[str, ...]
    verdict: Verdict
    failed: tuple[str, ...] = ()  # the keys of the steps that failed or were cancelled


@dataclass(frozen=True, slots=True)
class Rerun:
    """What a re-run did: the run before and after it, the steps that run again (in pipeline
    order) and those this call moved back to blocked (a racing re-run may have moved others)."""

    job_id: str  # what was asked for: the run, or one of its steps
    run_id: str
    repo: str
    previous_status: str  # the run's
    status: str
    attempt: int  # the run's, after
    steps: tuple[str, ...]  # keys
    reset: tuple[str, ...]  # step ids

    def to_dict(self) -> dict[str, object]:
        return {
            "job_id": self.job_id,
            "run_id": self.run_id,
            "repo": self.repo,
            "previous_status": self.previous_status,
            "status": self.status,
            "attempt": self.attempt,
            "steps": list(self.steps),
            "reset": list(self.reset),
        }


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
                concurrency_group=group_of(step.concurrency_group, fork=bool(run.fork)),
                step=json.dumps(step_record(step), separators=(",", ":")),
            )
            for index, step in enumerate(pipeline.steps, 1)
        ]
        # Up to 99 steps a write; those an earlier fan-out of this run made are left.
        return self._store.create_all(news, actor=self._actor)

    def steps(
        self, run_id: str, count: int, attributes: Sequence[str] | None = None
    ) -> list[JobModel]:
        """The run's step items, read consistently, in pipeline order (missing ones left out:
        a fan-out still under way); with ``attributes``, only those of each item."""
        ids = [step_id(run_id, index) for index in range(1, count + 1)]
        wanted = list(attributes) if attributes is not None else None
        read = JobModel.batch_get(ids, consistent_read=True, attributes_to_get=wanted)
        found = {item.job_id: item for item in read}
        return [found[job_id] for job_id in ids if job_id in found]

    def fan_in(self, run: JobModel) -> FanIn:
        """Unblock or skip every blocked step whose needs have all ended; the run's verdict.

        A run whose fan-out is not finished yet (fewer items than its count) decides nothing
        and is ``running``: the fan-out's replay makes the rest, and its steps' ends call for
        the fan-in again.
        """
        count = int(run.step_count or 0)
        items = self.steps(run.job_id, count, FAN_IN_ATTRIBUTES)
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

    def rerun(self, run: JobModel, roots: Collection[str], *, asked: str | None = None) -> Rerun:
        """Run the steps ``roots`` (keys) and every step downstream of them again.

        Refused (:class:`RerunRefused`, nothing written) while one of those steps has not
        ended (it is queued or runs, or its stop or retry verdict is still owed). A step
        already blocked (a re-run cut short, or one waiting for a need) is left as it is.
        """
        count = int(run.step_count or 0)
        items = self.steps(run.job_id, count)
        if count == 0 or len(items) < count:
            raise RerunRefused(run.job_id, "its steps are still being made: try again")
        pipeline = pipeline_from_records(_record(item) for item in items)
        by_key = {str(item.step_key): item for item in items}
        keys = downstream(pipeline, roots)
        for key in keys:
            item = by_key[key]
            status = step_status(item)
            if status not in ENDED_STATUSES and status != "blocked":
                raise RerunRefused(
                    run.job_id,
                    f"step {key} ({item.job_id}) is {status_label(item)}: wait for it to end",
                )
        # Dependents first: nothing reset is queued by a fan-in before what follows it waits.
        ended = [key for key in reversed(keys) if JobStatus(by_key[key].status).is_terminal]
        reset = self._move(ended, by_key, Trigger.REBLOCK)
        after = self._hold_open(JobState.from_model(run), wrote=bool(reset))
        log.info(
            "pipeline re-run",
            extra={"job_id": run.job_id, "steps": len(keys), "reset": len(reset)},
        )
        return Rerun(
            job_id=asked or run.job_id,
            run_id=run.job_id,
            repo=run.repo,
            previous_status=str(run.status),
            status=after.status.value,
            attempt=after.attempt,
            steps=keys,
            reset=tuple(reversed(reset)),
        )

    def _hold_open(self, run: JobState, *, wrote: bool) -> JobState:
        """The run's one guarded write after its steps were reset: re-run if it ended, its
        version moved if it runs; read again and redone if it moved meanwhile (a fan-in
        ended it on what it read before the reset, or a racing re-run wrote it). A run
        cancelled meanwhile stays so: its cancel's settle cancels the reset steps. A call
        that reset no step (a racing re-run reset them) has nothing to protect once the run
        runs: it writes nothing more."""
        # Each racing re-run that reset a step writes the run once: a loser tries again at
        # most once per other writer.
        for _ in range(_HOLD_TRIES):
            if run.status is JobStatus.ACTIVE and not wrote:
                return run
            try:
                if run.status is JobStatus.ACTIVE:
                    return self._store.touch_run(run, actor=self._actor)
                return self._store.transition(run, Trigger.RERUN, actor=self._actor)
            except TransitionConflict:
                run = self._store.state(run.job_id)
                if run.status is JobStatus.CANCELLED:
                    return run
        raise StoreContended(f"re-run of run {run.job_id}: it kept changing; run it again")

    def _move(
        self, keys: Sequence[str], by_key: Mapping[str, JobModel], trigger: Trigger
    ) -> tuple[str, ...]:
        """The steps' guarded moves; the ids this call moved (those another writer moved or
        cancelled since they were read are left). A fan-in's moves (no slot, no attempt) go
        up to 99 a write; a re-run's one by one (each its own conditions and attempt)."""
        if trigger in _BATCHED:
            moved = self._move_batched([JobState.from_model(by_key[k]) for k in keys], trigger)
        else:
            moved = [
                item.job_id
                for item in (by_key[key] for key in keys)
                if self._move_one(JobState.from_model(item), trigger)
            ]
        keys_of = {str(by_key[key].job_id): key for key in keys}
        for job_id in moved:
            log.info(
                "step moved",
                extra={"job_id": job_id, "step": keys_of[job_id], "trigger": str(trigger)},
            )
        return tuple(moved)

    def _move_batched(self, jobs: Sequence[JobState], trigger: Trigger) -> list[str]:
        moved: list[str] = []
        for first in range(0, len(jobs), WRITE_BATCH):
            batch = jobs[first : first + WRITE_BATCH]
            moved += _contended(functools.partial(self._moved_together, batch, trigger))
        return moved

    def _moved_together(self, batch: Sequence[JobState], trigger: Trigger) -> list[str]:
        return self._store.transition_all(batch, trigger, actor=self._actor)

    def _move_one(self, job: JobState, trigger: Trigger) -> bool:
        try:
            _contended(lambda: self._store.transition(job, trigger, actor=self._actor))
        except GuardRefused:
            return False  # moved by another writer (or cancelled) since it was read
        return True


_T = TypeVar("_T")


def _contended(write: Callable[[], _T]) -> _T:
    """``write`` again while the store reports contention (nothing was written then)."""
    for _ in range(_CONTENDED_TRIES - 1):
        try:
            return write()
        except StoreContended:
            continue
    return write()


def _record(item: JobModel) -> StepRecord:
    record: StepRecord = json.loads(item.step or "{}")
    return record
