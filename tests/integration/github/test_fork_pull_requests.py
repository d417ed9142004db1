"""Pull requests from forks against DynamoDB Local: wait for approval, run, or skip.

Deliveries go through the real webhook service (GitHub's example payloads, their head moved to
another repository); stream records are built from the items as the stream would carry them and
handed to the real dispatcher; approvals are the operator's use case (the CLI's and the
dashboard's). A run "starts" by claiming its attempt's idempotency key, as a runner does.
"""

from __future__ import annotations

import copy
import itertools
import json
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from stream_records import image, record

from scheduler.config import RepositoryConfig, parse_config
from scheduler.db.models import JobModel, RepoModel
from scheduler.db.queries import Queries
from scheduler.db.store import JobState, JobStore
from scheduler.errors import JobNotFound, RunAlreadyClaimed
from scheduler.github.delivery import WebhookService
from scheduler.github.statuses import status_for
from scheduler.pipelines import MAX_FILE_BYTES, PIPELINE_FILE, CommitRef
from scheduler.runs.executor import RunRequest, Source
from scheduler.runs.operations import Operations
from scheduler.runs.pipeline_driver import PipelineDriver
from scheduler.stream.dispatcher import Dispatcher
from state_machines import GuardRefused, InvalidTransition, JobStatus, TransitionConflict

pytestmark = pytest.mark.integration

EVENTS = Path(__file__).resolve().parents[2] / "events"
REPO = "codertocat/hello-world"  # the canonical form of the payloads' Codertocat/Hello-World
SOURCE = Source(checkout=False, sandbox=False, secrets=("NPM_TOKEN",))


def config(mode: str, *, supersede: str = "off") -> RepositoryConfig:
    return parse_config(
        f"""
        [defaults]
        branches = ["*"]
        supersede = "{supersede}"
        [repos."{REPO}"]
        fork_pull_requests = "{mode}"
        """,
        source="test-config",
    )


def pull_request(
    action: str = "opened",
    *,
    head_repo: str | None = "mallory/Hello-World",
    sha: str = "a",
    number: int = 2,
) -> bytes:
    """GitHub's example delivery of ``action`` for pull request ``number``, its head in
    ``head_repo`` at ``sha * 40``."""
    body: dict[str, Any] = json.loads((EVENTS / f"pull_request.{action}.json").read_text())
    body["number"] = body["pull_request"]["number"] = number
    head = body["pull_request"]["head"]
    head["sha"] = sha * 40
    if head_repo is None:
        head["repo"] = None  # the fork was deleted
    else:
        head["repo"] = {**copy.deepcopy(head["repo"]), "full_name": head_repo}
    return json.dumps(body).encode()


class NoPipelineFile:
    """GitHub's contents API as the engine's port sees it: these commits have no pipeline
    file (the one-step pipeline); each read is recorded."""

    def __init__(self) -> None:
        self.reads: list[CommitRef] = []

    def read(self, commit: CommitRef, path: str, max_bytes: int) -> bytes | None:
        assert (path, max_bytes) == (PIPELINE_FILE, MAX_FILE_BYTES)
        self.reads.append(commit)
        return None


class Stack:
    """The webhook, the dispatcher and the operator over one store, with a run counter."""

    def __init__(self, store: JobStore, repo_config: RepositoryConfig) -> None:
        self.store = store
        ticks = itertools.count()
        self.webhook = WebhookService(
            store,
            repo_config,
            secret=None,
            clock=lambda: 1_700_000_000_000 + 1000 * next(ticks),
        )
        self.started: list[RunRequest] = []
        self.files = NoPipelineFile()
        self.dispatcher = Dispatcher(
            store,
            slot_limit_for=lambda _repo: 2,
            start_run=self.start_run,
            supersede_for=lambda repo: repo_config.policy(repo).supersede,
            pipelines=PipelineDriver(store, lambda: self.files, repo_config.policy),
        )
        self.operations = Operations(store, Queries())
        self._deliveries = itertools.count(1)

    def deliver(self, body: bytes) -> tuple[int, dict[str, Any]]:
        delivery = f"7a1e{next(self._deliveries):04d}-0000-0000-0000-000000000000"
        headers = {
            "x-github-event": "pull_request",
            "x-github-delivery": delivery,
            "content-type": "application/json",
        }
        answer = self.webhook.receive(headers, body)
        return answer.status, answer.body

    def start_run(self, job: JobModel, _delay_ms: int) -> None:
        """A runner's start: the attempt's key is claimed first, so it starts at most once."""
        request = RunRequest.from_job(job, ["make", "test"], source=SOURCE)
        try:
            self.store.claim_run(JobState.from_model(job), request.idempotency_key)
        except RunAlreadyClaimed:
            return
        self.started.append(request)

    def dispatch(self, job_id: str, old: dict[str, Any] | None = None) -> list[str]:
        return self.dispatcher.handle_record(record(job_id, old))

    def created(self, body: bytes) -> str:
        """Deliver ``body``, expect a new job, and dispatch its INSERT record."""
        status, answer = self.deliver(body)
        assert status == 202, answer
        job_id = str(answer["job_id"])
        self.dispatch(job_id)
        return job_id


def item(job_id: str) -> JobModel:
    return JobModel.get(job_id, consistent_read=True)


def assert_counters_match_items(repo: str = REPO) -> None:
    """The repository's counters are exactly its items' statuses, and its slots its runs."""
    jobs = list(JobModel.by_repo.query(repo))
    counters = RepoModel.get(repo, consistent_read=True)
    truth = Counter(str(job.status) for job in jobs)
    counted = {
        status.value: int(getattr(counters, f"n_{status.value}") or 0) for status in JobStatus
    }
    assert counted == {status.value: truth[status.value] for status in JobStatus}
    holding = sum(1 for job in jobs if job.status == "active" or job.slot_held)
    assert int(counters.running or 0) == holding


@pytest.fixture
def approve_stack(ticking_store: JobStore) -> Stack:
    return Stack(ticking_store, config("approve"))


def test_a_fork_pull_request_waits_and_runs_nothing_until_approved(approve_stack: Stack) -> None:
    stack = approve_stack
    status, answer = stack.deliver(pull_request())
    assert status == 202 and "waiting for approval" in answer["reason"]
    job_id = answer["job_id"]
    waiting = item(job_id)
    assert (waiting.status, waiting.fork, waiting.attempt) == ("waiting", True, 1)
    assert [(h.source, h.dest, h.actor) for h in waiting.history] == [(None, "waiting", "webhook")]
    # Not queued: none of the queue's sparse indexes holds it, only the waiting one.
    assert (waiting.queue_repo, waiting.queue_shard, waiting.queue_key) == (None, None, None)
    assert waiting.waiting_repo == REPO

    # Its INSERT record only looks for older waiting heads of the pull request: no activation.
    assert stack.dispatch(job_id) == ["superseded:0"]
    assert stack.dispatcher.promote(REPO) == 0  # a promotion never takes a waiting job
    assert item(job_id).status == "waiting" and stack.started == []
    counters = RepoModel.get(REPO, consistent_read=True)
    assert (counters.n_waiting, counters.n_pending, counters.running) == (1, 0, 0)
    assert_counters_match_items()
    # GitHub is told why nothing runs.
    assert status_for(None, JobStatus.WAITING, attempt=1, reason=None) == (
        "pending",
        "waiting for approval",
    )

    before = image(job_id)
    changed = stack.operations.approve(job_id)
    assert (changed.previous_status, changed.status, changed.attempt) == ("waiting", "pending", 1)
    approved = item(job_id)
    assert approved.waiting_repo is None and approved.queue_repo == REPO
    assert approved.history[-1].actor == "operator"
    # Approval is the ordinary queueing: its record activates the job, whose record starts it.
    # Its commit's pipeline file is read then, never before an operator let it in.
    pending = image(job_id)
    assert stack.files.reads == []
    assert stack.dispatch(job_id, before) == ["activated"]
    assert [commit.sha for commit in stack.files.reads] == [approved.sha]
    assert stack.dispatch(job_id, pending) == ["started"]
    assert [request.job_id for request in stack.started] == [job_id]
    # Approved or not, a fork's run never gets the repository's secrets.
    assert stack.started[0].fork is True and stack.started[0].secrets == ()
    assert_counters_match_items()

    # Once approved, there is nothing more to approve.
    with pytest.raises(InvalidTransition):
        stack.operations.approve(job_id)
    with pytest.raises(JobNotFound):
        stack.operations.approve("gh-no-such-job")


def test_two_approvals_at_once_one_wins_and_the_job_runs_once(approve_stack: Stack) -> None:
    stack = approve_stack
    job_id = stack.created(pull_request())
    before = image(job_id)
    barrier = threading.Barrier(2)
    results: list[object] = []

    def approve() -> None:
        barrier.wait()
        try:
            results.append(stack.operations.approve(job_id))
        except (GuardRefused, InvalidTransition) as exc:
            results.append(exc)

    threads = [threading.Thread(target=approve) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    winners = [r for r in results if not isinstance(r, Exception)]
    losers = [r for r in results if isinstance(r, Exception)]
    assert len(winners) == 1 and len(losers) == 1, results
    # The loser read the job before or after the winner wrote: either way a typed refusal.
    assert isinstance(losers[0], TransitionConflict | InvalidTransition)
    assert losers[0].exit_code == 1 and losers[0].http_status == 409

    approved = item(job_id)
    assert [(h.source, h.dest) for h in approved.history] == [
        (None, "waiting"),
        ("waiting", "pending"),
    ]
    # Records delivered twice change nothing: one activation, one run.
    approval = record(job_id, before)
    pending = image(job_id)
    assert stack.dispatcher.handle_record(approval) == ["activated"]
    assert stack.dispatcher.handle_record(approval) == ["already_done"]
    activation = record(job_id, pending)
    assert stack.dispatcher.handle_record(activation) == ["started"]
    assert stack.dispatcher.handle_record(activation) == ["started"]  # its claim refuses it
    assert [request.job_id for request in stack.started] == [job_id]
    assert_counters_match_items()


def test_a_waiting_job_can_be_cancelled_and_then_never_runs(approve_stack: Stack) -> None:
    stack = approve_stack
    job_id = stack.created(pull_request())
    before = image(job_id)
    changed = stack.operations.cancel(job_id)
    assert (changed.previous_status, changed.status) == ("waiting", "cancelled")
    cancelled = item(job_id)
    assert cancelled.reason == "cancelled_by_operator" and cancelled.waiting_repo is None
    # Its record frees the trigger (a new delivery of the head may build it); no slot to free.
    assert stack.dispatch(job_id, before) == ["trigger_released"]
    with pytest.raises(InvalidTransition):
        stack.operations.approve(job_id)
    assert stack.started == []
    counters = RepoModel.get(REPO, consistent_read=True)
    assert (counters.n_waiting, counters.n_cancelled, counters.running) == (0, 1, 0)
    assert_counters_match_items()


@pytest.mark.parametrize("supersede", ["off", "queued"])
def test_a_new_push_to_the_pull_request_supersedes_its_waiting_job(
    ticking_store: JobStore, supersede: str
) -> None:
    stack = Stack(ticking_store, config("approve", supersede=supersede))
    old = stack.created(pull_request("opened", sha="a"))
    new = stack.created(pull_request("synchronize", sha="b"))
    # Whatever the repository's supersede mode: an older head waiting for approval is stale.
    superseded = item(old)
    assert (superseded.status, superseded.reason) == ("cancelled", "superseded")
    assert superseded.detail == f"superseded by job {new}"
    assert (superseded.history[-1].source, superseded.history[-1].actor) == (
        "waiting",
        f"supersede:{new}",
    )
    assert item(new).status == "waiting"
    with pytest.raises(InvalidTransition):
        stack.operations.approve(old)
    assert stack.started == []
    assert_counters_match_items()


def test_a_waiting_jobs_insert_record_replayed_after_its_supersede_changes_nothing(
    approve_stack: Stack,
) -> None:
    stack = approve_stack
    _status, first = stack.deliver(pull_request("opened", sha="a"))
    insert = record(first["job_id"])  # its INSERT record, delivered late (a retried batch)
    newer = stack.created(pull_request("synchronize", sha="b"))
    assert item(first["job_id"]).status == "cancelled"
    # The late record finds its job cancelled already and the newer one left alone.
    assert stack.dispatcher.handle_record(insert) == ["superseded:0"]
    assert (item(first["job_id"]).status, item(newer).status) == ("cancelled", "waiting")
    assert len(item(first["job_id"]).history) == 2
    assert_counters_match_items()


def test_with_run_a_fork_pull_request_is_built_like_any_other_but_without_secrets(
    ticking_store: JobStore,
) -> None:
    stack = Stack(ticking_store, config("run"))
    status, answer = stack.deliver(pull_request(head_repo=None))  # a deleted fork
    assert status == 202 and set(answer) == {"job_id"}
    job_id = answer["job_id"]
    assert (item(job_id).status, item(job_id).fork) == ("pending", True)
    pending = image(job_id)
    assert stack.dispatch(job_id) == ["superseded:0", "activated"]
    assert stack.dispatch(job_id, pending) == ["started"]
    assert [(r.job_id, r.fork, r.secrets) for r in stack.started] == [(job_id, True, ())]
    assert_counters_match_items()


def test_with_skip_a_fork_pull_request_makes_no_job_and_its_own_ones_still_build(
    ticking_store: JobStore,
) -> None:
    stack = Stack(ticking_store, config("skip"))
    status, answer = stack.deliver(pull_request())
    assert status == 202 and "job_id" not in answer
    assert "from a fork" in answer["reason"] and "skip" in answer["reason"]
    with pytest.raises(RepoModel.DoesNotExist):
        RepoModel.get(REPO, consistent_read=True)  # nothing was written, not even counters

    # A pull request from a branch of the repository itself is no fork: built, with secrets.
    _status, answer = stack.deliver(pull_request(head_repo="Codertocat/Hello-World", sha="c"))
    own = answer["job_id"]
    pending = image(own)
    assert stack.dispatch(own) == ["superseded:0", "activated"]
    assert (item(own).status, item(own).fork) == ("active", False)
    stack.dispatch(own, pending)
    assert [(r.fork, r.secrets) for r in stack.started] == [(False, ("NPM_TOKEN",))]
    assert_counters_match_items()


def test_counters_equal_the_items_after_every_fork_path(ticking_store: JobStore) -> None:
    stack = Stack(ticking_store, config("approve"))
    approved = stack.created(pull_request("opened", sha="1", number=11))
    before = image(approved)
    stack.operations.approve(approved)
    pending = image(approved)
    assert stack.dispatch(approved, before) == ["activated"]
    assert stack.dispatch(approved, pending) == ["started"]
    cancelled = stack.created(pull_request("opened", sha="2", number=12))
    stack.operations.cancel(cancelled)
    superseded = stack.created(pull_request("opened", sha="3", number=13))
    waiting = stack.created(pull_request("synchronize", sha="4", number=13))
    own = stack.created(pull_request(head_repo="Codertocat/Hello-World", sha="5", number=14))
    statuses = {job.job_id: str(job.status) for job in JobModel.by_repo.query(REPO)}
    assert statuses == {
        approved: "active",
        cancelled: "cancelled",
        superseded: "cancelled",
        waiting: "waiting",
        own: "active",
    }
    assert [r.job_id for r in stack.started] == [approved]
    assert_counters_match_items()


def test_closing_a_pull_request_withdraws_its_waiting_jobs_only(approve_stack: Stack) -> None:
    stack = approve_stack
    waiting = stack.created(pull_request(sha="a", number=2))
    approved = stack.created(pull_request(sha="b", number=3))
    stack.operations.approve(approved)
    other = stack.created(pull_request(sha="c", number=4))
    for _ in range(2):  # GitHub may deliver the close twice: the second changes nothing
        for number in (2, 3):
            status, answer = stack.deliver(pull_request("closed", number=number))
            assert status == 202 and "makes no job" in answer["reason"]
    withdrawn = item(waiting)
    assert (withdrawn.status, withdrawn.reason) == ("cancelled", "cancelled")
    assert "closed unapproved" in (withdrawn.detail or "")
    assert [h.dest for h in withdrawn.history] == ["waiting", "cancelled"]
    # An approved job is the operator's decision, and another pull request's job is not this one.
    assert item(approved).status == "pending" and item(other).status == "waiting"
    assert_counters_match_items()
