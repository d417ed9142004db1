"""A safe YAML loader for CloudFormation templates: the short-form tags as long-form data.

``!Ref X`` becomes ``{"Ref": "X"}``, ``!Condition X`` ``{"Condition": "X"}`` and every other
``!Name ...`` ``{"Fn::Name": ...}``; ``!GetAtt A.B`` becomes ``{"Fn::GetAtt": ["A", "B"]}``.
It is PyYAML's ``SafeLoader`` underneath, so a template cannot construct Python objects.
Dates stay strings, as CloudFormation reads them (a policy's ``Version: 2012-10-17``).
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["CloudFormationLoader", "load_cfn_yaml"]

# The two intrinsics whose long form has no "Fn::" prefix.
_UNPREFIXED = frozenset({"Ref", "Condition"})


class CloudFormationLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` plus CloudFormation's short-form tags (``!Ref``, ``!Sub``, ...)."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = suffix if suffix in _UNPREFIXED else f"Fn::{suffix}"
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if name == "Fn::GetAtt":
            resource, _, attribute = str(value).partition(".")
            if not resource or not attribute:
                raise yaml.constructor.ConstructorError(
                    None, None, f"!GetAtt needs RESOURCE.ATTRIBUTE, not {value!r}", node.start_mark
                )
            value = [resource, attribute]
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    elif isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    else:  # pragma: no cover - PyYAML has no other node kind
        raise yaml.constructor.ConstructorError(
            None, None, f"unexpected node for !{suffix}", node.start_mark
        )
    return {name: value}


def _timestamp_as_text(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    return str(loader.construct_scalar(node))  # type: ignore[arg-type]


CloudFormationLoader.add_multi_constructor("!", _intrinsic)
CloudFormationLoader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_as_text)


def load_cfn_yaml(text: str) -> Any:
    """The document in ``text``; raises ``yaml.YAMLError`` on bad YAML or an unknown tag
    form."""
    return yaml.load(text, Loader=CloudFormationLoader)  # a SafeLoader subclass: safe
