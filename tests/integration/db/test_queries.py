"""The read side and the operator use cases against DynamoDB Local."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from scheduler.db.models import JobModel, RepoModel
from scheduler.db.queries import JobPage, Queries
from scheduler.db.store import JobStore
from scheduler.errors import InvalidArgument, InvalidCursor, JobNotFound, RepoNotFound
from scheduler.runs.operations import BulkOutcome, Operations
from state_machines import InvalidTransition, JobStatus, TransitionConflict

REPO = "octo-org/api"
MakeJob = Callable[..., Any]  # the `make_job` fixture of conftest.py
OTHER = "octo-org/web"


def ids(page: JobPage) -> list[str]:
    return [job.job_id for job in page.jobs]


def all_pages(queries: Queries, repo: str, **kwargs: Any) -> Iterator[JobPage]:
    cursor = None
    while True:
        page = queries.jobs(repo, cursor=cursor, **kwargs)
        yield page
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


@pytest.fixture
def queries() -> Queries:
    return Queries(b"test-key")


def test_jobs_come_newest_first_and_pages_cover_each_job_once(
    make_job: MakeJob, ticking_store: JobStore, queries: Queries
) -> None:
    for n in range(7):
        make_job(f"j{n}")
    make_job("elsewhere", repo=OTHER)
    pages = list(all_pages(queries, REPO, limit=3))
    assert [ids(page) for page in pages] == [["j6", "j5", "j4"], ["j3", "j2", "j1"], ["j0"]]
    # Exactly full last page: no cursor to an empty page.
    assert [len(p.jobs) for p in all_pages(queries, REPO, limit=7)] == [7]
    assert queries.jobs("nobody/none").to_dict() == {
        "repo": "nobody/none",
        "jobs": [],
        "next_cursor": None,
    }


def test_filters_by_status_branch_and_event(
    make_job: MakeJob, ticking_store: JobStore, queries: Queries
) -> None:
    make_job("push-main-passed", JobStatus.PASSED)
    make_job("push-dev-failed", JobStatus.FAILED, branch="dev")
    make_job("pr-dev-failed", JobStatus.FAILED, branch="dev", event="pull_request")
    make_job("push-main-pending")
    assert ids(queries.jobs(REPO, status="failed")) == ["pr-dev-failed", "push-dev-failed"]
    assert ids(queries.jobs(REPO, branch="main")) == ["push-main-pending", "push-main-passed"]
    assert ids(queries.jobs(REPO, event="pull_request")) == ["pr-dev-failed"]
    assert ids(queries.jobs(REPO, status="failed", branch="dev", event="push")) == [
        "push-dev-failed"
    ]
    # Empty strings (an HTTP query string's "status=") mean "no filter".
    assert len(queries.jobs(REPO, status="", branch="", event="", limit="").jobs) == 4
    failed = queries.jobs(REPO, status="failed", limit=1)
    assert ids(failed) == ["pr-dev-failed"] and failed.next_cursor
    assert ids(queries.jobs(REPO, status="failed", limit=1, cursor=failed.next_cursor)) == [
        "push-dev-failed"
    ]


def test_a_filtered_page_reads_a_bounded_amount_and_resumes(
    make_job: MakeJob, ticking_store: JobStore
) -> None:
    make_job("old-failed", JobStatus.FAILED)
    for n in range(9):
        make_job(f"p{n}")
    queries = Queries(b"test-key", max_evaluated=4, filtered_page_size=2)
    pages = list(all_pages(queries, REPO, status="failed", limit=1))
    # 10 items, at most 4 read per call: short pages with cursors, then the match. The
    # read that finds it ends exactly on DynamoDB's Limit, which cannot tell whether more
    # follow, so one last (empty) page closes the listing.
    assert [ids(page) for page in pages] == [[], [], ["old-failed"], []]


def test_cursors_are_bound_to_their_query(
    make_job: MakeJob, ticking_store: JobStore, queries: Queries
) -> None:
    for n in range(3):
        make_job(f"j{n}")
        make_job(f"o{n}", repo=OTHER)
    cursor = queries.jobs(REPO, limit=1).next_cursor
    assert cursor is not None
    with pytest.raises(InvalidCursor, match="another repository"):
        queries.jobs(OTHER, limit=1, cursor=cursor)
    with pytest.raises(InvalidCursor, match="other filters"):
        queries.jobs(REPO, limit=1, status="pending", cursor=cursor)
    with pytest.raises(InvalidCursor, match="altered"):
        Queries(b"another-deployment").jobs(REPO, limit=1, cursor=cursor)
    assert InvalidCursor.http_status == 400 and InvalidCursor.exit_code == 2


@pytest.mark.parametrize(
    "arguments",
    [
        {"repo": "not-a-repo"},
        {"repo": REPO, "limit": 0},
        {"repo": REPO, "limit": "many"},
        {"repo": REPO, "limit": 101},
        {"repo": REPO, "status": "exploded"},
        {"repo": REPO, "event": "Push; DROP"},
    ],
)
def test_bad_arguments_are_refused_before_any_read(
    queries: Queries, arguments: dict[str, Any]
) -> None:
    with pytest.raises(InvalidArgument):
        queries.jobs(**arguments)


def test_one_job_with_its_history(
    make_job: MakeJob, ticking_store: JobStore, queries: Queries
) -> None:
    job = make_job("j1", JobStatus.FAILED)
    Operations(ticking_store, queries).retry(job.job_id)
    detail = queries.job("j1")
    assert (detail.status, detail.attempt, detail.version) == ("pending", 2, 3)
    assert [(h.source, h.dest, h.attempt, h.actor) for h in detail.history] == [
        (None, "pending", 1, "webhook"),
        ("pending", "active", 1, "test"),
        ("active", "failed", 1, "test"),
        ("failed", "pending", 2, "operator"),
    ]
    data = detail.to_dict()
    assert data["history"][-1] == {
        "from": "failed",
        "to": "pending",
        "at": detail.history[-1].at,
        "actor": "operator",
        "attempt": 2,
        "reason": None,
    }
    with pytest.raises(JobNotFound):
        queries.job("missing")


def test_stats_come_from_the_counters(
    make_job: MakeJob, ticking_store: JobStore, queries: Queries
) -> None:
    make_job("a", JobStatus.PASSED)
    make_job("b", JobStatus.FAILED)
    make_job("c", JobStatus.ACTIVE)
    make_job("d")
    stats = queries.stats(REPO).to_dict()
    assert stats["counts"] == {
        "waiting": 0,
        "blocked": 0,
        "pending": 1,
        "active": 1,
        "passed": 1,
        "failed": 1,
        "cancelled": 0,
        "skipped": 0,
    }
    assert (stats["total"], stats["running"], stats["slot_limit"]) == (4, 1, 100)
    assert stats["last_job"]["job_id"] == "d" and stats["last_job"]["status"] == "pending"
    with pytest.raises(RepoNotFound):
        queries.stats("nobody/none")


def test_the_repository_version_moves_with_jobs_not_with_the_sweepers_queue_mark(
    make_job: MakeJob, ticking_store: JobStore, queries: Queries
) -> None:
    """The dashboard's ETag: a job's creation and status change move it; the sweeper clearing
    a queue mark that no job needs any more does not (a page would render again for nothing)."""
    make_job("a")
    queued = queries.repository_version(REPO)
    ticking_store.transition(ticking_store.state("a"), "cancel", actor="test")
    cancelled = queries.repository_version(REPO)
    assert cancelled != queued
    assert RepoModel.get(REPO).queue_shard is not None  # the mark outlived its job
    assert ticking_store.clear_queue_mark(REPO)
    assert RepoModel.get(REPO).queue_shard is None
    assert queries.repository_version(REPO) == cancelled


def _recorder(operations: list[str]) -> Callable[..., None]:
    def record(model: Any, **_: Any) -> None:
        operations.append(model.name)

    return record


def test_no_query_or_operator_path_scans(
    make_job: MakeJob, ticking_store: JobStore, queries: Queries
) -> None:
    for n in range(4):
        make_job(f"f{n}", JobStatus.FAILED)
    make_job("p0")
    seen: list[str] = []
    clients = {
        id(c): c
        for c in (
            JobModel._get_connection().connection.client,
            RepoModel._get_connection().connection.client,
            ticking_store.connection.client,
        )
    }
    hook = _recorder(seen)
    for client in clients.values():
        client.meta.events.register("before-call.dynamodb", hook)
    try:
        page = queries.jobs(REPO, limit=2)
        queries.jobs(REPO, limit=2, cursor=page.next_cursor)
        queries.jobs(REPO, status="failed", branch="main", event="push")
        queries.job("f0")
        queries.stats(REPO)
        operations = Operations(ticking_store, queries)
        operations.retry("f0")
        operations.cancel("p0")
        operations.retry_all_failed(REPO, since=0)
    finally:
        for client in clients.values():
            client.meta.events.unregister("before-call.dynamodb", hook)
    assert "Scan" not in seen
    assert set(seen) == {"Query", "GetItem", "TransactWriteItems"}


def test_ten_concurrent_retries_of_one_job_make_exactly_one_attempt(
    make_job: MakeJob, ticking_store: JobStore, queries: Queries
) -> None:
    make_job("j1", JobStatus.FAILED)
    operations = Operations(ticking_store, queries)
    barrier = threading.Barrier(10)

    def retry(_: int) -> str:
        barrier.wait()
        try:
            operations.retry("j1")
        except TransitionConflict:
            return "conflict"
        except InvalidTransition:
            return "not failed any more"
        return "retried"

    with ThreadPoolExecutor(10) as pool:
        outcomes = Counter(pool.map(retry, range(10)))
    assert outcomes["retried"] == 1 and sum(outcomes.values()) == 10
    detail = queries.job("j1")
    assert detail.attempt == 2
    assert [h.dest for h in detail.history].count("pending") == 2  # created + one retry
    assert queries.stats(REPO).counts["pending"] == 1


def test_retrying_a_job_that_is_not_failed_is_refused_with_the_reason(
    make_job: MakeJob, ticking_store: JobStore, queries: Queries
) -> None:
    make_job("passed", JobStatus.PASSED)
    with pytest.raises(InvalidTransition, match="cannot retry a job that is passed") as caught:
        Operations(ticking_store, queries).retry("passed")
    assert caught.value.exit_code == 1
    with pytest.raises(JobNotFound):
        Operations(ticking_store, queries).retry("missing")


def test_cancel_pending_and_active_but_not_finished_jobs(
    make_job: MakeJob, ticking_store: JobStore, queries: Queries
) -> None:
    make_job("pending")
    make_job("active", JobStatus.ACTIVE)
    make_job("passed", JobStatus.PASSED)
    operations = Operations(ticking_store, queries)
    assert operations.cancel("pending").to_dict()["previous_status"] == "pending"
    active = operations.cancel("active")
    assert (active.previous_status, active.status) == ("active", "cancelled")
    assert queries.job("active").reason == "cancelled_by_operator"
    # The slot stays taken until the stream has stopped the run, then comes back (issue 10).
    assert queries.stats(REPO).running == 1
    ticking_store.release_slot(ticking_store.state("active"))
    assert queries.stats(REPO).running == 0
    with pytest.raises(InvalidTransition, match="cannot cancel a job that is passed"):
        operations.cancel("passed")


def test_retry_all_failed_is_safe_to_run_twice(
    make_job: MakeJob, ticking_store: JobStore, queries: Queries
) -> None:
    for n in range(3):
        make_job(f"f{n}", JobStatus.FAILED)
    make_job("passed", JobStatus.PASSED)
    make_job("other-repo", JobStatus.FAILED, repo=OTHER)
    operations = Operations(ticking_store, queries)
    # "since" after every finish: nothing qualifies.
    assert operations.retry_all_failed(REPO, since=2**52).to_dict()["retried"] == 0
    listed: list[int] = []
    first = operations.retry_all_failed(REPO, on_listed=listed.append)
    assert (first.retried, first.skipped, first.refused, listed) == (3, 0, 0, [3])
    assert sorted(item.job_id for item in first.items) == ["f0", "f1", "f2"]
    second = operations.retry_all_failed(REPO)
    assert (second.retried, second.skipped, second.refused) == (0, 0, 0)
    assert queries.stats(REPO).counts["failed"] == 0
    assert queries.stats(OTHER).counts["failed"] == 1


def test_bulk_retry_skips_a_job_that_moved_after_listing(
    make_job: MakeJob, ticking_store: JobStore, queries: Queries
) -> None:
    make_job("f0", JobStatus.FAILED)
    make_job("f1", JobStatus.FAILED)
    operations = Operations(ticking_store, queries)

    class Racing(Operations):
        def failed_jobs(self, repo: str, *, since: int | None = None) -> list[str]:
            listed = super().failed_jobs(repo, since=since)
            operations.retry("f0")  # another operator wins after our listing
            return listed

    summary = Racing(ticking_store, queries).retry_all_failed(REPO)
    outcomes = {item.job_id: (item.outcome, item.reason) for item in summary.items}
    assert outcomes == {
        "f0": (BulkOutcome.SKIPPED, "is pending now"),
        "f1": (BulkOutcome.RETRIED, None),
    }
