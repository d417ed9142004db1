"""``scheduler dlq list`` / ``dlq replay`` through the real console script, against DynamoDB Local.

The dead letters are real: the local stream runner reads the session's jobs stream and hands
each batch to a stream function that fails (a store outage), so its batches exhaust their
retries and land in the dead-letter table with the stream records as DynamoDB delivered them.
One letter holds the INSERT records of three new jobs (which therefore were never activated),
another the record of an item that is not a job (a poison record). ``dlq replay`` hands the
records to the stream handler (the engine's dispatcher, with the repository configuration) in
the subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from scheduler.db.clients import client
from scheduler.db.dead_letters import DeadLetterStore
from scheduler.db.models import JobModel
from scheduler.db.queries import Queries
from scheduler.local.checkpoints import CheckpointStore
from scheduler.local.mapping import MappingConfig, PollingConfig
from scheduler.local.stream_runner import StreamRunner
from scheduler.settings import Settings, TableNames
from tests.conftest import MakeJob, stream_env

SCRIPT = Path(sys.executable).with_name("scheduler")
REPO = "octo-org/api"
JOB_IDS = ["dlq-1", "dlq-2", "dlq-3"]
# Fail fast: no bisection, no retry, so a failed batch is dead-lettered whole at once. The
# batching window keeps the three jobs' records in one batch.
MAPPING = MappingConfig(
    batch_size=100,
    batching_window_seconds=0.25,
    max_retry_attempts=0,
    report_batch_item_failures=True,
)
FAST = PollingConfig(
    idle_min_seconds=0.002, idle_max_seconds=0.02, retry_base_seconds=0.01, retry_max_seconds=0.05
)


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def refused(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    """An error: the exit code, nothing on stdout, one line on stderr naming the cause."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def clear(ddb: Any, table: str, keys: list[str]) -> None:
    names = {f"#k{n}": key for n, key in enumerate(keys)}
    for page in ddb.get_paginator("scan").paginate(
        TableName=table, ProjectionExpression=", ".join(names), ExpressionAttributeNames=names
    ):
        for item in page["Items"]:
            ddb.delete_item(TableName=table, Key=item)


class Broken:
    """A stream function with a bug (fixed by the time of the replay): every batch fails.

    Not a store outage: a batch the database failed waits for it and is never dead-lettered.
    """

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        raise RuntimeError("cannot activate: the function is broken")


@pytest.fixture
def env(settings: Settings, tables: TableNames, ddb: Any) -> dict[str, str]:
    """The subprocess environment, with empty jobs, repos, dead-letter and checkpoint tables."""
    clear(ddb, settings.tables.dead_letters, ["source", "dead_letter_id"])
    clear(ddb, settings.tables.runner_state, ["stream_arn", "shard_id"])
    return stream_env(settings)


@pytest.fixture
def letters(env: dict[str, str], settings: Settings, ddb: Any, make_job: MakeJob) -> dict[str, Any]:
    """Two dead letters, by what they hold: ``jobs`` (three new jobs) and ``poison``."""
    runner = StreamRunner(
        dynamodb=ddb,
        streams=client("dynamodbstreams", settings),
        table_name=settings.tables.jobs,
        checkpoints=CheckpointStore(ddb, settings.tables.runner_state, "dlq-test"),
        dead_letters=DeadLetterStore(ddb, settings.tables.dead_letters),
        handler=Broken(),
        mapping=MAPPING,
        polling=FAST,
    )
    runner.skip_to_end()
    for job_id in JOB_IDS:
        make_job(job_id, repo=REPO)
    runner.drain()
    ddb.put_item(  # a job item that cannot be read as a job
        TableName=settings.tables.jobs,
        Item={"job_id": {"S": "poison"}, "status": {"S": "pending"}, "repo": {"S": "x/y"}},
    )
    runner.drain()
    found = DeadLetterStore(ddb, settings.tables.dead_letters).list()
    by_jobs = {tuple(r["dynamodb"]["Keys"]["job_id"]["S"] for r in x.records): x for x in found}
    assert set(by_jobs) == {tuple(JOB_IDS), ("poison",)}, by_jobs
    return {"jobs": by_jobs[tuple(JOB_IDS)], "poison": by_jobs[("poison",)]}


def statuses() -> dict[str, tuple[str, int, int]]:
    """Status, attempt and number of history entries of each job (what a replay could change)."""
    found = {}
    for job_id in JOB_IDS:
        job = JobModel.get(job_id, consistent_read=True)
        found[job_id] = (str(job.status), int(job.attempt), len(job.history or []))
    return found


def replayed(settings: Settings, ddb: Any) -> dict[str, bool]:
    """Which letters are marked replayed (read in-process: the CLI's listing has its own test)."""
    letters = DeadLetterStore(ddb, settings.tables.dead_letters).list()
    return {letter.dead_letter_id: letter.replayed_at is not None for letter in letters}


def test_list_shows_each_failed_batch(letters: dict[str, Any], env: dict[str, str]) -> None:
    now = time.time() * 1000
    result = run("dlq", "list", "--json", env=env)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    found = {item["dead_letter_id"]: item for item in json.loads(result.stdout)["dead_letters"]}
    jobs, poison = found[letters["jobs"].dead_letter_id], found[letters["poison"].dead_letter_id]
    assert len(found) == 2
    assert (jobs["records"], jobs["job_ids"], jobs["replayed"]) == (3, JOB_IDS, False)
    assert (poison["records"], poison["job_ids"], poison["replayed_at"]) == (1, ["poison"], None)
    assert jobs["condition"] == "RetryAttemptsExhausted" and jobs["attempts"] == 1
    assert "RuntimeError" in jobs["error"] and "broken" in jobs["error"]
    assert now - 60_000 < jobs["failed_at"] <= now

    human = run("dlq", "list", env=env)
    assert human.returncode == 0 and "\x1b[" not in human.stdout
    header, *rows = [line for line in human.stdout.splitlines() if line.strip()]
    assert header.split()[:4] == ["ID", "FAILED", "CONDITION", "RECORDS"]
    row = next(line for line in rows if line.startswith(letters["jobs"].dead_letter_id))
    assert "ago" in row and "RetryAttemptsExhausted" in row and "dlq-1, dlq-2, dlq-3" in row


def test_replay_one_letter_twice_is_harmless(
    letters: dict[str, Any], env: dict[str, str], settings: Settings, ddb: Any, tmp_path: Path
) -> None:
    letter_id = letters["jobs"].dead_letter_id
    assert {status for status, _, _ in statuses().values()} == {"pending"}  # never activated
    config = tmp_path / "repos.toml"
    config.write_text(f'[repos."{REPO}"]\nconcurrency = 1\n')

    first = run("dlq", "replay", letter_id, "--config", str(config), "--json", env=env)
    assert first.returncode == 0 and first.stderr == "", first.stderr
    answer = json.loads(first.stdout)
    assert (answer["replayed"], answer["records"], answer["failed_records"]) == (True, 3, [])
    assert answer["previously_replayed_at"] is None
    after_first = statuses()
    # The engine's configuration applies: one slot, so the other two jobs stay queued.
    assert [status for status, _, _ in after_first.values()] == ["active", "pending", "pending"]
    stats = Queries().stats(REPO)
    assert (stats.running, stats.slot_limit, stats.counts["pending"]) == (1, 1, 2)
    assert replayed(settings, ddb) == {letter_id: True, letters["poison"].dead_letter_id: False}

    # Again: every guarded write finds its job moved on, so nothing changes.
    second = run("dlq", "replay", letter_id, "--config", str(config), env=env)
    assert second.returncode == 0 and second.stderr == ""
    assert second.stdout.strip() == f"replayed {letter_id} (again): 3 records"
    assert statuses() == after_first
    assert Queries().stats(REPO) == stats  # no slot taken twice


def test_a_letter_that_still_fails_is_refused_and_kept(
    letters: dict[str, Any], env: dict[str, str], settings: Settings, ddb: Any
) -> None:
    letter = letters["poison"]
    result = run("dlq", "replay", letter.dead_letter_id, "--json", env=env)
    refused(result, 1, letter.dead_letter_id, "still failing", "not a readable job", "stays")
    assert "Traceback" not in result.stderr
    assert replayed(settings, ddb)[letter.dead_letter_id] is False


def test_replay_all_twice(letters: dict[str, Any], env: dict[str, str]) -> None:
    first = run("dlq", "replay", "--all", "--json", env=env)
    assert first.returncode == 1, first.stderr  # the poison letter still fails
    summary = json.loads(first.stdout)
    assert (summary["replayed"], summary["failed"], summary["skipped"]) == (1, 1, 0)
    outcome = {item["dead_letter_id"]: item["replayed"] for item in summary["dead_letters"]}
    assert outcome == {
        letters["jobs"].dead_letter_id: True,
        letters["poison"].dead_letter_id: False,
    }
    after_first = statuses()
    # The built-in configuration: two slots.
    assert [status for status, _, _ in after_first.values()] == ["active", "active", "pending"]

    second = run("dlq", "replay", "--all", env=env)
    assert second.returncode == 1
    assert second.stdout.splitlines()[-1] == "replayed 0, failed 1, skipped 1 (replayed before)"
    assert "Traceback" not in second.stderr
    assert statuses() == after_first


def test_unknown_ids_bad_arguments_and_an_empty_queue(env: dict[str, str]) -> None:
    refused(run("dlq", "replay", "no-such-letter", env=env), 1, "no-such-letter", "not found")
    assert run("dlq", "list", env=env).stdout.strip() == "no dead letters"
    empty = run("dlq", "replay", "--all", "--json", env=env)
    assert empty.returncode == 0
    assert json.loads(empty.stdout) == {
        "replayed": 0,
        "failed": 0,
        "skipped": 0,
        "dead_letters": [],
    }
    refused(run("dlq", "replay", env=env), 2, "ID", "--all")
    refused(run("dlq", "replay", "some-id", "--all", env=env), 2, "not both")
    wrong = {**env, "SCHEDULER_DYNAMODB_ENDPOINT": "http://127.0.0.1:9"}
    refused(run("dlq", "list", env=wrong), 2, "cannot read dead letters")
    refused(run("dlq", "replay", "x", env=wrong), 2, "cannot read dead letter")
