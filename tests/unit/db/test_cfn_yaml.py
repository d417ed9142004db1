"""The CloudFormation YAML loader: short-form tags read as long form, safely, and the shipped
template reads the same through the package as through infra/."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from scheduler import resources
from scheduler.db.cfn_yaml import load_cfn_yaml
from scheduler.db.template import load_template
from scheduler.errors import ConfigurationError

ROOT = Path(__file__).resolve().parents[3]

SAMPLE = """
Conditions:
  HasToken: !Not [!Equals [!Ref Token, ""]]
Resources:
  Fn:
    Properties:
      Role: !GetAtt FnRole.Arn
      Other: !GetAtt [Queue, QueueName]
      Name: !Sub "${AWS::StackName}-jobs"
      Long: !Sub
        - "arn:${Partition}:x/${Name}"
        - Name: !Ref JobsTable
      Maybe: !If [HasToken, !Ref Token, !Ref "AWS::NoValue"]
      Cond: !Condition HasToken
      Parts: !Join [",", [!ImportValue Shared, !Select [0, !GetAZs ""]]]
      Policy:
        Version: 2012-10-17
"""


def test_short_form_tags_become_long_form_data() -> None:
    doc = load_cfn_yaml(SAMPLE)
    assert doc["Conditions"]["HasToken"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "Token"}, ""]}]}
    props = doc["Resources"]["Fn"]["Properties"]
    assert props["Role"] == {"Fn::GetAtt": ["FnRole", "Arn"]}
    assert props["Other"] == {"Fn::GetAtt": ["Queue", "QueueName"]}
    assert props["Name"] == {"Fn::Sub": "${AWS::StackName}-jobs"}
    assert props["Long"] == {
        "Fn::Sub": ["arn:${Partition}:x/${Name}", {"Name": {"Ref": "JobsTable"}}]
    }
    assert props["Maybe"] == {"Fn::If": ["HasToken", {"Ref": "Token"}, {"Ref": "AWS::NoValue"}]}
    assert props["Cond"] == {"Condition": "HasToken"}
    assert props["Parts"] == {
        "Fn::Join": [
            ",",
            [{"Fn::ImportValue": "Shared"}, {"Fn::Select": [0, {"Fn::GetAZs": ""}]}],
        ]
    }
    assert props["Policy"]["Version"] == "2012-10-17"  # a string, as CloudFormation reads it


@pytest.mark.parametrize(
    "text",
    [
        "x: !!python/object/apply:os.system ['true']",
        "x: !!python/name:os.system",
        "x: !GetAtt NoAttribute",
    ],
)
def test_python_tags_and_malformed_get_att_are_refused(text: str) -> None:
    with pytest.raises(yaml.YAMLError):
        load_cfn_yaml(text)


def _count(node: Any, key: str) -> int:
    if isinstance(node, dict):
        return (key in node) + sum(_count(value, key) for value in node.values())
    if isinstance(node, list):
        return sum(_count(value, key) for value in node)
    return 0


@pytest.mark.parametrize("name", [resources.TEMPLATE, resources.LOCAL_TABLES])
def test_every_tag_of_the_shipped_templates_is_read(name: str) -> None:
    """Each ``!Tag`` written in the file is one long-form intrinsic in what is loaded."""
    path = resources.path_of(name)
    assert path.read_bytes() == (ROOT / "infra" / name).read_bytes()  # one source: infra/
    text = path.read_text(encoding="utf-8")
    document = load_template(path)
    tags = re.findall(r"(?<![!\w])!(\w+)", text)
    assert tags or name == resources.LOCAL_TABLES
    for tag in set(tags):
        long_form = tag if tag in ("Ref", "Condition") else f"Fn::{tag}"
        assert _count(document, long_form) == tags.count(tag), tag


def test_a_template_without_resources_is_a_configuration_error(tmp_path: Path) -> None:
    bad = tmp_path / "t.yaml"
    bad.write_text("Outputs: {}\n")
    with pytest.raises(ConfigurationError, match="no Resources"):
        load_template(bad)
    bad.write_text("Resources: !Ref [\n")
    with pytest.raises(ConfigurationError, match="cannot read template"):
        load_template(bad)
