"""Reads table definitions out of the SAM template (the one source of truth for tables).

The template is package data (``scheduler.resources``), so an installed ``scheduler`` finds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from scheduler.db.cfn_yaml import load_cfn_yaml
from scheduler.errors import ConfigurationError

# Logical ids in the template, by the role each table plays.
JOBS_TABLE = "JobsTable"
REPOS_TABLE = "ReposTable"

# CreateTable keys that the local stack copies from the template; everything else
# (TableName, PITR, tags) is AWS-only.
_CREATE_KEYS = (
    "AttributeDefinitions",
    "KeySchema",
    "GlobalSecondaryIndexes",
    "LocalSecondaryIndexes",
    "BillingMode",
    "StreamSpecification",
)


@dataclass(frozen=True)
class TableDefinition:
    logical_id: str
    create_kwargs: dict[str, Any]
    ttl_attribute: str | None

    @property
    def stream_view_type(self) -> str | None:
        spec = self.create_kwargs.get("StreamSpecification")
        return spec["StreamViewType"] if spec else None


def load_template(path: Path) -> dict[str, Any]:
    try:
        document = load_cfn_yaml(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"cannot read template {path}: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("Resources"), dict):
        raise ConfigurationError(f"template {path} has no Resources section")
    return document


def table_definition(template: dict[str, Any], logical_id: str) -> TableDefinition:
    resource = template["Resources"].get(logical_id)
    if not resource or resource.get("Type") != "AWS::DynamoDB::Table":
        raise ConfigurationError(f"template has no AWS::DynamoDB::Table named {logical_id}")
    props = resource["Properties"]
    kwargs = {key: props[key] for key in _CREATE_KEYS if key in props}
    if "StreamSpecification" in kwargs:
        kwargs["StreamSpecification"] = {"StreamEnabled": True, **kwargs["StreamSpecification"]}
    ttl = props.get("TimeToLiveSpecification")
    ttl_attribute = ttl["AttributeName"] if ttl and ttl.get("Enabled") else None
    return TableDefinition(logical_id, kwargs, ttl_attribute)
