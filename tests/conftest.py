"""Shared fixtures: one DynamoDB Local server per test session, tables cleared per test."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scheduler.db import models
from scheduler.db.clients import client
from scheduler.db.store import JobStore
from scheduler.db.tables import ensure_tables
from scheduler.local.dynamodb_local import DynamoDBLocal
from scheduler.settings import Settings, TableNames

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def dynamodb_local() -> Iterator[DynamoDBLocal]:
    base = Settings.from_env({})
    server = DynamoDBLocal(base.dynamodb_local_dir, heap_mb=512)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def settings(dynamodb_local: DynamoDBLocal) -> Settings:
    """Settings for this session's tables; exported to the environment for subprocesses."""
    tables = TableNames().with_prefix(f"t{uuid.uuid4().hex[:6]}-")
    result = Settings.from_env({}).for_local(dynamodb_local.endpoint, tables)
    os.environ.update(
        SCHEDULER_DYNAMODB_ENDPOINT=dynamodb_local.endpoint,
        SCHEDULER_JOBS_TABLE=tables.jobs,
        SCHEDULER_REPOS_TABLE=tables.repos,
        AWS_REGION=result.region,
    )
    ensure_tables(client("dynamodb", result), result)
    models.bind(result)
    return result


@pytest.fixture(scope="session")
def ddb(settings: Settings) -> object:
    return client("dynamodb", settings)


def clear_table(ddb: object, name: str, key: str) -> None:
    paginator = ddb.get_paginator("scan")  # type: ignore[attr-defined]
    for page in paginator.paginate(TableName=name, ProjectionExpression=key):
        for start in range(0, len(page["Items"]), 25):
            batch = page["Items"][start : start + 25]
            ddb.batch_write_item(  # type: ignore[attr-defined]
                RequestItems={name: [{"DeleteRequest": {"Key": item}} for item in batch]}
            )


def counting_queue_reads(store: JobStore) -> list[str]:
    """The repositories whose queue ``store`` reads (``JobReads.queued``), in order."""
    calls: list[str] = []
    queued = store.reads.queued

    def counted(repo: str, **kwargs: Any) -> Any:
        calls.append(repo)
        return queued(repo, **kwargs)

    store.reads.queued = counted  # type: ignore[method-assign]
    return calls


def counting_activations(store: JobStore) -> list[str]:
    """Activations ``store`` is asked for (by the dispatcher, say), by outcome: "ok" or the
    error's name: one per write."""
    outcomes: list[str] = []
    activate = store.activate

    def wrapper(job: Any, **kwargs: Any) -> Any:
        try:
            done = activate(job, **kwargs)
        except Exception as exc:
            outcomes.append(type(exc).__name__)
            raise
        outcomes.append("ok")
        return done

    store.activate = wrapper  # type: ignore[method-assign]
    return outcomes


@pytest.fixture
def tables(settings: Settings, ddb: object) -> TableNames:
    """The session's tables, emptied for this test."""
    clear_table(ddb, settings.tables.jobs, "job_id")
    clear_table(ddb, settings.tables.repos, "repo")
    return settings.tables


@pytest.fixture
def store(settings: Settings, tables: TableNames) -> JobStore:
    return JobStore.from_settings(settings)


@pytest.fixture
def ticking_store(settings: Settings, tables: TableNames) -> JobStore:
    """A store whose clock moves 1 s per reading, starting ~30 min ago (a strict job order)."""
    import itertools
    import time

    start = time.time_ns() // 1_000_000 - 1_800_000
    ticks = itertools.count()
    return JobStore.from_settings(settings, clock=lambda: start + 1000 * next(ticks))


def _bound_models() -> list[tuple[object, dict[str, object]]]:
    keys = ("table_name", "region", "host", "aws_access_key_id", "aws_secret_access_key")
    return [
        (model, {key: getattr(model.Meta, key, None) for key in keys}) for model in models.MODELS
    ]


@contextlib.contextmanager
def own_dynamodb(
    prefix: str = "s-", *, data_dir: Path | None = None, port: int | None = None
) -> Iterator[tuple[DynamoDBLocal, Settings]]:
    """A DynamoDB Local of its own with all tables, the models bound to it meanwhile."""
    base = Settings.from_env({})
    server = DynamoDBLocal(base.dynamodb_local_dir, heap_mb=512, data_dir=data_dir, port=port)
    server.start()
    before = _bound_models()
    try:
        result = base.for_local(server.endpoint, TableNames().with_prefix(prefix))
        ensure_tables(client("dynamodb", result), result)
        models.bind(result)
        yield server, result
    finally:
        for model, meta in before:
            for key, value in meta.items():
                setattr(model.Meta, key, value)  # type: ignore[attr-defined]
            model._connection = None  # type: ignore[attr-defined]
        server.stop()


@pytest.fixture(scope="module")
def stream_settings() -> Iterator[Settings]:
    """A DynamoDB Local of this module's own, with all tables: for the heavy stream tests.

    DynamoDB Local slows down as its stream store fills, so stream-heavy modules do not share the
    session's server. The models are bound to it for the module and re-bound afterwards.
    """
    with own_dynamodb() as (_server, result):
        yield result


def stream_env(settings: Settings) -> dict[str, str]:
    """The environment that points a subprocess (a runner) at ``settings``' tables."""
    assert settings.dynamodb_endpoint
    return {
        **os.environ,
        "SCHEDULER_DYNAMODB_ENDPOINT": settings.dynamodb_endpoint,
        "SCHEDULER_JOBS_TABLE": settings.tables.jobs,
        "SCHEDULER_REPOS_TABLE": settings.tables.repos,
        "SCHEDULER_RUNNER_STATE_TABLE": settings.tables.runner_state,
        "SCHEDULER_DEAD_LETTER_TABLE": settings.tables.dead_letters,
        "AWS_REGION": settings.region,
    }


class MakeJob:
    """Creates a job through ``JobStore.create`` and drives it to a status by legal steps."""

    PATHS: dict[str, list[str]] = {
        "waiting": [],  # created so: a fork's pull request awaiting approval
        "pending": [],
        "active": ["activate"],
        "passed": ["activate", "pass"],
        "failed": ["activate", "fail"],
        "cancelled": ["cancel"],
    }

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def __call__(
        self,
        job_id: str,
        status: str = "pending",
        *,
        repo: str = "octo-org/api",
        branch: str = "main",
        event: str = "push",
    ) -> object:
        from scheduler.db.store import JobState, NewJob, Outcome
        from state_machines import JobStatus

        waits = str(status) == "waiting"
        job = self.store.create(
            NewJob(
                job_id=job_id,
                repo=repo,
                event=event,
                sha="c0ffee" + "0" * 34,
                timeout_seconds=600,
                ref=f"refs/heads/{branch}",
                branch=branch,
                pr_number=7 if event == "pull_request" else None,
                sender="octocat",
                delivery_id=job_id,
                fork=waits,
                status=JobStatus.WAITING if waits else JobStatus.PENDING,
            )
        )
        for trigger in self.PATHS[str(status)]:
            outcome = Outcome(reason="exit_code", exit_code=1) if trigger == "fail" else None
            moved = self.store.transition(
                job, trigger, actor="test", slot_limit=100, outcome=outcome
            )
            assert isinstance(moved, JobState)
            job = moved
        return job


@pytest.fixture
def make_job(ticking_store: JobStore) -> MakeJob:
    """``make_job(job_id, status, repo=, branch=, event=)`` on the ticking store."""
    return MakeJob(ticking_store)
