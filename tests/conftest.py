"""Shared fixtures: one DynamoDB Local server per test session, tables cleared per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from scheduler import models
from scheduler.aws import client
from scheduler.local.dynamodb_local import DynamoDBLocal
from scheduler.settings import Settings, TableNames
from scheduler.store import JobStore
from scheduler.tables import ensure_tables

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


@pytest.fixture
def tables(settings: Settings, ddb: object) -> TableNames:
    """The session's tables, emptied for this test."""
    clear_table(ddb, settings.tables.jobs, "job_id")
    clear_table(ddb, settings.tables.repos, "repo")
    return settings.tables


@pytest.fixture
def store(settings: Settings, tables: TableNames) -> JobStore:
    return JobStore.from_settings(settings)
