"""Stateful property test: the job store on DynamoDB Local against a pure reference model.

Hypothesis drives random sequences of creates, redeliveries, activations (with varying slot
limits), finishes, cancels, retries, stale-snapshot writes and illegal triggers from several
actors. A small in-memory :class:`Reference` predicts every call's outcome (the new
:class:`JobState`, :class:`RepositoryFull`, :class:`TransitionConflict`,
:class:`InvalidTransition` or :class:`JobExists`), and invariants compare the tables with it
after every step.

Each example names its repositories and jobs with a fresh random prefix, so examples share the
session's tables without clearing them (and without scans).
"""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import hypothesis
import pytest
from hypothesis import HealthCheck
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from scheduler.db.models import ACTIVE_SHARD, JobModel, RepoModel
from scheduler.db.store import JobState, JobStore, NewJob, Outcome
from scheduler.errors import DomainError, JobExists, RepositoryFull
from scheduler.settings import Settings
from state_machines import InvalidTransition, JobStatus, TransitionConflict, Trigger

pytestmark = pytest.mark.integration

ACTORS = ("webhook", "runner-1", "runner-2", "operator", "reaper")
REPO_LIMITS = (1, 2, 3)  # the configured slot limit of each repository of an example
MAX_JOBS = 8  # per example: keeps the per-step invariant reads bounded
FAIL_REASONS = (None, "exit status 1", "out of memory")
START_MS = 1_700_000_000_000

# The reference's own transition table, written out independently of ``state_machines.job``
# so that the oracle does not share the code under test.
REF_TABLE: dict[tuple[str, str], str] = {
    ("pending", "activate"): "active",
    ("active", "pass"): "passed",
    ("active", "fail"): "failed",
    ("active", "time_out"): "failed",
    ("pending", "cancel"): "cancelled",
    ("active", "cancel"): "cancelled",
    ("failed", "retry"): "pending",
    ("cancelled", "retry"): "pending",
}
# A pipeline's own triggers are legal by the table, but the store's condition refuses them
# for a job that is none of a pipeline's (every job here): a step's re-run (``reblock``), and
# a delivery's job whose pipeline file is owed becoming a run (``expand``) or failing for its
# file (``refuse``). Nothing is written.
PIPELINES_ONLY = frozenset(
    {
        ("passed", "reblock"),
        ("failed", "reblock"),
        ("cancelled", "reblock"),
        ("pending", "expand"),
        ("pending", "refuse"),
    }
)
STATUSES = ("pending", "active", "passed", "failed", "cancelled")
TERMINAL = frozenset({"passed", "failed", "cancelled"})

Expected = JobState | type[DomainError]


# -- the reference model (pure) ---------------------------------------------------------------


@dataclass(frozen=True)
class RefEntry:
    """One expected history entry (everything but the timestamp)."""

    source: str | None
    dest: str
    actor: str
    attempt: int
    reason: str | None


@dataclass
class RefJob:
    """What the reference knows about one job."""

    job_id: str
    repo: str
    status: str = "pending"
    version: int = 0
    attempt: int = 1
    reason: str | None = None
    activated: bool = False  # this attempt went through `active`
    slot_held: bool = False  # cancelled while active: the slot waits for the run to stop
    history: list[RefEntry] = field(default_factory=list)

    @property
    def transitions(self) -> int:
        """Successful transitions since the job was created."""
        return self.version


@dataclass
class RefRepo:
    """What the reference knows about one repository's counters."""

    running: int = 0
    limit: int | None = None  # the limit of the last successful activation
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))


class Reference:
    """A pure in-memory model of the store: predicts outcomes, then applies successes."""

    def __init__(self) -> None:
        self.jobs: dict[str, RefJob] = {}
        self.repos: dict[str, RefRepo] = {}

    def create(self, job_id: str, repo: str, actor: str) -> bool:
        """Record a new pending job; False (nothing changes) if the id is taken."""
        if job_id in self.jobs:
            return False
        self.jobs[job_id] = RefJob(
            job_id, repo, history=[RefEntry(None, "pending", actor, 1, None)]
        )
        self.repos.setdefault(repo, RefRepo()).counts["pending"] += 1
        return True

    def predict(self, held: JobState, trigger: str, slot_limit: int | None) -> Expected:
        """The outcome of ``trigger`` by an actor holding ``held``, without applying it."""
        if (held.status.value, trigger) in PIPELINES_ONLY:
            return TransitionConflict
        dest = REF_TABLE.get((held.status.value, trigger))
        if dest is None:
            return InvalidTransition
        job = self.jobs[held.job_id]
        if (job.status, job.version) != (held.status.value, held.version):
            return TransitionConflict
        if job.slot_held and trigger == "retry":
            return TransitionConflict  # a cancelled run still stopping: its slot is not free
        if dest == "active":
            assert slot_limit is not None
            if self.repos[job.repo].running >= slot_limit:
                return RepositoryFull
        attempt = job.attempt + 1 if trigger == "retry" else job.attempt
        return replace(held, status=JobStatus(dest), version=job.version + 1, attempt=attempt)

    def apply(
        self, job_id: str, trigger: str, actor: str, slot_limit: int | None, reason: str | None
    ) -> None:
        """Apply a transition that :meth:`predict` said succeeds."""
        job = self.jobs[job_id]
        repo = self.repos[job.repo]
        source, dest = job.status, REF_TABLE[(job.status, trigger)]
        if trigger == "retry":
            job.attempt += 1
        job.activated = dest == "active" or (job.activated and dest != "pending")
        if dest == "active":
            repo.running += 1
            repo.limit = slot_limit
        elif source == "active" and trigger in ("cancel", "time_out"):
            job.slot_held = True  # released once the run is stopped (release_slot)
        elif source == "active":
            repo.running -= 1
        job.reason = reason if dest in TERMINAL else None
        job.history.append(RefEntry(source, dest, actor, job.attempt, job.reason))
        repo.counts[source] -= 1
        repo.counts[dest] += 1
        job.status = dest
        job.version += 1

    def release_slot(self, job_id: str) -> bool:
        """Free a cancelled job's kept slot; False (nothing changes) if not held."""
        job = self.jobs[job_id]
        if not job.slot_held:
            return False
        job.slot_held = False
        self.repos[job.repo].running -= 1
        return True


# -- the state machine ------------------------------------------------------------------------


def _counter_clock() -> Callable[[], int]:
    """A deterministic clock: strictly increasing epoch milliseconds, one per call."""
    ticks = itertools.count(START_MS)
    return lambda: next(ticks)


def _no_sleep(_seconds: float) -> None:
    """Injected instead of ``time.sleep``: nothing in this test waits."""


class JobStoreMachine(RuleBasedStateMachine):
    """Random operations on :class:`JobStore`, checked against :class:`Reference`."""

    bound_settings: ClassVar[Settings | None] = None  # set by the ``bound_machine`` fixture

    def __init__(self) -> None:
        super().__init__()
        settings = self.bound_settings
        assert settings is not None, "run through test_store_matches_reference_model"
        self.store = JobStore.from_settings(settings, clock=_counter_clock(), sleep=_no_sleep)
        self.prefix = uuid.uuid4().hex[:10]
        self.repo_names = [f"org-{self.prefix}/svc-{i}" for i in range(len(REPO_LIMITS))]
        self.configured = dict(zip(self.repo_names, REPO_LIMITS, strict=True))
        self.ref = Reference()
        # Every JobState the store handed out, per job, oldest first: actors' snapshots.
        self.snapshots: dict[str, list[JobState]] = {}
        self.serial = itertools.count()
        self.written: set[str] = set()  # repositories written by the current step

    # -- helpers ----------------------------------------------------------------------------

    def _eligible(self, trigger: Trigger) -> list[str]:
        return sorted(
            job_id
            for job_id, job in self.ref.jobs.items()
            if (job.status, trigger.value) in REF_TABLE
        )

    def _raw(self, job_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The job item and its repository item, serialized, read consistently."""
        job = JobModel.get(job_id, consistent_read=True)
        repo = RepoModel.get(job.repo, consistent_read=True)
        return job.serialize(), repo.serialize()

    def _held(self, job_id: str, fresh: bool) -> JobState:
        """The snapshot an actor holds: its last write's result, or a fresh consistent read."""
        latest = self.snapshots[job_id][-1]
        if fresh:
            read = self.store.state(job_id)
            assert read == latest
            return read
        return latest

    def _call(
        self,
        held: JobState,
        trigger: Trigger,
        actor: str,
        slot_limit: int | None,
        reason: str | None,
    ) -> JobState:
        """One store call; activations go through :meth:`JobStore.activate`."""
        if trigger is Trigger.ACTIVATE and slot_limit is not None:
            return self.store.activate(held, slot_limit=slot_limit, actor=actor)
        outcome = Outcome(reason=reason) if reason is not None else None
        return self.store.transition(
            held, trigger, actor=actor, outcome=outcome, slot_limit=slot_limit
        )

    def _attempt(
        self,
        held: JobState,
        trigger: Trigger,
        actor: str,
        *,
        slot_limit: int | None = None,
        reason: str | None = None,
    ) -> Expected:
        """Run ``trigger`` on the store, compare with the reference, apply on success."""
        expected = self.ref.predict(held, trigger.value, slot_limit)
        if isinstance(expected, type):
            before = self._raw(held.job_id)
            with pytest.raises(expected):
                self._call(held, trigger, actor, slot_limit, reason)
            assert self._raw(held.job_id) == before, "a refused transition wrote something"
            return expected
        assert self._call(held, trigger, actor, slot_limit, reason) == expected
        effective = "timed_out" if trigger is Trigger.TIME_OUT and reason is None else reason
        self.ref.apply(held.job_id, trigger.value, actor, slot_limit, effective)
        self.written.add(held.repo)
        self.snapshots[held.job_id].append(expected)
        return expected

    def _transition_rule(
        self, data: st.DataObject, trigger: Trigger, actor: str, reason: str | None = None
    ) -> None:
        """``trigger`` on a job it is legal for, by an actor holding the latest state."""
        job_id = data.draw(st.sampled_from(self._eligible(trigger)), label="job")
        held = self._held(job_id, data.draw(st.booleans(), label="fresh"))
        self._attempt(held, trigger, actor, reason=reason)

    # -- rules ------------------------------------------------------------------------------

    # Rules draw most of their choices from ``data``: Hypothesis favours the rules with the
    # fewest arguments (it sorts rules by argument count and leans to the first), so this
    # keeps the mix balanced, with ``activate`` (slot contention) slightly ahead.

    @rule(data=st.data(), actor=st.sampled_from(ACTORS))
    def create(self, data: st.DataObject, actor: str) -> None:
        """A webhook delivery creates a pending job, or a redelivery finds its job."""
        redeliver = data.draw(st.booleans(), label="redeliver")
        if self.ref.jobs and (redeliver or len(self.ref.jobs) >= MAX_JOBS):
            self._redeliver(data, actor)
            return
        repo = self.repo_names[data.draw(st.integers(0, len(REPO_LIMITS) - 1), label="repo")]
        priority = data.draw(st.integers(0, 2), label="priority")
        job_id = f"{self.prefix}-{next(self.serial)}"
        new = NewJob(
            job_id=job_id,
            repo=repo,
            event="push",
            sha=f"{next(self.serial):040x}",
            timeout_seconds=600,
            ref="refs/heads/main",
            branch="main",
            delivery_id=job_id,
            priority=priority,
        )
        state = self.store.create(new, actor=actor)
        assert self.ref.create(job_id, repo, actor)
        assert (state.status, state.version, state.attempt) == (JobStatus.PENDING, 0, 1)
        assert (state.job_id, state.repo, state.priority) == (job_id, repo, priority)
        self.snapshots[job_id] = [state]
        self.written.add(repo)

    def _redeliver(self, data: st.DataObject, actor: str) -> None:
        """A redelivered webhook finds its job: JobExists, nothing written."""
        job_id = data.draw(st.sampled_from(sorted(self.ref.jobs)), label="job")
        job = self.ref.jobs[job_id]
        before = self._raw(job_id)
        new = NewJob(job_id=job_id, repo=job.repo, event="push", sha="0" * 40, timeout_seconds=1)
        with pytest.raises(JobExists):
            self.store.create(new, actor=actor)
        assert not self.ref.create(job_id, job.repo, actor)
        assert self._raw(job_id) == before, "a duplicate create wrote something"

    @precondition(lambda self: bool(self._eligible(Trigger.ACTIVATE)))
    @rule(data=st.data())
    def activate(self, data: st.DataObject) -> None:
        """``pending -> active`` with the repository's limit (or a changed one, 1..3)."""
        actor = data.draw(st.sampled_from(ACTORS), label="actor")
        job_id = data.draw(st.sampled_from(self._eligible(Trigger.ACTIVATE)), label="job")
        held = self._held(job_id, data.draw(st.booleans(), label="fresh"))
        limit = data.draw(st.one_of(st.none(), st.integers(1, 3)), label="limit")
        slot_limit = self.configured[held.repo] if limit is None else limit
        running_before = self.ref.repos[held.repo].running
        result = self._attempt(held, Trigger.ACTIVATE, actor, slot_limit=slot_limit)
        assert isinstance(result, JobState) or result is RepositoryFull
        assert isinstance(result, JobState) is (running_before < slot_limit)

    @precondition(lambda self: bool(self._eligible(Trigger.PASS)))
    @rule(data=st.data(), actor=st.sampled_from(ACTORS))
    def pass_(self, data: st.DataObject, actor: str) -> None:
        """A run reports success."""
        self._transition_rule(data, Trigger.PASS, actor)

    @precondition(lambda self: bool(self._eligible(Trigger.FAIL)))
    @rule(data=st.data(), actor=st.sampled_from(ACTORS))
    def fail(self, data: st.DataObject, actor: str) -> None:
        """A run reports failure, with or without a reason."""
        reason = data.draw(st.sampled_from(FAIL_REASONS), label="reason")
        self._transition_rule(data, Trigger.FAIL, actor, reason=reason)

    @precondition(lambda self: bool(self._eligible(Trigger.TIME_OUT)))
    @rule(data=st.data(), actor=st.sampled_from(ACTORS))
    def time_out(self, data: st.DataObject, actor: str) -> None:
        """The reaper fails an overdue run (reason ``timed_out``)."""
        self._transition_rule(data, Trigger.TIME_OUT, actor)

    @precondition(lambda self: bool(self._eligible(Trigger.CANCEL)))
    @rule(data=st.data(), actor=st.sampled_from(ACTORS))
    def cancel(self, data: st.DataObject, actor: str) -> None:
        """An operator cancels a pending or active job."""
        self._transition_rule(data, Trigger.CANCEL, actor)

    @precondition(lambda self: bool(self._eligible(Trigger.RETRY)))
    @rule(data=st.data(), actor=st.sampled_from(ACTORS))
    def retry(self, data: st.DataObject, actor: str) -> None:
        """An operator retries a failed job: a new attempt, pending again."""
        self._transition_rule(data, Trigger.RETRY, actor)

    @precondition(
        lambda self: any(j.status in ("cancelled", "failed") for j in self.ref.jobs.values())
    )
    @rule(data=st.data())
    def release_slot(self, data: st.DataObject) -> None:
        """The stream stopped a cancelled (or timed-out) run: its slot is freed, once; a repeat
        changes nothing."""
        cancelled = sorted(
            j for j, job in self.ref.jobs.items() if job.status in ("cancelled", "failed")
        )
        job_id = data.draw(st.sampled_from(cancelled), label="job")
        held = self.snapshots[job_id][-1]
        if self.ref.release_slot(job_id):
            self.store.release_slot(held)
        else:
            before = self._raw(job_id)
            with pytest.raises(TransitionConflict):
                self.store.release_slot(held)
            assert self._raw(job_id) == before, "a repeated release wrote something"
        self.written.add(held.repo)

    @precondition(lambda self: any(len(s) > 1 for s in self.snapshots.values()))
    @rule(data=st.data(), actor=st.sampled_from(ACTORS))
    def stale_actor(self, data: st.DataObject, actor: str) -> None:
        """An actor holding an earlier snapshot loses: TransitionConflict or InvalidTransition."""
        moved = sorted(job_id for job_id, s in self.snapshots.items() if len(s) > 1)
        job_id = data.draw(st.sampled_from(moved), label="job")
        old = data.draw(st.sampled_from(self.snapshots[job_id][:-1]), label="snapshot")
        trigger = data.draw(st.sampled_from(list(Trigger)), label="trigger")
        limit = data.draw(st.integers(1, 3), label="limit")
        reason = data.draw(st.sampled_from(FAIL_REASONS), label="reason")
        expected = self._attempt(old, trigger, actor, slot_limit=limit, reason=reason)
        assert expected in (TransitionConflict, InvalidTransition)

    @precondition(lambda self: bool(self.ref.jobs))
    @rule(data=st.data(), actor=st.sampled_from(ACTORS))
    def illegal(self, data: st.DataObject, actor: str) -> None:
        """A trigger that is illegal from the job's status: InvalidTransition, nothing written."""
        job_id = data.draw(st.sampled_from(sorted(self.ref.jobs)), label="job")
        status = self.ref.jobs[job_id].status
        illegal = [
            t for t in Trigger if (status, t.value) not in REF_TABLE | dict.fromkeys(PIPELINES_ONLY)
        ]
        trigger = data.draw(st.sampled_from(illegal), label="trigger")
        held = self._held(job_id, data.draw(st.booleans(), label="fresh"))
        expected = self._attempt(held, trigger, actor, slot_limit=2)
        assert expected is InvalidTransition

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def jobs_match_reference(self) -> None:
        """Every job item has the predicted status, version, attempt, reason and history."""
        for job_id, ref in self.ref.jobs.items():
            item = JobModel.get(job_id, consistent_read=True)
            assert (item.status, int(item.version), int(item.attempt)) == (
                ref.status,
                ref.version,
                ref.attempt,
            ), job_id
            assert len(item.history) == ref.transitions + 1, job_id
            history = [
                RefEntry(h.source, h.dest, h.actor, int(h.attempt), h.reason) for h in item.history
            ]
            assert history == ref.history, job_id
            times = [int(h.at) for h in item.history]
            assert times == sorted(set(times)), job_id
            assert times[0] == int(item.received_at), job_id
            assert item.reason == ref.reason, job_id
            assert bool(item.slot_held) is ref.slot_held, job_id
            # The sparse indexes' keys follow the status.
            pending, active = ref.status == "pending", ref.status == "active"
            assert (item.queue_repo == ref.repo) is pending, job_id
            assert (item.queue_shard == "queued") is pending, job_id
            assert (item.queue_key is not None) is pending, job_id
            assert (item.deadline_shard == ACTIVE_SHARD) is active, job_id
            assert (item.deadline_at is not None) is active, job_id
            assert (item.activated_at is not None) is ref.activated, job_id
            assert (item.finished_at is not None) is (ref.status in TERMINAL), job_id
            assert (item.expires_at is not None) is (ref.status in TERMINAL), job_id

    @invariant()
    def repos_match_reference_and_items(self) -> None:
        """Repository counters equal the reference and the job items; slots within limit."""
        for repo, ref in self.ref.repos.items():
            item = RepoModel.get(repo, consistent_read=True)
            counters = {status: int(getattr(item, f"n_{status}") or 0) for status in STATUSES}
            truth = Counter(job.status for job in JobModel.by_repo.query(repo))
            assert counters == ref.counts, repo
            assert counters == {status: truth[status] for status in STATUSES}, repo
            running = int(item.running or 0)
            held = sum(1 for j in self.ref.jobs.values() if j.repo == repo and j.slot_held)
            assert running == ref.running == counters["active"] + held, repo
            if item.slot_limit is None:
                assert ref.limit is None and running == 0, repo
            else:
                assert int(item.slot_limit) == ref.limit, repo
                assert running <= int(item.slot_limit), repo

    @invariant()
    def queued_index_matches(self) -> None:
        """The sparse ``queued`` index holds exactly the pending jobs, in queue order.

        Checked only for repositories the step wrote (refused calls are checked byte for byte),
        which keeps the per-step reads down.
        """
        for repo in sorted(self.written):
            queued = [job.job_id for job in JobModel.queued.query(repo)]
            pending = [
                j for j in self.ref.jobs.values() if j.repo == repo and j.status == "pending"
            ]
            firsts = [self.snapshots[job.job_id][0] for job in pending]
            order = sorted(firsts, key=lambda first: (first.priority, first.received_at))
            assert queued == [j.job_id for j in order], repo
        self.written.clear()


# -- the pytest entry point -------------------------------------------------------------------


@pytest.fixture
def bound_machine(settings: Settings) -> Iterator[type[JobStoreMachine]]:
    """The machine class bound to the session's settings (models are bound by ``settings``)."""
    JobStoreMachine.bound_settings = settings
    try:
        yield JobStoreMachine
    finally:
        JobStoreMachine.bound_settings = None


# A pass takes well under a minute; a failure can spend Hypothesis's five-minute shrink budget
# (every example talks to DynamoDB Local), so allow more than the suite's 300 s default.
@pytest.mark.timeout(600)
def test_store_matches_reference_model(bound_machine: type[JobStoreMachine]) -> None:
    """Random operation sequences leave the tables exactly as the reference predicts."""
    run_state_machine_as_test(
        bound_machine,
        settings=hypothesis.settings(
            max_examples=40,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
