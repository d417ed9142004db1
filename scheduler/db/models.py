"""PynamoDB models of the ``jobs`` and ``repos`` tables.

The SAM template (``infra/template.yaml``) is the one source of the table definitions; these
models must agree with it, and ``tests/unit/db/test_template_models.py`` proves they do.

Times are integer epoch milliseconds: sortable, compact and exact in index keys.
"""

from __future__ import annotations

from typing import Any

from pynamodb.attributes import (
    BooleanAttribute,
    ListAttribute,
    MapAttribute,
    NumberAttribute,
    TTLAttribute,
    UnicodeAttribute,
)
from pynamodb.expressions.condition import Condition
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex, IncludeProjection
from pynamodb.models import Model

from scheduler.settings import Settings

# Every active job carries this value in its `deadline_shard`, so the reaper finds overdue jobs
# with one query on the sparse `active_by_deadline` index (no scan).
ACTIVE_SHARD = "active"
# Likewise every pending job carries this in its `queue_shard` (the `queued_by_age` index),
# and so does the counters item of a repository that may have queued jobs (`with_queue`).
QUEUED_SHARD = "queued"
# And every job that finished but still holds its slot (a cancelled run not yet known stopped)
# carries this in its `held_shard` (the `held_slots` index of the reconciliation).
HELD_SHARD = "held"
# And every failed job whose verdict on an automatic retry may still be owed (its finish's
# record decides it; if that record is lost, the reconciliation does) carries this in the same
# `held_shard`: one sparse index of finished jobs that still owe something.
RETRY_SHARD = "retry"
# Every pipeline run that runs its steps carries this in its `deadline_shard` (a partition the
# reaper never reads), ordered by when it began: the reconciliation makes the fan-in a lost
# step record owed from there.
RUN_SHARD = "run"


class HistoryEntry(MapAttribute[str, Any]):
    """One transition of a job: from, to, when, who and why."""

    source = UnicodeAttribute(attr_name="from", null=True)
    dest = UnicodeAttribute(attr_name="to")
    at = NumberAttribute()
    actor = UnicodeAttribute()
    attempt = NumberAttribute()
    reason = UnicodeAttribute(null=True)
    # A finish that handed its slot to the head of the queue names the job it activated.
    handed_to = UnicodeAttribute(null=True)


class ByRepoIndex(GlobalSecondaryIndex["JobModel"]):
    """Jobs of a repository, newest first (query with ``scan_index_forward=False``)."""

    class Meta:
        index_name = "by_repo"
        projection = AllProjection()

    repo = UnicodeAttribute(hash_key=True)
    received_at = NumberAttribute(range_key=True)


class QueuedIndex(GlobalSecondaryIndex["JobModel"]):
    """Sparse: only pending jobs carry `queue_repo`; ordered by priority, then age."""

    class Meta:
        index_name = "queued"
        projection = AllProjection()

    queue_repo = UnicodeAttribute(hash_key=True)
    queue_key = UnicodeAttribute(range_key=True)


class QueuedByAgeIndex(GlobalSecondaryIndex["JobModel"]):
    """Sparse: every pending job, of all repositories, by priority then age (the sweeper).

    Keys only plus the repository: the sweeper needs to know which repositories have a queue.
    """

    class Meta:
        index_name = "queued_by_age"
        projection = IncludeProjection(["queue_repo"])

    queue_shard = UnicodeAttribute(hash_key=True)
    queue_key = UnicodeAttribute(range_key=True)


class WaitingIndex(GlobalSecondaryIndex["JobModel"]):
    """Sparse: only waiting jobs (forks' pull requests awaiting approval) carry `waiting_repo`;
    oldest first. A new head of a pull request finds its older waiting jobs here (supersede)."""

    class Meta:
        index_name = "waiting"
        projection = AllProjection()

    waiting_repo = UnicodeAttribute(hash_key=True)
    received_at = NumberAttribute(range_key=True)


class ActiveByDeadlineIndex(GlobalSecondaryIndex["JobModel"]):
    """Sparse: only active jobs carry `deadline_shard`; ordered by deadline for the reaper."""

    class Meta:
        index_name = "active_by_deadline"
        projection = AllProjection()

    deadline_shard = UnicodeAttribute(hash_key=True)
    deadline_at = NumberAttribute(range_key=True)


class HeldSlotsIndex(GlobalSecondaryIndex["JobModel"]):
    """Sparse: only finished jobs that still owe something carry `held_shard`, oldest finish
    first: a slot (HELD_SHARD, a cancelled run not yet known stopped) or the verdict on an
    automatic retry (RETRY_SHARD, a failure). The reconciliation settles both from here."""

    class Meta:
        index_name = "held_slots"
        projection = AllProjection()

    held_shard = UnicodeAttribute(hash_key=True)
    finished_at = NumberAttribute(range_key=True)


class JobModel(Model):
    class Meta:
        table_name = "scheduler-jobs"
        region = "us-east-1"
        stream_view_type = "NEW_AND_OLD_IMAGES"
        billing_mode = "PAY_PER_REQUEST"
        max_pool_connections = 64

    job_id = UnicodeAttribute(hash_key=True)
    repo = UnicodeAttribute()
    event = UnicodeAttribute()
    ref = UnicodeAttribute(null=True)
    branch = UnicodeAttribute(null=True)
    sha = UnicodeAttribute()
    pr_number = NumberAttribute(null=True)
    clone_url = UnicodeAttribute(null=True)  # the payload's https clone URL
    sender = UnicodeAttribute(null=True)
    delivery_id = UnicodeAttribute(null=True)
    # A pull request from a fork (its head repository is not the base one, or was deleted):
    # someone else's code, which waits for approval by default and never gets secrets.
    fork = BooleanAttribute(null=True)

    status = UnicodeAttribute()
    attempt = NumberAttribute(default=1)
    version = NumberAttribute(default=0)
    priority = NumberAttribute(default=0)
    timeout_seconds = NumberAttribute()

    received_at = NumberAttribute()
    updated_at = NumberAttribute(null=True)
    activated_at = NumberAttribute(null=True)
    started_at = NumberAttribute(null=True)
    finished_at = NumberAttribute(null=True)

    reason = UnicodeAttribute(null=True)
    detail = UnicodeAttribute(null=True)
    exit_code = NumberAttribute(null=True)
    run_id = UnicodeAttribute(null=True)
    log_location = UnicodeAttribute(null=True)  # where the current attempt's output goes
    # A retry's backoff: the attempt's run starts this long after it is asked to start.
    start_delay_ms = NumberAttribute(null=True)
    # A cancelled job whose run may still be stopping keeps its slot until this is removed.
    slot_held = BooleanAttribute(null=True)
    # The `held_slots` index: HELD_SHARD with slot_held, RETRY_SHARD on a failure until its
    # retry (or the reconciliation's verdict that none is owed) takes it off.
    held_shard = UnicodeAttribute(null=True)
    # The trigger guard this job claimed (repos table key suffix), released if it is cancelled.
    trigger_key = UnicodeAttribute(null=True)
    # The X-Ray trace of the delivery that made the job: its later work joins that trace.
    trace_id = UnicodeAttribute(null=True)
    history = ListAttribute(of=HistoryEntry, default=list)

    # A pipeline's step is a job of its own (its id ``<run>.s<n>``), which names its run and
    # carries its definition (``scheduler.pipelines.record.StepRecord`` as JSON); the run (the
    # delivery's job) knows how many steps it made.
    run_of = UnicodeAttribute(null=True)
    step_key = UnicodeAttribute(null=True)
    step = UnicodeAttribute(null=True)
    step_count = NumberAttribute(null=True)
    # A delivery's job whose pipeline is not known yet (its repository honours the commit's
    # file): it is neither activated nor promoted until the file is read (the activation, an
    # expansion or a refusal takes this off).
    pipeline_owed = BooleanAttribute(null=True)
    # A step of a ``concurrency_group``: it runs only while no other job of its repository's
    # group holds a slot (the group's item in the repos table names the last job to take it).
    concurrency_group = UnicodeAttribute(null=True)

    queue_repo = UnicodeAttribute(null=True)
    queue_shard = UnicodeAttribute(null=True)
    queue_key = UnicodeAttribute(null=True)
    waiting_repo = UnicodeAttribute(null=True)
    deadline_shard = UnicodeAttribute(null=True)
    deadline_at = NumberAttribute(null=True)
    expires_at = TTLAttribute(null=True)

    by_repo = ByRepoIndex()
    queued = QueuedIndex()
    queued_by_age = QueuedByAgeIndex()
    waiting = WaitingIndex()
    active_by_deadline = ActiveByDeadlineIndex()
    held_slots = HeldSlotsIndex()


class WithQueueIndex(GlobalSecondaryIndex["RepoModel"]):
    """Sparse: the counters items of repositories that may have queued jobs, by name.

    The transaction that queues a job marks its repository (`queue_shard`); the sweeper clears
    the mark once the repository's pending count is 0. The sweeper visits the repositories
    with queued work from here, so its cost grows with them, never with the jobs queued.
    """

    class Meta:
        index_name = "with_queue"
        projection = IncludeProjection(["n_pending"])

    queue_shard = UnicodeAttribute(hash_key=True)
    repo = UnicodeAttribute(range_key=True)


class RepoModel(Model):
    """Per-repository slot counter, limit and counts by status.

    No stream on this table: the transition transactions write it, and a stream here would
    loop back into the processor.
    """

    class Meta:
        table_name = "scheduler-repos"
        region = "us-east-1"
        billing_mode = "PAY_PER_REQUEST"
        max_pool_connections = 64

    repo = UnicodeAttribute(hash_key=True)
    running = NumberAttribute(default=0)
    slot_limit = NumberAttribute(null=True)
    n_waiting = NumberAttribute(default=0)
    n_blocked = NumberAttribute(default=0)
    n_pending = NumberAttribute(default=0)
    n_active = NumberAttribute(default=0)
    n_passed = NumberAttribute(default=0)
    n_failed = NumberAttribute(default=0)
    n_cancelled = NumberAttribute(default=0)
    n_skipped = NumberAttribute(default=0)
    last_job_id = UnicodeAttribute(null=True)
    last_received_at = NumberAttribute(null=True)
    queue_shard = UnicodeAttribute(null=True)  # QUEUED_SHARD while it may have queued jobs
    # A concurrency group's item (``group#<repo>#<name>``): the job that took it last. The
    # group is free once that job holds no slot any more (see ``JobStore.activate``).
    holder = UnicodeAttribute(null=True)

    with_queue = WithQueueIndex()


MODELS: tuple[type[Model], ...] = (JobModel, RepoModel)


def step_id(run_id: str, index: int) -> str:
    """The job id of a pipeline run's ``index``-th step (from 1, in pipeline order)."""
    return f"{run_id}.s{index}"


GROUP_PREFIX = "group#"
"""Key prefix of concurrency groups' items in the repos table (see :func:`group_key`)."""


def group_key(repo: str, group: str) -> str:
    """The repos-table key of ``repo``'s concurrency group ``group`` (groups are per
    repository: one deploy at a time across all its branches)."""
    return f"{GROUP_PREFIX}{repo}#{group}"


def holds_slot(job: JobModel) -> bool:
    """Whether ``job`` holds one of its repository's slots: it is active, or it ended while
    its run may still go (a cancel, a timeout, until the run is known stopped). A concurrency
    group is free once the job that took it holds none (see :func:`holds_no_slot`)."""
    return job.status == "active" or bool(job.slot_held)


def holds_no_slot() -> Condition:
    """:func:`holds_slot` negated, as a condition of a write (``JobStore.activate`` takes a
    concurrency group only while its last holder's item says so)."""
    condition: Condition = JobModel.status != "active"
    condition &= JobModel.slot_held.does_not_exist()
    return condition


def count_attribute(status: str) -> str:
    """The repos-table attribute that counts jobs in ``status``."""
    return f"n_{status}"


def bind(settings: Settings) -> None:
    """Point the models at the tables, endpoint and credentials of ``settings``.

    PynamoDB keeps table names and endpoints on the model classes; binding them once per
    process (and dropping cached connections) keeps every other module free of settings.
    """
    for model, name in ((JobModel, settings.tables.jobs), (RepoModel, settings.tables.repos)):
        meta: Any = model.Meta
        meta.table_name = name
        meta.region = settings.region
        meta.host = settings.dynamodb_endpoint
        meta.aws_access_key_id = settings.access_key_id
        meta.aws_secret_access_key = settings.secret_access_key
        meta.aws_session_token = settings.session_token
        model._connection = None
