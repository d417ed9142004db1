"""The SAM template and the PynamoDB models describe the same tables."""

from __future__ import annotations

from typing import Any

import pytest
from pynamodb.models import Model

from scheduler.db.models import JobModel, RepoModel
from scheduler.db.template import JOBS_TABLE, REPOS_TABLE, load_template, table_definition
from scheduler.settings import DEFAULT_TEMPLATE


def _keys(key_schema: list[dict[str, str]]) -> dict[str, str]:
    return {key["AttributeName"]: key["KeyType"] for key in key_schema}


def _model_shape(model: type[Model]) -> dict[str, Any]:
    schema = model._get_schema()
    attributes = {a["AttributeName"]: a["AttributeType"] for a in schema["attribute_definitions"]}
    indexes = {}
    for index in schema["global_secondary_indexes"]:
        attributes.update(
            {a["AttributeName"]: a["AttributeType"] for a in index["attribute_definitions"]}
        )
        indexes[index["index_name"]] = (
            _keys(index["key_schema"]),
            index["projection"]["ProjectionType"],
        )
    ttl = model._ttl_attribute()
    return {
        "attributes": attributes,
        "keys": _keys(schema["key_schema"]),
        "indexes": indexes,
        "stream": getattr(model.Meta, "stream_view_type", None),
        "ttl": ttl.attr_name if ttl else None,
        "billing": model.Meta.billing_mode,
    }


def _template_shape(logical_id: str) -> dict[str, Any]:
    definition = table_definition(load_template(DEFAULT_TEMPLATE), logical_id)
    kwargs = definition.create_kwargs
    return {
        "attributes": {
            a["AttributeName"]: a["AttributeType"] for a in kwargs["AttributeDefinitions"]
        },
        "keys": _keys(kwargs["KeySchema"]),
        "indexes": {
            index["IndexName"]: (_keys(index["KeySchema"]), index["Projection"]["ProjectionType"])
            for index in kwargs.get("GlobalSecondaryIndexes", [])
        },
        "stream": definition.stream_view_type,
        "ttl": definition.ttl_attribute,
        "billing": kwargs["BillingMode"],
    }


@pytest.mark.parametrize(
    ("model", "logical_id"), [(JobModel, JOBS_TABLE), (RepoModel, REPOS_TABLE)]
)
def test_template_and_model_agree(model: type[Model], logical_id: str) -> None:
    assert _model_shape(model) == _template_shape(logical_id)


def test_jobs_table_streams_both_images_and_repos_table_has_no_stream() -> None:
    assert _template_shape(JOBS_TABLE)["stream"] == "NEW_AND_OLD_IMAGES"
    assert _template_shape(REPOS_TABLE)["stream"] is None


def test_index_key_attributes_are_declared_on_the_model() -> None:
    # Every attribute the template declares must be a model attribute of the same type.
    model_attributes = JobModel.get_attributes()
    for name in _template_shape(JOBS_TABLE)["attributes"]:
        assert name in {attr.attr_name for attr in model_attributes.values()}


def test_template_passes_cfn_lint() -> None:
    from cfnlint.api import lint

    # The main commercial regions: CodeBuild (the builds) is not offered in every region.
    regions = ["us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-northeast-1"]
    matches = lint(DEFAULT_TEMPLATE.read_text(), regions=regions)
    assert [str(m) for m in matches if m.rule.severity in ("error", "warning")] == []
