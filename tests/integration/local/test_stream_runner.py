"""The local stream runner against DynamoDB Local's real stream, with the real dispatcher.

The module has its own DynamoDB Local (``stream_settings``); every test empties the tables and
starts its runner at the end of the stream (``skip_to_end``), so earlier tests' records and the
clearing's REMOVE records are not replayed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from scheduler.db.clients import client
from scheduler.db.dead_letters import DeadLetterStore
from scheduler.db.models import JobModel, RepoModel
from scheduler.db.store import JobState, JobStore, NewJob
from scheduler.local.checkpoints import CheckpointStore
from scheduler.local.mapping import MappingConfig, PollingConfig
from scheduler.local.stream_runner import StreamRunner
from scheduler.settings import Settings
from scheduler.stream.dispatcher import Dispatcher
from state_machines import JobStatus, TransitionConflict, Trigger
from tests.conftest import clear_table

FAST = PollingConfig(
    idle_min_seconds=0.002,
    idle_max_seconds=0.02,
    retry_base_seconds=0.01,
    retry_max_seconds=0.05,
    discovery_seconds=1.0,
)
TEMPLATE_MAPPING = MappingConfig.from_settings(Settings())
# One lane: for tests of the order across items and of whole batches (lanes: test_stream_lanes).
SERIAL = replace(TEMPLATE_MAPPING, parallelization_factor=1)


@pytest.fixture
def fresh(stream_settings: Settings) -> Settings:
    ddb = client("dynamodb", stream_settings)
    names = stream_settings.tables
    for name, key in ((names.jobs, "job_id"), (names.repos, "repo")):
        clear_table(ddb, name, key)
    for name, keys in (
        (names.runner_state, "stream_arn, shard_id"),
        (names.dead_letters, "#s, dead_letter_id"),
    ):
        for page in ddb.get_paginator("scan").paginate(
            TableName=name,
            ProjectionExpression=keys,
            **({"ExpressionAttributeNames": {"#s": "source"}} if "#s" in keys else {}),
        ):
            for item in page["Items"]:
                ddb.delete_item(TableName=name, Key=item)
    return stream_settings


def make_runner(
    settings: Settings,
    handler: Callable[[dict[str, Any], Any], Any],
    *,
    mapping: MappingConfig = TEMPLATE_MAPPING,
    owner: str = "test",
    streams: Any = None,
    wall: Callable[[], float] = time.time,
) -> StreamRunner:
    ddb = client("dynamodb", settings)
    return StreamRunner(
        dynamodb=ddb,
        streams=streams or client("dynamodbstreams", settings),
        table_name=settings.tables.jobs,
        checkpoints=CheckpointStore(ddb, settings.tables.runner_state, owner),
        dead_letters=DeadLetterStore(ddb, settings.tables.dead_letters),
        handler=handler,
        mapping=mapping,
        polling=FAST,
        wall=wall,
    )


class Recorder:
    """The real dispatcher behind a handler that records what it was given."""

    def __init__(self, settings: Settings, limit: int = 2) -> None:
        self.store = JobStore.from_settings(settings)
        self.started: list[tuple[str, int]] = []
        self.batches: list[list[str]] = []
        self.dispatcher = Dispatcher(
            self.store,
            slot_limit_for=lambda _repo: limit,
            start_run=lambda job, _delay: self.started.append((job.job_id, int(job.attempt))),
        )

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        self.batches.append([r["dynamodb"]["SequenceNumber"] for r in event["Records"]])
        return self.dispatcher.handle_event(event)


def new_job(job_id: str, repo: str = "org/app") -> NewJob:
    return NewJob(job_id=job_id, repo=repo, event="push", sha="c" * 40, timeout_seconds=600)


def status(job_id: str) -> str:
    return str(JobModel.get(job_id, consistent_read=True).status)


def activations(job_id: str) -> Counter[int]:
    item = JobModel.get(job_id, consistent_read=True)
    return Counter(int(h.attempt) for h in item.history if h.dest == "active")


def test_template_mapping_is_what_the_runner_uses() -> None:
    expected = MappingConfig(
        batch_size=100,
        batching_window_seconds=0.0,
        bisect_on_error=True,
        max_retry_attempts=3,
        max_record_age_seconds=3600,
        report_batch_item_failures=True,
        starting_position="TRIM_HORIZON",
        parallelization_factor=4,
        event_names=frozenset({"INSERT", "MODIFY"}),
    )
    assert expected == TEMPLATE_MAPPING


def test_removals_are_filtered_out_before_the_function(fresh: Settings) -> None:
    seen: list[str] = []
    recorder = Recorder(fresh)

    def handler(event: dict[str, Any], context: Any) -> Any:
        seen.extend(r["eventName"] for r in event["Records"])
        return recorder(event, context)

    runner = make_runner(fresh, handler)
    runner.skip_to_end()
    recorder.store.create(new_job("kept"))
    client("dynamodb", fresh).delete_item(
        TableName=fresh.tables.jobs, Key={"job_id": {"S": "kept"}}
    )  # a TTL expiry looks the same on the stream: a REMOVE
    recorder.store.create(new_job("after"))
    runner.drain()
    assert "REMOVE" not in seen and seen.count("INSERT") == 2, seen
    assert status("after") == "active"


def test_jobs_are_activated_queued_and_promoted_through_the_stream(fresh: Settings) -> None:
    recorder = Recorder(fresh)
    runner = make_runner(fresh, recorder, mapping=SERIAL)  # the oldest first, across items
    runner.skip_to_end()
    for n in range(5):
        recorder.store.create(new_job(f"j{n}"))
    runner.drain()
    assert [status(f"j{n}") for n in range(5)] == ["active"] * 2 + ["pending"] * 3
    assert sorted(recorder.started) == [("j0", 1), ("j1", 1)]

    recorder.store.transition(recorder.store.state("j0"), Trigger.PASS, actor="runner")
    runner.drain()
    assert [status(f"j{n}") for n in range(5)] == ["passed", "active", "active"] + ["pending"] * 2
    assert ("j2", 1) in recorder.started  # the oldest queued job was promoted
    assert RepoModel.get("org/app", consistent_read=True).running == 2


def test_poison_record_among_good_ones_lands_in_the_dead_letter_table(fresh: Settings) -> None:
    recorder = Recorder(fresh)
    runner = make_runner(fresh, recorder)
    runner.skip_to_end()
    ddb = client("dynamodb", fresh)
    for n in range(100):
        if n == 37:  # a job item that cannot be read as a job
            ddb.put_item(
                TableName=fresh.tables.jobs,
                Item={"job_id": {"S": "poison"}, "status": {"S": "pending"}, "repo": {"S": "x/y"}},
            )
        recorder.store.create(new_job(f"g{n:03d}", repo=f"org/r{n}"))
    runner.drain()

    assert all(status(f"g{n:03d}") == "active" for n in range(100))
    assert all(activations(f"g{n:03d}") == {1: 1} for n in range(100))
    letters = DeadLetterStore(ddb, fresh.tables.dead_letters).list()
    assert len(letters) == 1
    letter = letters[0]
    assert letter.condition == "RetryAttemptsExhausted" and letter.batch_size == 1
    assert letter.attempts == TEMPLATE_MAPPING.max_retry_attempts + 1
    assert [r["dynamodb"]["Keys"]["job_id"]["S"] for r in letter.records] == ["poison"]
    assert "MalformedStreamRecord" in letter.error or "failed" in letter.error
    # Bisection isolated the poison record: a few more invocations than batches, not hundreds.
    assert runner.stats.invocations < 40

    # The shard goes on after the dead letter.
    recorder.store.create(new_job("after", repo="org/after"))
    runner.drain()
    assert status("after") == "active"
    # The dead letter can be replayed (still poison: it stays there, not marked replayed).
    response = DeadLetterStore(ddb, fresh.tables.dead_letters).replay(letter, recorder, 1)
    assert response["batchItemFailures"][0]["itemIdentifier"] == letter.start_sequence_number


def test_partial_batch_response_resumes_from_the_lowest_failed_record(fresh: Settings) -> None:
    seen: list[list[str]] = []
    fail_once = {"j2"}

    def handler(event: dict[str, Any], context: Any) -> Any:
        ids = [r["dynamodb"]["Keys"]["job_id"]["S"] for r in event["Records"]]
        seen.append(ids)
        for record, job_id in zip(event["Records"], ids, strict=True):
            if job_id in fail_once:
                fail_once.discard(job_id)
                failed = record["dynamodb"]["SequenceNumber"]
                return {"batchItemFailures": [{"itemIdentifier": failed}]}
        return {"batchItemFailures": []}

    mapping = replace(SERIAL, bisect_on_error=False)
    runner = make_runner(fresh, handler, mapping=mapping)
    runner.skip_to_end()
    store = JobStore.from_settings(fresh)
    for n in range(5):
        store.create(new_job(f"j{n}"))
    time.sleep(0.05)
    runner.drain()
    assert seen == [[f"j{n}" for n in range(5)], ["j2", "j3", "j4"]]


def test_a_restarted_runner_resumes_after_its_checkpoint(fresh: Settings) -> None:
    first = Recorder(fresh)
    runner = make_runner(fresh, first)
    runner.skip_to_end()
    for n in range(3):
        first.store.create(new_job(f"a{n}", repo=f"org/a{n}"))
    runner.drain()
    for n in range(3):
        first.store.create(new_job(f"b{n}", repo=f"org/b{n}"))

    second = Recorder(fresh)
    make_runner(fresh, second).drain()  # a new process: state from the checkpoint table only
    assert sorted(job for job, _ in second.started) == ["b0", "b1", "b2"]
    assert all(status(f"b{n}") == "active" for n in range(3))


def test_batching_window_collects_records_into_one_batch(fresh: Settings) -> None:
    recorder = Recorder(fresh)
    # A window long enough for the four writes below however busy the machine (one batch
    # closes at the window's end: a few seconds of this test's time).
    mapping = replace(SERIAL, batch_size=50, batching_window_seconds=5.0)
    runner = make_runner(fresh, recorder, mapping=mapping)
    runner.skip_to_end()
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,))
    thread.start()
    try:
        for n in range(4):
            recorder.store.create(new_job(f"w{n}", repo=f"org/w{n}"))
            time.sleep(0.05)
        deadline = time.monotonic() + 60
        while len(recorder.started) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join(60)
    assert len(recorder.batches[0]) == 4  # the four INSERTs waited for one another
    assert len(recorder.started) == 4


def test_batch_size_limits_each_invocation(fresh: Settings) -> None:
    recorder = Recorder(fresh)
    runner = make_runner(fresh, recorder, mapping=replace(SERIAL, batch_size=3))
    runner.skip_to_end()
    for n in range(7):
        recorder.store.create(new_job(f"s{n}", repo=f"org/s{n}"))
    runner.drain()
    assert max(len(batch) for batch in recorder.batches) == 3
    assert len(recorder.started) == 7


class FlakyStreams:
    """The real streams client, with scripted errors on chosen GetRecords calls."""

    def __init__(self, real: Any, errors: dict[int, str]) -> None:
        self._real = real
        self._errors = errors
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def get_records(self, **kwargs: Any) -> Any:
        from botocore.exceptions import ClientError

        self.calls += 1
        code = self._errors.get(self.calls)
        if code:
            raise ClientError({"Error": {"Code": code, "Message": "injected"}}, "GetRecords")
        return self._real.get_records(**kwargs)


def test_expired_and_trimmed_iterators_are_renewed(fresh: Settings) -> None:
    recorder = Recorder(fresh)
    streams = FlakyStreams(
        client("dynamodbstreams", fresh),
        {2: "ExpiredIteratorException", 3: "TrimmedDataAccessException", 5: "ThrottlingException"},
    )
    runner = make_runner(fresh, recorder, streams=streams)
    runner.skip_to_end()
    for n in range(6):
        recorder.store.create(new_job(f"e{n}", repo=f"org/e{n}"))
    runner.drain()
    assert sorted(job for job, _ in recorder.started) == [f"e{n}" for n in range(6)]
    assert runner.stats.iterator_renewals == 2


def test_a_failing_record_older_than_the_maximum_age_goes_to_the_dead_letter_table(
    fresh: Settings,
) -> None:
    recorder = Recorder(fresh)
    later = 0.0  # how far the runner's wall clock is ahead of the real one
    calls = 0

    def failing(event: dict[str, Any], context: Any) -> Any:
        nonlocal later, calls
        calls += 1
        later = 7200.0  # after its first failure, two hours pass (the limit is one hour)
        raise RuntimeError("the function keeps failing")

    runner = make_runner(fresh, failing, wall=lambda: time.time() + later)
    runner.skip_to_end()
    recorder.store.create(new_job("old"))
    runner.drain()
    assert calls == 1 and status("old") == "pending"
    letters = DeadLetterStore(client("dynamodb", fresh), fresh.tables.dead_letters).list()
    assert [(x.condition, x.batch_size) for x in letters] == [("RecordAgeExceeded", 1)]


def finish_some(store: JobStore) -> None:
    for active in JobModel.active_by_deadline.query("active", limit=2):
        # A conflict with a runner's own write is fine: the job moved on.
        with contextlib.suppress(TransitionConflict):
            store.transition(JobState.from_model(active), Trigger.PASS, actor="t")


def test_two_runners_on_one_stream_never_double_activate(fresh: Settings) -> None:
    recorders = [Recorder(fresh), Recorder(fresh)]
    runners = [make_runner(fresh, recorder, owner=f"r{n}") for n, recorder in enumerate(recorders)]
    for runner in runners:
        runner.skip_to_end()
    stop = threading.Event()
    threads = [threading.Thread(target=r.run, args=(stop,)) for r in runners]
    for thread in threads:
        thread.start()
    store = JobStore.from_settings(fresh)
    repos = [f"org/two-{n}" for n in range(10)]
    jobs = [f"t{n:03d}" for n in range(120)]
    try:
        for n, job_id in enumerate(jobs):
            store.create(new_job(job_id, repo=repos[n % 10]))
            if n % 4 == 3:  # finish some active jobs while the runners work, to promote
                finish_some(store)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            counts = [RepoModel.get(repo, consistent_read=True) for repo in repos]
            if all(c.n_pending == 0 or c.running == 2 for c in counts):
                break
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)

    for job_id in jobs:
        assert all(count == 1 for count in activations(job_id).values()), job_id
    for repo in repos:
        truth = Counter(job.status for job in JobModel.by_repo.query(repo))
        counters = RepoModel.get(repo, consistent_read=True)
        assert counters.running == truth["active"] <= 2
        assert counters.n_pending == truth["pending"]
        if truth["pending"]:
            assert truth["active"] == 2  # no slot leaked while jobs wait
    assert {JobStatus(s) for s in (status(j) for j in jobs)} <= set(JobStatus)
    # Both runners really worked the same records.
    assert all(recorder.batches for recorder in recorders)


def test_the_runner_loop_survives_an_unexpected_error(
    fresh: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step that fails in a way nobody planned (a bug, an answer never seen) is logged and the
    loop goes on: a dead runner thread would leave every later job pending."""
    runner = make_runner(fresh, Recorder(fresh))
    steps: list[int] = []
    original = StreamRunner.step

    def flaky(self: StreamRunner) -> bool:
        steps.append(1)
        if len(steps) == 1:
            raise RuntimeError("an answer nobody expected")
        return original(self)

    monkeypatch.setattr(StreamRunner, "step", flaky)
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while len(steps) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(60)
    assert len(steps) >= 3, steps


def test_records_reach_the_function_in_lambdas_json_shape(fresh: Settings) -> None:
    """As Lambda delivers them: the stream's own JSON (a binary value stays base64 text, the
    creation time is epoch seconds), which the runner no longer re-parses through botocore."""
    seen: list[dict[str, Any]] = []

    def handler(event: dict[str, Any], context: Any) -> Any:
        seen.extend(event["Records"])
        return {"batchItemFailures": []}

    runner = make_runner(fresh, handler)
    runner.skip_to_end()
    client("dynamodb", fresh).put_item(
        TableName=fresh.tables.jobs,
        Item={"job_id": {"S": "bytes"}, "blob": {"B": b"\x00\xffraw"}, "n": {"N": "7"}},
    )
    runner.drain()
    (record,) = seen
    assert json.loads(json.dumps(record)) == record  # plain JSON all through
    data = record["dynamodb"]
    assert data["NewImage"]["blob"] == {"B": base64.b64encode(b"\x00\xffraw").decode()}
    assert data["NewImage"]["n"] == {"N": "7"}
    assert isinstance(data["ApproximateCreationDateTime"], int | float)
    assert abs(data["ApproximateCreationDateTime"] - time.time()) < 120
    assert record["eventName"] == "INSERT" and record["eventSourceARN"] == runner.stream_arn
