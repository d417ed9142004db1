"""ParallelizationFactor in the local stream runner, against DynamoDB Local's real stream.

Records of one item stay in order in one lane while other items' records overtake them; the
checkpoint never passes an unfinished record; a failing item blocks only its own lane.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any

import pytest

from scheduler.db.clients import client
from scheduler.db.dead_letters import DeadLetterStore
from scheduler.errors import ConfigurationError
from scheduler.local.lanes import lane_index
from scheduler.local.mapping import MappingConfig, PollingConfig
from scheduler.settings import Settings
from tests.integration.local.test_stream_outage import running, wait_for
from tests.integration.local.test_stream_runner import (
    TEMPLATE_MAPPING,
    Recorder,
    activations,
    fresh,  # noqa: F401  (a fixture)
    make_runner,
    new_job,
    status,
)

FACTOR = 4
LANES = replace(TEMPLATE_MAPPING, parallelization_factor=FACTOR)


def key_of(record: dict[str, Any]) -> str:
    return str(record["dynamodb"]["Keys"]["job_id"]["S"])


def lane_of(job_id: str) -> int:
    return lane_index({"dynamodb": {"Keys": {"job_id": {"S": job_id}}}}, FACTOR)


def other_lane_jobs(first: str, count: int, prefix: str) -> tuple[list[str], list[str]]:
    """``count`` job ids in other lanes than ``first``'s, and those found in its lane."""
    others: list[str] = []
    same: list[str] = []
    n = 0
    while len(others) < count:
        job_id = f"{prefix}{n}"
        (same if lane_of(job_id) == lane_of(first) else others).append(job_id)
        n += 1
    return others, same


class Log:
    """What the handler finished, in the order it finished it (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done: list[tuple[str, int]] = []

    def add(self, records: list[dict[str, Any]]) -> None:
        with self.lock:
            self.done += [(key_of(r), int(r["dynamodb"]["SequenceNumber"])) for r in records]

    def of(self, job_id: str) -> list[int]:
        with self.lock:
            return [seq for key, seq in self.done if key == job_id]


def saved_checkpoint(settings: Settings) -> int:
    ddb = client("dynamodb", settings)
    items = ddb.scan(TableName=settings.tables.runner_state, ConsistentRead=True)["Items"]
    return max(int(item.get("sequence_number", {}).get("S", "0")) for item in items)


def test_the_factor_is_read_from_the_template_and_bounded() -> None:
    assert TEMPLATE_MAPPING.parallelization_factor == FACTOR
    template: dict[str, Any] = {
        "Resources": {
            "StreamFunction": {
                "Properties": {
                    "Events": {"S": {"Type": "DynamoDB", "Properties": {"BatchSize": 10}}}
                }
            }
        }
    }
    assert MappingConfig.from_template(template).parallelization_factor == 1
    props = template["Resources"]["StreamFunction"]["Properties"]["Events"]["S"]["Properties"]
    for bad in (0, 11):
        props["ParallelizationFactor"] = bad
        with pytest.raises(ConfigurationError):
            MappingConfig.from_template(template)


def test_a_slow_item_keeps_its_order_while_other_items_overtake_it(fresh: Settings) -> None:  # noqa: F811
    recorder = Recorder(fresh, limit=50)
    log = Log()
    slow_started = threading.Event()
    release = threading.Event()

    def handler(event: dict[str, Any], context: Any) -> Any:
        records = event["Records"]
        if any(key_of(r) == "slow" for r in records) and not slow_started.is_set():
            slow_started.set()
            # The first batch holding the slow item's records takes until the other lanes are
            # done (not a fixed 3 s a busy machine may need for them).
            release.wait(120)
        response = recorder(event, context)
        log.add(records)
        return response

    runner = make_runner(fresh, handler, mapping=LANES)
    runner.skip_to_end()
    ddb = client("dynamodb", fresh)
    recorder.store.create(new_job("slow"))
    for n in range(5):  # more records of the same item, each a change of it
        ddb.update_item(
            TableName=fresh.tables.jobs,
            Key={"job_id": {"S": "slow"}},
            UpdateExpression="SET touched = :n",
            ExpressionAttributeValues={":n": {"N": str(n)}},
        )
    others, same_lane = other_lane_jobs("slow", 8, "o")
    for job_id in others + same_lane:
        recorder.store.create(new_job(job_id, repo=f"org/{job_id}"))

    with running(runner):
        try:
            wait_for(lambda: all(status(j) == "active" for j in others), "others done", 120)
            # The other lanes finished while the slow item's lane was still in its first batch.
            assert not log.of("slow"), "the other lanes waited for the slow item"
        finally:
            release.set()
        wait_for(lambda: status("slow") == "active" and len(log.of("slow")) >= 7, "slow", 120)
    runner.drain()

    slow = log.of("slow")
    assert slow == sorted(slow) and len(slow) == len(set(slow))  # in order, once each
    first_slow = slow[0]
    assert any(seq > first_slow for job in others for seq in log.of(job))  # overtaken
    for job_id in others + same_lane:
        seqs = log.of(job_id)
        assert seqs == sorted(seqs), job_id
    # Items of the slow item's lane stayed behind it (one lane, in order).
    for job_id in same_lane:
        assert min(log.of(job_id)) > first_slow
    assert all(activations(j) == {1: 1} for j in ["slow", *others, *same_lane])


def test_the_checkpoint_never_passes_an_unfinished_record(fresh: Settings) -> None:  # noqa: F811
    """A runner that dies with one lane stuck: its successor redelivers, nothing is lost."""
    recorder = Recorder(fresh, limit=50)
    first_log, second_log = Log(), Log()
    release = threading.Event()

    def dying(event: dict[str, Any], context: Any) -> Any:
        if any(key_of(r) == "stuck" for r in event["Records"]):
            release.wait(30)
            raise RuntimeError("the process died mid-batch")  # never applied: it is gone
        response = recorder(event, context)
        first_log.add(event["Records"])
        return response

    first = make_runner(fresh, dying, mapping=LANES, owner="first")
    first.skip_to_end()
    recorder.store.create(new_job("stuck"))
    others, same_lane = other_lane_jobs("stuck", 10, "k")
    for job_id in others + same_lane:
        recorder.store.create(new_job(job_id, repo=f"org/{job_id}"))

    deadline = time.monotonic() + 120
    while not all(status(j) == "active" for j in others):  # step by hand: no orderly stop
        assert time.monotonic() < deadline, "the other lanes did not finish"
        first.step()
        time.sleep(0.01)
    for _ in range(20):  # later records (the activations' MODIFYs) finish too
        first.step()
        time.sleep(0.01)
    assert not first_log.of("stuck")  # the first runner never finished the stuck record
    finished_after = [seq for _key, seq in first_log.done]
    checkpoint = saved_checkpoint(fresh)
    assert checkpoint < max(finished_after)  # the other lanes are ahead of the checkpoint...

    # ... because the stuck record sits right after it: the "crash" leaves it unfinished.
    def recording(event: dict[str, Any], context: Any) -> Any:
        response = recorder(event, context)
        second_log.add(event["Records"])
        return response

    second = make_runner(fresh, recording, mapping=LANES, owner="second")
    second.drain(timeout=60)
    release.set()

    redelivered = {seq for _key, seq in second_log.done}
    assert second_log.of("stuck"), "the stuck record was lost"
    assert min(second_log.of("stuck")) > checkpoint
    assert min(redelivered) > checkpoint  # resumed right after the checkpoint
    assert redelivered & set(finished_after), "finished records after the checkpoint come again"
    assert all(seq in redelivered for seq in finished_after if seq > checkpoint)
    assert all(activations(j) == {1: 1} for j in ["stuck", *others, *same_lane])
    assert saved_checkpoint(fresh) >= max(redelivered)


def test_a_failing_item_blocks_only_its_own_lane(fresh: Settings) -> None:  # noqa: F811
    recorder = Recorder(fresh, limit=50)
    log = Log()

    def handler(event: dict[str, Any], context: Any) -> Any:
        response = recorder(event, context)
        failed = {f["itemIdentifier"] for f in response["batchItemFailures"]}
        log.add([r for r in event["Records"] if r["dynamodb"]["SequenceNumber"] not in failed])
        return response

    slow_retries = PollingConfig(idle_max_seconds=0.02, retry_base_seconds=2.0)
    runner = make_runner(fresh, handler, mapping=LANES)
    runner._polling = slow_retries  # retries after ~2, 4, 8 s: long enough to watch, loaded
    runner.skip_to_end()
    ddb = client("dynamodb", fresh)
    ddb.put_item(  # a job item that cannot be read as a job: fails every time
        TableName=fresh.tables.jobs,
        Item={"job_id": {"S": "poison"}, "status": {"S": "pending"}, "repo": {"S": "x/y"}},
    )
    others, same_lane = other_lane_jobs("poison", 8, "p")
    for job_id in others + same_lane:
        recorder.store.create(new_job(job_id, repo=f"org/{job_id}"))

    letters = DeadLetterStore(ddb, fresh.tables.dead_letters)
    with running(runner):
        wait_for(lambda: all(status(j) == "active" for j in others), "other lanes", 120)
        # Done before the poison's lane is dead-lettered (after ~14 s of retries): the other
        # lanes did not wait for them.
        assert letters.list() == [], "the other lanes waited for the failing item's retries"
        wait_for(lambda: len(letters.list()) == 1, "the dead letter", 120)
        wait_for(lambda: all(status(j) == "active" for j in same_lane), "its lane", 120)
    runner.drain()

    (letter,) = letters.list()
    assert [key_of(r) for r in letter.records] == ["poison"]  # bisected down to the poison
    assert letter.attempts == LANES.max_retry_attempts + 1
    poison_seq = int(letter.start_sequence_number)
    for job_id in same_lane:  # behind the poison in its lane: after its dead letter
        assert min(log.of(job_id)) > poison_seq
    assert all(activations(j) == {1: 1} for j in others + same_lane)
    assert saved_checkpoint(fresh) > poison_seq
