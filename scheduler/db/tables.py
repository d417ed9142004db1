"""Creates the tables the template defines (DynamoDB Local; on AWS the stack does it)."""

from __future__ import annotations

import logging
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

# Logical ids of the local stream runner's tables (checkpoints, on-failure destination).
RUNNER_STATE_TABLE = "RunnerStateTable"
DEAD_LETTER_TABLE = "DeadLetterTable"


def definitions(settings: Settings) -> dict[str, TableDefinition]:
    """Table definitions from the template, keyed by the table name these settings use."""
    template = load_template(settings.template_path)
    return {
        settings.tables.jobs: table_definition(template, JOBS_TABLE),
        settings.tables.repos: table_definition(template, REPOS_TABLE),
        settings.tables.runner_state: table_definition(template, RUNNER_STATE_TABLE),
        settings.tables.dead_letters: table_definition(template, DEAD_LETTER_TABLE),
    }


def ensure_tables(client: Any, settings: Settings) -> list[str]:
    """Create the missing tables (and their TTL); return the names created."""
    created = []
    try:
        existing = set(client.list_tables()["TableNames"])
        for name, definition in definitions(settings).items():
            if name in existing:
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
