"""Creates the tables the template defines (DynamoDB Local; on AWS the stack does it)."""

from __future__ import annotations

import logging
import time
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from scheduler.db.template import (
    JOBS_TABLE,
    REPOS_TABLE,
    TableDefinition,
    load_template,
    table_definition,
)
from scheduler.errors import StoreUnavailable
from scheduler.settings import Settings

log = logging.getLogger(__name__)

# The local stream runner's tables (checkpoints, on-failure destination): beside the template,
# in a file of their own, so that they are never deployed.
LOCAL_TABLES_FILE = "local-tables.yaml"
RUNNER_STATE_TABLE = "RunnerStateTable"
DEAD_LETTER_TABLE = "DeadLetterTable"


def definitions(settings: Settings) -> dict[str, TableDefinition]:
    """Table definitions from the template, keyed by the table name these settings use."""
    template = load_template(settings.template_path)
    local_only = load_template(settings.template_path.parent / LOCAL_TABLES_FILE)
    return {
        settings.tables.jobs: table_definition(template, JOBS_TABLE),
        settings.tables.repos: table_definition(template, REPOS_TABLE),
        settings.tables.runner_state: table_definition(local_only, RUNNER_STATE_TABLE),
        settings.tables.dead_letters: table_definition(local_only, DEAD_LETTER_TABLE),
    }


def ensure_tables(client: Any, settings: Settings) -> list[str]:
    """Create the missing tables (and their TTL); return the names created."""
    created = []
    try:
        existing = set(client.list_tables()["TableNames"])
        for name, definition in definitions(settings).items():
            if name in existing:
                _add_missing_indexes(client, name, definition)
                continue
            client.create_table(TableName=name, **definition.create_kwargs)
            client.get_waiter("table_exists").wait(
                TableName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 100}
            )
            if definition.ttl_attribute:
                client.update_time_to_live(
                    TableName=name,
                    TimeToLiveSpecification={
                        "AttributeName": definition.ttl_attribute,
                        "Enabled": True,
                    },
                )
            created.append(name)
            log.info("table created", extra={"table": name})
    except (BotoCoreError, ClientError) as exc:
        raise StoreUnavailable(f"cannot create tables: {exc}") from exc
    return created


def _add_missing_indexes(client: Any, name: str, definition: TableDefinition) -> None:
    """Create the template's indexes a table made by an older version lacks (a data directory
    kept across an upgrade), and wait until they serve. Items written before stay out of a new
    sparse index until they are written again."""
    wanted = definition.create_kwargs.get("GlobalSecondaryIndexes", [])
    table = client.describe_table(TableName=name)["Table"]
    present = {index["IndexName"] for index in table.get("GlobalSecondaryIndexes", [])}
    for index in wanted:
        if index["IndexName"] in present:
            continue
        client.update_table(
            TableName=name,
            AttributeDefinitions=definition.create_kwargs["AttributeDefinitions"],
            GlobalSecondaryIndexUpdates=[{"Create": index}],
        )
        log.warning("index added", extra={"table": name, "index": index["IndexName"]})
    if len(present) < len(wanted):
        _wait_for_indexes(client, name)


def _wait_for_indexes(client: Any, name: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        table = client.describe_table(TableName=name)["Table"]
        if all(i["IndexStatus"] == "ACTIVE" for i in table.get("GlobalSecondaryIndexes", [])):
            return
        time.sleep(0.2)
    raise StoreUnavailable(f"the indexes of {name} did not become active within {timeout:.0f}s")
