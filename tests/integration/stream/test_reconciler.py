"""Issue 23: no job waits on one stream record. The stream function is driven as the event
source mapping drives it (the records we choose are handed to the dispatcher, the others are
dropped, as after the mapping's last retry), CodeBuild is a stand-in whose StopBuild takes
effect late, and the scheduled reaper function runs in rounds. DynamoDB is DynamoDB Local."""

from __future__ import annotations

import json
import subprocess
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
from scheduler.aws.codebuild import LOOKUP_MEMO_SECONDS
from scheduler.db.dead_letters import DeadLetter, DeadLetterStore
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
from tests.conftest import stream_env

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
    builds.builds["ci-project:owed-a-1"] = "TIMED_OUT"  # and its completion event reports it
    timed_out = Outcome(reason="timed_out")
    core.store.transition(
        core.store.state("owed-a"), Trigger.FAIL, actor="runner", outcome=timed_out
    )
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
    core.store.transition(
        core.store.state("both-a"), Trigger.FAIL, actor="runner", outcome=Outcome("timed_out")
    )
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
        '[defaults]\nconcurrency = 1\ncheckout = false\nsandbox = "off"\n'
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
            "runs_ended": [],
        }
        # held_slots (slots, then failures), running pipelines + with_queue, then a queue
        # read and a counters read per busy repository; the first round also takes the idle
        # ones out of the index (their queues emptied).
        cleared = 40 if round_ == 0 else 0
        assert len(calls) == 4 + 2 * len(busy) + cleared, calls
        assert calls.count("UpdateItem") == cleared


def test_a_delivered_cancel_record_keeps_the_slot_until_codebuild_reports_the_build_ended(
    aws: tuple[Core, CodeBuildStandIn],
) -> None:
    """StopBuild only asks (the stand-in stops on the second request): the cancel's record
    asks once and leaves the slot held; the reconciliation asks again, then frees it."""
    core, builds = aws
    submitted(core, "stop-a")
    submitted(core, "stop-b")
    before = image("stop-a")
    Operations(core.store, core.queries).cancel("stop-a")
    deliver(core, "stop-a", before)

    assert builds.in_progress() == ["ci-project:stop-a-1"]
    assert job("stop-a").slot_held and running() == 1
    assert job("stop-b").status == "pending"

    scheduled_rounds(core, builds, "stop-b")

    assert builds.builds["ci-project:stop-a-1"] == "STOPPED"
    assert job("stop-b").status == "active" and running() == 1
    assert builds.in_progress() == ["ci-project:stop-b-1"]


def test_a_timeout_whose_stop_build_is_throttled_never_lets_the_next_build_start(
    aws: tuple[Core, CodeBuildStandIn],
) -> None:
    """Issue 23, item 3: the reaper times A out while StopBuild is throttled three times; the
    slot stays A's until CodeBuild reports A's build ended, so B's build never runs beside it."""
    core, builds = aws
    submitted(core, "late-a")
    submitted(core, "late-b")
    builds.begin("ci-project:late-a-1", system_clock() - 700_000)  # its timeout is up
    core.store.defer_deadline(core.store.state("late-a"), system_clock() - 1)
    builds.throttle_stops = 3

    assert handlers.reap({}, None)["timed_out"] == ["late-a"]  # its record is dropped
    assert job("late-a").status == "failed" and job("late-a").slot_held
    assert running() == 1 and job("late-b").status == "pending"

    scheduled_rounds(core, builds, "late-b")

    assert builds.stops["ci-project:late-a-1"] >= 4  # throttled three times, then it took
    assert builds.builds["ci-project:late-a-1"] == "STOPPED"
    assert job("late-b").status == "active" and job("late-a").slot_held is None
    assert job("late-a").held_shard == "retry"  # its retry verdict is owed next
    assert builds.in_progress() == ["ci-project:late-b-1"]


def test_the_timeout_record_stops_the_build_before_the_slot_and_the_retry_move_on(
    aws: tuple[Core, CodeBuildStandIn],
) -> None:
    """The record of a reaper's timeout stops the build, frees the slot once it ended, and makes
    the policy's retry (timed_out, 2 attempts), which keeps its place in the queue: ahead of
    B, received later."""
    core, builds = aws
    submitted(core, "tor-a")
    submitted(core, "tor-b")
    before = image("tor-a")
    builds.begin("ci-project:tor-a-1", system_clock() - 700_000)  # its timeout is up
    core.store.defer_deadline(core.store.state("tor-a"), system_clock() - 1)
    assert handlers.reap({}, None)["timed_out"] == ["tor-a"]
    deliver(core, "tor-a", before)

    assert builds.builds["ci-project:tor-a-1"] == "STOPPED"
    assert job("tor-a").slot_held is None and job("tor-a").held_shard is None
    assert (job("tor-a").status, int(job("tor-a").attempt)) == ("active", 2)
    assert job("tor-b").status == "pending" and running() == 1
    assert builds.in_progress() == []  # A's second build starts with its activation's record


def test_a_build_whose_id_was_never_recorded_is_found_and_stopped_before_its_slot_moves(
    aws: tuple[Core, CodeBuildStandIn],
) -> None:
    """CodeBuild starts A's build but its answer is lost (the process died before recording the
    build id) and the record is given up; A is cancelled: its stop finds the build by the
    environment it carries and stops it before B may start."""
    core, builds = aws
    new_job(core, "lost-a")
    pending = image("lost-a")
    deliver(core, "lost-a")
    builds.lose_start_answers = 1
    answer = core.dispatcher.handle_event(
        {"Records": [record("lost-a", pending)]}, time_left_ms=lambda: 0
    )
    assert answer["batchItemFailures"]  # the mapping would try again; it gives up instead
    assert job("lost-a").run_id == "lost-a#1"  # the claim: no build id recorded
    assert builds.in_progress() == ["ci-project:lost-a-1"]
    submitted(core, "lost-b")

    before = image("lost-a")
    Operations(core.store, core.queries).cancel("lost-a")
    deliver(core, "lost-a", before)

    assert builds.stops["ci-project:lost-a-1"] == 1  # found by its environment, asked once
    assert job("lost-a").slot_held and job("lost-b").status == "pending"

    scheduled_rounds(core, builds, "lost-b")

    assert builds.builds["ci-project:lost-a-1"] == "STOPPED"
    assert job("lost-b").status == "active"
    assert builds.in_progress() == ["ci-project:lost-b-1"]  # B's build only: A's stopped first


def overdue(core: Core, job_id: str) -> None:
    """Move ``job_id``'s deadline into the past (as if its timeout ran out)."""
    core.store.defer_deadline(core.store.state(job_id), system_clock() - 1)


def test_a_build_waiting_in_codebuilds_queue_is_not_timed_out_its_deadline_counts_from_its_start(
    aws: tuple[Core, CodeBuildStandIn],
) -> None:
    """Issue 23, item 3: CodeBuild's own queue time does not count against the job's timeout;
    the deadline counts from when the build left the queue (its PROVISIONING phase)."""
    core, builds = aws
    builds.queue_builds = True
    submitted(core, "queued-a")
    build_id = "ci-project:queued-a-1"
    assert builds.in_progress() == [build_id]

    overdue(core, "queued-a")
    assert handlers.reap({}, None)["timed_out"] == []  # queued at CodeBuild: waiting
    assert job("queued-a").status == "active"
    assert int(job("queued-a").deadline_at) > system_clock() + 590_000  # its whole timeout

    builds.begin(build_id)  # it starts now
    overdue(core, "queued-a")
    time.sleep(LOOKUP_MEMO_SECONDS)  # a fresh look at the build
    assert handlers.reap({}, None)["timed_out"] == []  # 600 s from its real start
    deadline = int(job("queued-a").deadline_at)
    assert system_clock() + 590_000 < deadline <= system_clock() + 600_000 + 60_000

    builds.begin(build_id, system_clock() - 700_000)  # it really started 700 s ago
    overdue(core, "queued-a")
    time.sleep(LOOKUP_MEMO_SECONDS)
    assert handlers.reap({}, None)["timed_out"] == ["queued-a"]
    assert (job("queued-a").status, job("queued-a").reason) == ("failed", "timed_out")


def test_a_claim_whose_start_build_kept_failing_ends_start_failed_not_timed_out(
    aws: tuple[Core, CodeBuildStandIn],
) -> None:
    """Issue 23, item 6: StartBuild throttled until the record is given up; at the deadline
    the claim has no build (CodeBuild has none with its environment): ``start_failed``, an
    infrastructure failure, retried automatically, not the job's ``timed_out``."""
    core, builds = aws
    new_job(core, "never-a")
    pending = image("never-a")
    deliver(core, "never-a")
    builds.throttle_starts = 100
    answer = core.dispatcher.handle_event(
        {"Records": [record("never-a", pending)]}, time_left_ms=lambda: 0
    )
    assert answer["batchItemFailures"]  # and given up by the mapping
    assert job("never-a").run_id == "never-a#1" and builds.in_progress() == []

    before = image("never-a")
    overdue(core, "never-a")
    assert handlers.reap({}, None)["timed_out"] == []
    assert (job("never-a").status, job("never-a").reason) == ("failed", "start_failed")
    assert running() == 0  # no build: nothing to stop, the slot is free
    builds.throttle_starts = 0
    deliver(core, "never-a", before)  # the failure's record retries it (infrastructure)
    assert (job("never-a").status, int(job("never-a").attempt)) == ("active", 2)


def test_dlq_replay_of_a_cancel_letter_succeeds_and_leaves_the_stop_to_the_reconciliation(
    aws: tuple[Core, CodeBuildStandIn], settings: Settings
) -> None:
    """Issue 23, item 1: a dropped cancel record's letter could not be replayed (the CLI's
    dispatcher has no executor: RunNotStoppable). Now the replay succeeds, says the stop and the
    slot are the engine's reconciliation's, and the next rounds settle them."""
    core, builds = aws
    submitted(core, "dlq-a")
    submitted(core, "dlq-b")
    before = image("dlq-a")
    Operations(core.store, core.queries).cancel("dlq-a")
    letter = DeadLetter(
        dead_letter_id="0001-cancel",
        condition="RetryAttemptsExhausted",
        stream_arn="arn:aws:dynamodb:us-east-1:1:table/jobs/stream/x",
        shard_id="shard-1",
        start_sequence_number="1",
        end_sequence_number="1",
        batch_size=1,
        approximate_arrival_of_first_record=None,
        approximate_arrival_of_last_record=None,
        attempts=4,
        error="ThrottlingException",
        failed_at=system_clock(),
        records=[dict(record("dlq-a", before))],
    )
    DeadLetterStore.from_settings(settings).put(letter)

    replayed = subprocess.run(
        [
            str(Path(sys.executable).with_name("scheduler")),
            "dlq",
            "replay",
            "0001-cancel",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**stream_env(settings), "SCHEDULER_CONFIG": str(core.settings.config_path)},
        check=False,
    )
    assert replayed.returncode == 0, replayed.stderr
    answer = json.loads(replayed.stdout)
    assert answer["replayed"] is True and answer["failed_records"] == []
    assert len(answer["notes"]) == 1 and "reconciliation" in answer["notes"][0]
    assert job("dlq-a").slot_held and running() == 1  # nothing stopped from the CLI
    assert builds.in_progress() == ["ci-project:dlq-a-1"]

    scheduled_rounds(core, builds, "dlq-b")

    assert builds.builds["ci-project:dlq-a-1"] == "STOPPED"
    assert job("dlq-a").slot_held is None and job("dlq-b").status == "active"
    assert builds.in_progress() == ["ci-project:dlq-b-1"]


def test_a_new_job_never_overtakes_a_queue_whose_promotion_is_owed_by_another_invocation(
    aws: tuple[Core, CodeBuildStandIn],
) -> None:
    """Issue 23, item 4: A finishes; the record that promotes B is in another invocation (not
    handled yet) when C's INSERT arrives: C's activation finds B queued ahead of it and
    promotes the queue in its order instead, so B gets the slot and C waits."""
    core, _builds = aws
    submitted(core, "ahead-a")
    submitted(core, "ahead-b")
    assert job("ahead-b").status == "pending"
    before = image("ahead-a")
    core.store.transition(core.store.state("ahead-a"), Trigger.PASS, actor="runner")
    assert running() == 0  # a free slot, and B queued for it

    new_job(core, "ahead-c")
    deliver(core, "ahead-c")  # another invocation: C's INSERT first

    assert job("ahead-b").status == "active"
    assert job("ahead-c").status == "pending"
    deliver(core, "ahead-a", before)  # the finish's record, late: the slot is taken
    assert running() == 1 and job("ahead-c").status == "pending"


def test_a_new_job_alone_in_its_queue_still_takes_a_free_slot_in_one_write(
    aws: tuple[Core, CodeBuildStandIn],
) -> None:
    """The guard costs nothing when there is no queue: the INSERT's activation is one
    transaction, as before (no queue read, no counters read)."""
    core, _builds = aws
    new_job(core, "alone-a")
    calls: list[str] = []
    core.store.connection.client.meta.events.register(
        "before-call.dynamodb", lambda model, **_: calls.append(model.name)
    )
    deliver(core, "alone-a")
    assert job("alone-a").status == "active"
    assert calls == ["TransactWriteItems"], calls


def test_a_late_start_record_racing_the_reapers_restart_never_stops_the_live_build(
    aws: tuple[Core, CodeBuildStandIn],
) -> None:
    """Issue 23, item 6: a start got no answer (the claim stands, no build id). The reaper's
    restart and the late StartRun record both resume it with the same token, so CodeBuild
    gives both the same build; the one that records the id second must not take the build
    for a stray of an ended attempt and stop it."""
    core, builds = aws
    assert core.runs is not None
    new_job(core, "twice-a")
    pending = image("twice-a")
    deliver(core, "twice-a")
    core.store.claim_run(core.store.state("twice-a"), "twice-a#1")  # a start got no answer
    restarted: list[object] = []
    builds.before_answer = lambda: restarted.append(core.runs.start(job("twice-a")))  # type: ignore[union-attr]

    deliver(core, "twice-a", pending)  # the late StartRun record, racing the reaper's restart

    assert restarted == ["ci-project:twice-a-1"]
    assert builds.started["twice-a#1"] == 2  # one build for both: the same token
    assert builds.stops["ci-project:twice-a-1"] == 0
    assert builds.in_progress() == ["ci-project:twice-a-1"]
    assert (job("twice-a").status, job("twice-a").run_id) == ("active", "ci-project:twice-a-1")
