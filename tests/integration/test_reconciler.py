"""Issue 23: no job waits on one stream record. The stream function is driven as the event
source mapping drives it (the records we choose are handed to the dispatcher, the others are
dropped, as after the mapping's last retry), CodeBuild is a stand-in whose StopBuild takes
effect late, and the scheduled reaper function runs in rounds. DynamoDB is DynamoDB Local."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from codebuild_stand_in import CodeBuildStandIn
from stream_records import image, record

from scheduler.aws import handlers
from scheduler.db.models import JobModel, RepoModel
from scheduler.db.store import NewJob, Outcome, system_clock
from scheduler.local.executor import LocalExecutor
from scheduler.local.stack import StackOptions
from scheduler.local.stack import compose as compose_local
from scheduler.runs.executor import RunStatus
from scheduler.runs.operations import Operations
from scheduler.settings import Settings
from scheduler.stream.reconciler import Reconciler
from scheduler.wiring import Core
from state_machines import Trigger

REPO = "octo-org/lost"
ROUNDS = 5


@pytest.fixture
def aws(
    monkeypatch: pytest.MonkeyPatch, settings: Any, tables: Any, tmp_path: Path
) -> Iterator[tuple[Core, CodeBuildStandIn]]:
    """The AWS runtime's core (what every Lambda function builds), concurrency 1, its
    CodeBuild client a stand-in whose StopBuild needs asking twice."""
    config = tmp_path / "repos.toml"
    config.write_text(
        '[defaults]\nconcurrency = 1\ncommand = ["make", "test"]\ncheckout = false\n'
        '[defaults.retry]\nattempts = 2\non = ["timed_out"]\n'
    )
    monkeypatch.setenv("SCHEDULER_CODEBUILD_PROJECT", "ci-project")
    monkeypatch.setenv("SCHEDULER_CONFIG", str(config))
    handlers.core.cache_clear()
    core = handlers.core()
    builds = CodeBuildStandIn(stops_needed=2)
    assert core.runs is not None
    core.runs.executor._client = builds  # type: ignore[attr-defined]
    yield core, builds
    handlers.core.cache_clear()


def deliver(core: Core, job_id: str, old: dict[str, Any] | None = None) -> None:
    """The stream function gets the record of the job's last write (an INSERT without ``old``)."""
    event = {"Records": [record(job_id, old)]}
    assert core.dispatcher.handle_event(event, time_left_ms=lambda: 60_000) == {
        "batchItemFailures": []
    }


def new_job(core: Core, job_id: str, repo: str = REPO) -> None:
    core.store.create(NewJob(job_id, repo, "push", "e" * 40, 600, ref="refs/heads/main"))


def submitted(core: Core, job_id: str) -> None:
    """A new job whose records all reach the stream function: it is activated (or queued), and
    its activation's record starts its build."""
    new_job(core, job_id)
    pending = image(job_id)
    deliver(core, job_id)
    if job(job_id).status == "active":
        deliver(core, job_id, pending)


def job(job_id: str) -> JobModel:
    return JobModel.get(job_id, consistent_read=True)


def running(repo: str = REPO) -> int:
    return int(RepoModel.get(repo, consistent_read=True).running)


def scheduled_rounds(core: Core, builds: CodeBuildStandIn, waiting: str) -> None:
    """Rounds of the scheduled reaper function; the records of what they activate reach the
    stream function. Never more builds run than the limit, at any round."""
    pending = image(waiting)
    for _ in range(ROUNDS):
        handlers.reap({}, None)
        if job(waiting).status == "active" and job(waiting).run_id is None:
            deliver(core, waiting, pending)  # the promotion's own record starts the build
        assert len(builds.in_progress()) <= 1, builds.builds


def test_a_lost_cancel_record_frees_the_slot_once_the_build_is_stopped(
    aws: tuple[Core, CodeBuildStandIn],
) -> None:
    core, builds = aws
    submitted(core, "cancel-a")
    assert builds.in_progress() == ["ci-project:cancel-a-1"]
    submitted(core, "cancel-b")
    assert job("cancel-b").status == "pending"  # queued behind A

    Operations(core.store, core.queries).cancel("cancel-a")  # its record is dropped
    assert job("cancel-a").slot_held and running() == 1

    scheduled_rounds(core, builds, "cancel-b")

    assert builds.builds["ci-project:cancel-a-1"] == "STOPPED"
    assert builds.stops["ci-project:cancel-a-1"] >= 2  # asked again until it took effect
    assert job("cancel-a").slot_held is None
    assert job("cancel-b").status == "active"
    assert builds.in_progress() == ["ci-project:cancel-b-1"]
    assert running() == 1


def test_a_lost_retry_record_still_runs_the_new_attempt(
    aws: tuple[Core, CodeBuildStandIn],
) -> None:
    core, builds = aws
    submitted(core, "retry-a")
    builds.builds["ci-project:retry-a-1"] = "FAILED"  # and its completion event reported it
    core.store.transition(core.store.state("retry-a"), Trigger.FAIL, actor="runner")
    assert running() == 0

    Operations(core.store, core.queries).retry("retry-a")  # failed -> pending; record dropped
    assert job("retry-a").status == "pending"

    scheduled_rounds(core, builds, "retry-a")

    assert (job("retry-a").status, int(job("retry-a").attempt)) == ("active", 2)
    assert builds.in_progress() == ["ci-project:retry-a-2"]
    assert running() == 1


def later_reconciler(core: Core, by_ms: int) -> Reconciler:
    """The core's reconciliation, its clock ``by_ms`` ahead (past the grace it leaves the
    stream for a finish's own record), made as the composition makes it."""
    made = core.reconciler
    return Reconciler(
        core.store,
        core.dispatcher.promote,
        core.sweeper,
        made.stops,
        redrive=core.dispatcher.redrive_failed,
        clock=lambda: system_clock() + by_ms,
    )


def test_a_lost_failure_record_that_owed_a_retry_is_retried_by_the_reconciliation(
    aws: tuple[Core, CodeBuildStandIn],
) -> None:
    """The policy retries ``timed_out`` (2 attempts): the ``active -> failed`` record is
    dropped, and the reconciliation makes the retry the record owed, once."""
    core, builds = aws
    submitted(core, "owed-a")
    builds.builds["ci-project:owed-a-1"] = "TIMED_OUT"
    core.store.transition(core.store.state("owed-a"), Trigger.TIME_OUT, actor="reaper")
    assert running() == 0  # its record (retry owed) is dropped

    early = core.reconciler.run_once()  # within the grace left for the stream: untouched
    assert early.retried == [] and job("owed-a").status == "failed"

    later = later_reconciler(core, 120_000)
    first = later.run_once()
    assert first.retried == ["owed-a"]
    assert (job("owed-a").status, int(job("owed-a").attempt)) == ("active", 2)
    assert later.run_once().retried == []  # retried once, the mark went with the retry
    assert job("owed-a").held_shard is None


def test_a_failure_that_owed_no_retry_is_settled_once_and_left_alone(
    aws: tuple[Core, CodeBuildStandIn],
) -> None:
    """A failure the policy does not retry (exit code; or a second timeout, attempts used up)
    is only taken out of the index: it is not retried, and not read again."""
    core, _builds = aws
    submitted(core, "done-a")
    core.store.transition(
        core.store.state("done-a"), Trigger.FAIL, actor="runner", outcome=Outcome("exit_code")
    )
    later = later_reconciler(core, 120_000)
    first = later.run_once()
    assert first.retried == [] and first.settled == ["done-a"]
    assert job("done-a").status == "failed" and job("done-a").held_shard is None
    assert later.run_once().settled == []


def test_a_retry_made_by_the_stream_and_a_reconciliation_race_to_one_attempt(
    aws: tuple[Core, CodeBuildStandIn],
) -> None:
    core, _builds = aws
    submitted(core, "both-a")
    active = image("both-a")
    core.store.transition(core.store.state("both-a"), Trigger.TIME_OUT, actor="reaper")
    failed = record("both-a", active)
    later = later_reconciler(core, 120_000)
    barrier = threading.Barrier(2)
    outcomes: list[object] = []

    def stream() -> None:
        barrier.wait()
        outcomes.append(
            core.dispatcher.handle_event({"Records": [failed]}, time_left_ms=lambda: 60_000)
        )

    def reconcile() -> None:
        barrier.wait()
        outcomes.append(later.run_once().retried)

    threads = [threading.Thread(target=stream), threading.Thread(target=reconcile)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(outcomes) == 2
    state = job("both-a")
    assert (state.status, int(state.attempt)) in {("pending", 2), ("active", 2)}
    assert [e.dest for e in state.history].count("pending") == 2  # created, retried once


def test_racing_reconciliations_and_the_cancel_record_free_each_slot_once(
    aws: tuple[Core, CodeBuildStandIn],
) -> None:
    """The cancel record arrives late, twice, while two reaper invocations reconcile: every
    slot is freed once, one queued job per repository is activated, never two."""
    core, builds = aws
    builds.stops_needed = 1
    repos = [f"octo-org/race{n}" for n in range(4)]
    records = []
    for n, repo in enumerate(repos):
        new_job(core, f"race{n}-a", repo)
        pending = image(f"race{n}-a")
        deliver(core, f"race{n}-a")
        deliver(core, f"race{n}-a", pending)
        new_job(core, f"race{n}-b", repo)
        before = image(f"race{n}-a")
        Operations(core.store, core.queries).cancel(f"race{n}-a")
        records.append(record(f"race{n}-a", before))
    assert len(builds.in_progress()) == len(repos)

    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def reconcile() -> None:
        try:
            barrier.wait()
            for _ in range(3):
                core.reconciler.run_once()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def stream() -> None:
        try:
            barrier.wait()
            for _ in range(2):  # delivered late, and again
                core.dispatcher.handle_event({"Records": records}, time_left_ms=lambda: 60_000)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reconcile) for _ in range(2)]
    threads += [threading.Thread(target=stream) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors

    for n, repo in enumerate(repos):
        assert job(f"race{n}-a").slot_held is None
        assert job(f"race{n}-b").status == "active"
        counters = RepoModel.get(repo, consistent_read=True)
        assert (int(counters.running), int(counters.n_active)) == (1, 1), repo
        assert int(counters.n_pending) == 0


@pytest.fixture
def local(settings: Settings, tables: Any, tmp_path: Path) -> Iterator[Core]:
    """The local runtime's core (what ``scheduler up`` builds), concurrency 1, runs that sleep."""
    config = tmp_path / "repos.toml"
    command = [sys.executable, "-c", "import time; time.sleep(120)"]
    config.write_text(
        "[defaults]\nconcurrency = 1\ncheckout = false\nsandbox = \"off\"\n"
        f"command = {command!r}\n".replace("'", '"')
    )
    env = {
        "SCHEDULER_DYNAMODB_ENDPOINT": settings.dynamodb_endpoint or "",
        "SCHEDULER_JOBS_TABLE": settings.tables.jobs,
        "SCHEDULER_REPOS_TABLE": settings.tables.repos,
        "SCHEDULER_CONFIG": str(config),
    }
    core = compose_local(Settings.from_env(env), StackOptions(data_dir=tmp_path / "data"))
    yield core
    core.close()
    assert core.runs is not None and isinstance(core.runs.executor, LocalExecutor)
    core.runs.executor.close()


def test_the_local_stack_reconciles_a_lost_cancel_record_after_the_process_is_gone(
    local: Core,
) -> None:
    assert local.runs is not None
    executor = local.runs.executor
    submitted(local, "local-a")
    deadline = time.monotonic() + 60
    while executor.status("local-a#1") is not RunStatus.RUNNING:
        assert time.monotonic() < deadline, executor.status("local-a#1")
        time.sleep(0.05)
    submitted(local, "local-b")
    Operations(local.store, local.queries).cancel("local-a")  # its record is dropped

    first = local.reconciler.run_once()  # the process still runs: stopped now, slot kept
    assert (first.released, first.stopping) == ([], ["local-a"])
    assert job("local-b").status == "pending" and running() == 1
    assert executor.stopped("local-a#1")

    second = local.reconciler.run_once()  # known stopped: the slot moves to the queue
    assert second.released == ["local-a"] and second.promoted == {REPO: 1}
    assert job("local-b").status == "active" and job("local-a").slot_held is None
    assert running() == 1


def test_a_round_costs_requests_by_the_repositories_with_work_not_by_history(
    aws: tuple[Core, CodeBuildStandIn],
) -> None:
    """10 repositories with a running job and one queued, 40 with only finished jobs: a round
    reads two sparse indexes and, per repository with work, its queue and its slot count."""
    core, _builds = aws
    store = core.store
    for n in range(40):
        idle = store.activate(
            store.create(NewJob(f"idle{n}", f"octo-org/idle{n}", "push", "e" * 40, 600)),
            slot_limit=1,
        )
        store.transition(idle, Trigger.PASS, actor="runner")
    busy = [f"octo-org/busy{n}" for n in range(10)]
    for n, repo in enumerate(busy):
        first = store.create(NewJob(f"busy{n}-a", repo, "push", "e" * 40, 600))
        store.activate(first, slot_limit=1)
        new_job(core, f"busy{n}-b", repo)
    calls: list[str] = []
    store.connection.client.meta.events.register(
        "before-call.dynamodb", lambda model, **_: calls.append(model.name)
    )

    for round_ in range(3):
        calls.clear()
        assert core.reconciler.run_once().to_dict() == {
            "released": [],
            "stopping": [],
            "retried": [],
            "settled": [],
            "promoted": {},
        }
        # held_slots (slots, then failures) + with_queue, then a queue read and a counters
        # read per busy repository; the first round also takes the idle ones out of the index
        # (their queues emptied).
        cleared = 40 if round_ == 0 else 0
        assert len(calls) == 3 + 2 * len(busy) + cleared, calls
        assert calls.count("UpdateItem") == cleared
