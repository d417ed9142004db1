"""Supersede against DynamoDB Local: a newer push (or PR head) cancels its lane's older jobs.

Stream records are built from the items as the stream would carry them and handed to the real
dispatcher; the race test creates and dispatches concurrently from threads.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from processes import pid_alive
from stream_records import image, record

from scheduler.config import SupersedeMode
from scheduler.db.models import JobModel, RepoModel
from scheduler.db.store import JobState, JobStore, NewJob
from scheduler.errors import BatchInterrupted
from scheduler.local.executor import LocalExecutor
from scheduler.runs.executor import RunResult
from scheduler.runs.starter import RunStarter
from scheduler.settings import Settings
from scheduler.stream.dispatcher import Dispatcher, RunHook, StopHook
from scheduler.stream.events import StreamRecord

REPO = "octo-org/api"


def push(
    store: JobStore,
    job_id: str,
    branch: str | None = "main",
    *,
    pr: int | None = None,
    tag: str | None = None,
    repo: str = REPO,
) -> JobState:
    ref = f"refs/tags/{tag}" if tag else f"refs/heads/{branch}"
    return store.create(
        NewJob(
            job_id=job_id,
            repo=repo,
            event="pull_request" if pr is not None else "push",
            sha="d" * 40,
            timeout_seconds=600,
            ref=ref,
            branch=None if tag else branch,
            pr_number=pr,
            delivery_id=job_id,
        )
    )


def dispatcher(
    store: JobStore,
    mode: SupersedeMode,
    *,
    limit: int = 1,
    start_run: RunHook | None = None,
    stop_run: StopHook | None = None,
) -> Dispatcher:
    return Dispatcher(
        store,
        slot_limit_for=lambda _repo: limit,
        supersede_for=lambda repo: mode if repo == REPO else "off",
        start_run=start_run,
        stop_run=stop_run,
    )


def job(job_id: str) -> JobModel:
    return JobModel.get(job_id, consistent_read=True)


def statuses(*job_ids: str) -> dict[str, str]:
    return {job_id: str(job(job_id).status) for job_id in job_ids}


def assert_superseded(job_id: str, by: str, was: str = "pending") -> None:
    item = job(job_id)
    assert (item.status, item.reason) == ("cancelled", "superseded")
    assert item.detail == f"superseded by job {by}"
    last = item.history[-1]
    assert (last.source, last.dest, last.reason) == (was, "cancelled", "superseded")
    assert last.actor == f"supersede:{by}"


def test_off_leaves_every_older_job_alone(ticking_store: JobStore) -> None:
    push(ticking_store, "old-1")
    push(ticking_store, "old-2")
    push(ticking_store, "new")
    outcomes = dispatcher(ticking_store, "off").handle_record(record("new"))
    # No supersede action at all; the one slot goes to the oldest queued job (a new job never
    # overtakes the queue).
    assert outcomes == ["queued"]
    assert statuses("old-1", "old-2", "new") == {
        "old-1": "active",
        "old-2": "pending",
        "new": "pending",
    }


def test_queued_cancels_only_the_branchs_older_queued_jobs(ticking_store: JobStore) -> None:
    store = ticking_store
    store.activate(push(store, "running"), slot_limit=1)  # main, started: left alone
    push(store, "queued-1")
    push(store, "queued-2")
    push(store, "dev", branch="dev")  # another branch
    push(store, "pr", branch="main", pr=7)  # a pull request from a branch named main
    push(store, "tag", tag="v1.0")  # a tag
    push(store, "elsewhere", repo="octo-org/web")  # another repository, same branch
    push(store, "new")

    outcomes = dispatcher(store, "queued").handle_record(record("new"))

    assert outcomes == ["superseded:2", "queued"]  # the slot is the running job's
    assert_superseded("queued-1", by="new")
    assert_superseded("queued-2", by="new")
    assert statuses("running", "dev", "pr", "tag", "elsewhere", "new") == {
        "running": "active",
        "dev": "pending",
        "pr": "pending",
        "tag": "pending",
        "elsewhere": "pending",
        "new": "pending",
    }
    counters = RepoModel.get(REPO, consistent_read=True)
    assert (counters.n_cancelled, counters.n_pending, counters.running) == (2, 4, 1)


def test_a_new_tag_supersedes_nothing(ticking_store: JobStore) -> None:
    push(ticking_store, "v1", tag="v1")
    push(ticking_store, "main-1")
    push(ticking_store, "v2", tag="v2")
    outcomes = dispatcher(ticking_store, "all", limit=5).handle_record(record("v2"))
    assert outcomes == ["activated"]  # with the older ones, in queue order: none cancelled
    assert statuses("v1", "main-1") == {"v1": "active", "main-1": "active"}


def test_a_new_pull_request_head_supersedes_that_pull_requests_older_jobs(
    ticking_store: JobStore,
) -> None:
    store = ticking_store
    store.activate(push(store, "pr7-running", branch="feature", pr=7), slot_limit=5)
    push(store, "pr7-queued", branch="feature", pr=7)
    push(store, "pr8", branch="feature", pr=8)
    push(store, "branch", branch="feature")  # the push to the PR's branch is another lane
    push(store, "pr7-new", branch="feature", pr=7)

    outcomes = dispatcher(store, "all", limit=5).handle_record(record("pr7-new"))

    assert outcomes == ["superseded:2", "activated"]
    assert_superseded("pr7-queued", by="pr7-new")
    assert_superseded("pr7-running", by="pr7-new", was="active")
    assert job("pr7-running").slot_held  # kept until its run is known to be stopped
    # Not superseded: the other lanes' older jobs run, in queue order with the new one.
    assert statuses("pr8", "branch", "pr7-new") == {
        "pr8": "active",
        "branch": "active",
        "pr7-new": "active",
    }


def test_the_newer_job_is_never_cancelled_when_the_older_is_written_last(
    store: JobStore,
) -> None:
    """The older push (by order) is written after the newer one's record was processed: its
    own record finds the newer job and cancels itself, never the newer one."""
    now = time.time_ns() // 1_000_000
    d = dispatcher(store, "queued", limit=5)
    store.create(NewJob("newer", REPO, "push", "e" * 40, 600, branch="main"), now=now)
    assert d.handle_record(record("newer")) == ["superseded:0", "activated"]
    store.create(NewJob("older", REPO, "push", "f" * 40, 600, branch="main"), now=now - 5)
    assert d.handle_record(record("older")) == ["superseded:1", "already_done"]
    assert_superseded("older", by="newer")
    assert job("newer").status == "active"


def test_an_older_jobs_record_finds_the_newer_one_and_cancels_only_itself(
    ticking_store: JobStore,
) -> None:
    store = ticking_store
    push(store, "a")
    push(store, "b")
    push(store, "c")
    d = dispatcher(store, "queued", limit=5)
    # b's record (a newer c exists, an older a too): a goes, then b itself; c stays.
    assert d.handle_record(record("b")) == ["superseded:2", "already_done"]
    assert_superseded("a", by="b")
    assert_superseded("b", by="c")
    assert d.handle_record(record("c")) == ["superseded:0", "activated"]
    assert job("c").status == "active"


def test_a_replayed_record_changes_nothing_more(ticking_store: JobStore) -> None:
    store = ticking_store
    store.activate(push(store, "running"), slot_limit=1)
    push(store, "old-1")
    push(store, "old-2")
    push(store, "new")
    insert = record("new")
    d = dispatcher(store, "queued")
    assert d.handle_record(insert) == ["superseded:2", "queued"]
    before = {job_id: image(job_id) for job_id in ("running", "old-1", "old-2", "new")}
    counters = RepoModel.get(REPO, consistent_read=True).attribute_values

    assert d.handle_record(insert) == ["superseded:0", "queued"]

    assert {job_id: image(job_id) for job_id in before} == before
    assert RepoModel.get(REPO, consistent_read=True).attribute_values == counters


class StaleReads:
    """The store's reads, but the lane's unfinished jobs as they were (a lagging index)."""

    def __init__(self, store: JobStore, stale: list[JobModel]) -> None:
        self._reads = store.reads
        self._stale = stale

    def unfinished_in_lane(self, *_: Any, **__: Any) -> list[JobModel]:
        return self._stale

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reads, name)


@pytest.mark.parametrize(("mode", "expected"), [("queued", "active"), ("all", "cancelled")])
def test_a_job_that_started_meanwhile_is_left_alone_under_queued(
    ticking_store: JobStore, mode: SupersedeMode, expected: str
) -> None:
    store = ticking_store
    old = push(store, "old")
    seen_pending = job("old")  # what the index still shows ...
    store.activate(old, slot_limit=5)  # ... after the job started
    push(store, "new")
    store.reads = StaleReads(store, [seen_pending])  # type: ignore[assignment]

    outcomes = dispatcher(store, mode, limit=5).handle_record(record("new"))

    assert job("old").status == expected  # the guarded cancel lost, the job was read again
    assert outcomes == [f"superseded:{int(expected == 'cancelled')}", "activated"]
    if mode == "all":
        assert_superseded("old", by="new", was="active")


class Outage:
    """Throttles every transaction after the first ``allowed`` ones while ``down``."""

    status_code = 400
    headers: dict[str, str] = {}

    def __init__(self, store: JobStore, allowed: int) -> None:
        self.allowed = allowed
        self.down = True
        store.connection.client.meta.events.register(
            "before-call.dynamodb.TransactWriteItems", self
        )

    def __call__(self, params: dict[str, Any], **_: Any) -> tuple[Any, dict[str, Any]] | None:
        if not self.down:
            return None
        if self.allowed > 0:
            self.allowed -= 1
            return None
        return self, {"Error": {"Code": "ThrottlingException", "Message": "slow down"}}


def test_an_outage_midway_fails_the_record_and_its_retry_finishes(
    ticking_store: JobStore, settings: Settings
) -> None:
    for job_id in ("old-1", "old-2", "old-3", "new"):
        push(ticking_store, job_id)
    store = JobStore.from_settings(settings)  # a client of its own, to inject faults into
    outage = Outage(store, allowed=1)
    event = {"Records": [record("new")]}
    d = dispatcher(store, "queued")

    with pytest.raises(BatchInterrupted):  # the local runner waits for the database
        d.handle_event(event)
    done = statuses("old-1", "old-2", "old-3", "new")
    assert sorted(done.values()) == ["cancelled", "pending", "pending", "pending"]

    outage.down = False
    assert d.handle_event(event) == {"batchItemFailures": []}
    for old in ("old-1", "old-2", "old-3"):
        assert_superseded(old, by="new")
    assert job("new").status == "active"


# -- "all": a running job's run is stopped before its slot is handed on -------------------------

SPAWNER = (
    "import os, subprocess, sys, time; "
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
    "open(sys.argv[1] + '.tmp', 'w').write(f'{os.getpid()} {child.pid}'); "
    "os.rename(sys.argv[1] + '.tmp', sys.argv[1]); time.sleep(60)"
)


@pytest.fixture
def runs(ticking_store: JobStore, tmp_path: Path) -> Iterator[tuple[RunStarter, LocalExecutor]]:
    pids = tmp_path / "pids"
    starter: list[RunStarter] = []

    def finished(result: RunResult) -> None:
        starter[0].finished(result)

    executor = LocalExecutor(tmp_path / "runs", finished, base_env={"PATH": "/usr/bin:/bin"})
    starter.append(
        RunStarter(
            ticking_store, executor, lambda _repo: (sys.executable, "-c", SPAWNER, str(pids))
        )
    )
    yield starter[0], executor
    executor.close()


def test_all_stops_a_running_job_before_its_slot_goes_to_the_next(
    ticking_store: JobStore, runs: tuple[RunStarter, LocalExecutor], tmp_path: Path
) -> None:
    store = ticking_store
    starter, executor = runs
    d = dispatcher(store, "all", limit=1, start_run=starter.start, stop_run=executor.cancel)
    push(store, "first")
    pending = record("first")
    assert d.handle_record(pending) == ["superseded:0", "activated"]
    active = record("first", old=pending["dynamodb"]["NewImage"])
    assert d.handle_record(active) == ["started"]
    pid_file = tmp_path / "pids"
    deadline = time.monotonic() + 30
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = [int(pid) for pid in pid_file.read_text().split()]
    assert all(pid_alive(pid) for pid in pids)

    push(store, "second")
    assert d.handle_record(record("second")) == ["superseded:1", "queued"]
    assert_superseded("first", by="second", was="active")
    assert job("second").status == "pending"  # the slot stays with the run until it stops

    # The cancel's own record: stop the run, then free the slot, then promote the queue.
    cancel = record("first", old=active["dynamodb"]["NewImage"])
    assert d.handle_record(cancel) == ["stopped", "released", "promoted:1"]
    assert not any(pid_alive(pid) for pid in pids)  # the whole process tree is gone
    assert job("second").status == "active"
    assert RepoModel.get(REPO, consistent_read=True).running == 1


# -- the race -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["queued", "all"])
def test_concurrent_pushes_leave_exactly_the_newest_unsuperseded(
    store: JobStore, mode: SupersedeMode
) -> None:
    """Pushes to one branch created and dispatched from 12 threads at once, each record
    delivered twice in a random order: the newest job (by order) survives, and every other
    one is superseded or (under "queued") had started."""
    count = 12
    d = dispatcher(store, mode, limit=2)
    barrier = threading.Barrier(count)
    records: list[StreamRecord] = []
    lock = threading.Lock()

    def deliver(n: int) -> None:
        rng = random.Random(n)
        barrier.wait()
        push(store, f"race-{n:02d}")
        time.sleep(rng.uniform(0, 0.02))
        insert = record(f"race-{n:02d}")
        with lock:
            records.append(insert)
        d.handle_record(insert)
        time.sleep(rng.uniform(0, 0.02))
        with lock:
            replay = rng.choice(records)
        d.handle_record(replay)  # a redelivered record, possibly another job's

    with ThreadPoolExecutor(count) as pool:
        list(pool.map(deliver, range(count)))

    jobs = sorted(
        JobModel.by_repo.query(REPO), key=lambda item: (int(item.received_at), item.job_id)
    )
    assert len(jobs) == count
    newest, others = jobs[-1], jobs[:-1]
    assert newest.status in ("pending", "active") and newest.reason is None
    for item in others:
        if item.status == "cancelled":
            assert item.reason == "superseded"
            by = item.history[-1].actor.removeprefix("supersede:")
            assert (int(job(by).received_at), by) > (int(item.received_at), item.job_id)
        else:  # started before a newer job's record could cancel it
            assert mode == "queued" and item.status == "active", (item.job_id, item.status)
            assert item.history[-1].dest == "active"
    superseded = sum(item.status == "cancelled" for item in others)
    assert superseded >= count - 3  # at most two slots: the rest were queued, then superseded
    counters = RepoModel.get(REPO, consistent_read=True)
    assert counters.n_cancelled == superseded
    assert int(counters.n_pending) + int(counters.n_active) + superseded == count
