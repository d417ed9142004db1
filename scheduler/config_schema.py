"""The repository configuration's JSON Schema (``config_schema.json``) and its validator.

The schema is the one description of the file's keys, types, ranges and choices: editors and
other tools can read it, and :mod:`scheduler.config` validates every file with it here. The
validator understands the part of JSON Schema 2020-12 that the schema uses (``type``, ``enum``,
``properties``, ``additionalProperties``, ``propertyNames``, ``items``, ``minItems``,
``minLength``, ``pattern``, ``minimum``/``maximum``, local ``$ref``): a few dozen lines, where a
general validator would add its import time to every Lambda cold start. A test holds it to
the ``jsonschema`` package's verdicts. It collects every problem, not only the first, each
with its dotted key (``repos."a/b".retry.on[0]``) and a message for a person; the schema's
``x-*`` keywords carry the messages that its plain keywords cannot say.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

__all__ = ["PathPart", "Problem", "schema", "validate"]

PathPart = str | int


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a document: where (``path`` of keys and indexes, ``key`` as
    shown) and what."""

    path: tuple[PathPart, ...]
    key: str
    message: str


@cache
def schema() -> Mapping[str, Any]:
    """The schema, read once from the package (when a file is first validated)."""
    from importlib import resources

    text = resources.files("scheduler").joinpath("config_schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def validate(document: Mapping[str, Any]) -> list[Problem]:
    """Every problem of ``document`` (a parsed TOML file), in the document's order."""
    root = schema()
    problems: list[Problem] = []
    _Walk(root, problems).value(document, root, (), "")
    return problems


@cache
def _regex(pattern: str) -> re.Pattern[str]:
    # JSON Schema's patterns are ECMA-262 searches, whose `$` is the end of the text where
    # Python's also matches before a final newline: the schema ends its patterns with
    # `(?![\s\S])`, which means the end in both.
    return re.compile(pattern)


class _Walk:
    def __init__(self, root: Mapping[str, Any], problems: list[Problem]) -> None:
        self.root = root
        self.problems = problems

    def fail(self, path: tuple[PathPart, ...], key: str, message: str) -> None:
        self.problems.append(Problem(path, key or "(file)", message))

    def resolve(self, rule: Mapping[str, Any]) -> Mapping[str, Any]:
        """``rule`` with its local ``$ref`` merged in (its own keywords win)."""
        while "$ref" in rule:
            target: Any = self.root
            for part in rule["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            rule = {**target, **{k: v for k, v in rule.items() if k != "$ref"}}
        return rule

    def value(
        self, value: Any, rule: Mapping[str, Any], path: tuple[PathPart, ...], key: str
    ) -> None:
        rule = self.resolve(rule)
        if not self.typed(value, rule, path, key):
            return
        if "enum" in rule and value not in rule["enum"]:
            shown = repr(value) if isinstance(value, str) else _toml_type(value)
            names = ", ".join(f'"{choice}"' for choice in rule["enum"])
            hint = _near(value, rule["enum"])
            self.fail(path, key, f"must be one of {names}, not {shown}{hint}")
            return
        if isinstance(value, str):
            self.string(value, rule, path, key)
        elif isinstance(value, int) and not isinstance(value, bool):
            low, high = rule.get("minimum"), rule.get("maximum")
            if (low is not None and value < low) or (high is not None and value > high):
                self.fail(path, key, f"must be between {low} and {high}, not {value}")
        elif isinstance(value, list):
            if len(value) < rule.get("minItems", 0):
                self.fail(path, key, "must not be empty")
            for index, item in enumerate(value):
                self.value(item, rule.get("items", {}), (*path, index), f"{key}[{index}]")
        elif isinstance(value, dict):
            self.table(value, rule, path, key)

    def typed(
        self, value: Any, rule: Mapping[str, Any], path: tuple[PathPart, ...], key: str
    ) -> bool:
        """Whether ``value`` is of the rule's type (a problem said when not)."""
        expected = rule.get("type")
        if expected is None or _is_type(value, expected):
            return True
        if expected == "array" and isinstance(value, str) and "x-string-message" in rule:
            self.fail(path, key, rule["x-string-message"])
        elif expected == "array":
            items = self.resolve(rule.get("items", {}))
            strings = items.get("type") == "string" or all(
                isinstance(choice, str) for choice in items.get("enum", [None])
            )
            of = " of strings" if strings else ""
            self.fail(path, key, f"must be an array{of}, not {_toml_type(value)}")
        elif expected == "object":
            self.fail(path, key, f"must be a table, not {_toml_type(value)}")
        elif expected == "integer":
            self.fail(path, key, f"must be an integer, not {_toml_type(value)}")
        elif expected == "boolean":
            self.fail(path, key, f"must be true or false, not {_toml_type(value)}")
        elif rule.get("minLength", 0) > 0 or "pattern" in rule:
            self.fail(path, key, f"must be a non-empty string, not {_toml_type(value)}")
        else:
            self.fail(path, key, f"must be a string, not {_toml_type(value)}")
        return False

    def string(
        self, value: str, rule: Mapping[str, Any], path: tuple[PathPart, ...], key: str
    ) -> None:
        if len(value) < rule.get("minLength", 0):
            self.fail(path, key, "must be a non-empty string")
        elif "pattern" in rule and not _regex(rule["pattern"]).search(value):
            message = rule.get("x-pattern-message", "must match {pattern}")
            self.fail(path, key, message.format(value=repr(value), pattern=rule["pattern"]))

    def table(
        self, value: dict[str, Any], rule: Mapping[str, Any], path: tuple[PathPart, ...], key: str
    ) -> None:
        known: Mapping[str, Any] = rule.get("properties", {})
        extra = rule.get("additionalProperties", True)
        names = self.resolve(rule.get("propertyNames", {}))
        for name, item in value.items():
            if name in known:
                self.value(item, known[name], (*path, name), f"{key}.{name}" if key else name)
            elif extra is False:
                shown = f"{key}.{name}" if key else name
                hint = _near(name, known)
                known_names = ", ".join(sorted(known))
                self.fail((*path, name), shown, f"unknown key{hint} (known: {known_names})")
            else:
                # An entry of a map (a repository's table): its name is data, always quoted (and
                # escaped: a message is one line).
                entry_key = f"{key}.{json.dumps(name, ensure_ascii=False)}"
                before = len(self.problems)
                if names:
                    self.string(name, names, (*path, name), entry_key)
                if len(self.problems) == before and isinstance(extra, Mapping):
                    self.value(item, extra, (*path, name), entry_key)


def _near(value: object, choices: Iterable[object]) -> str:
    """``, did you mean 'x'?`` for a near miss of a string (a typo), else nothing."""
    if not isinstance(value, str):
        return ""
    import difflib  # only for a bad file: kept out of every Lambda cold start

    close = difflib.get_close_matches(value, [c for c in choices if isinstance(c, str)], n=1)
    return f", did you mean {close[0]!r}?" if close else ""


def _is_type(value: Any, expected: str) -> bool:
    match expected:
        case "object":
            return isinstance(value, dict)
        case "array":
            return isinstance(value, list)
        case "string":
            return isinstance(value, str)
        case "integer":
            return isinstance(value, int) and not isinstance(value, bool)
        case "boolean":
            return isinstance(value, bool)
        case "number":
            return isinstance(value, int | float) and not isinstance(value, bool)
    raise ValueError(f"the configuration schema uses a type this validator lacks: {expected}")


def _toml_type(value: object) -> str:
    """What a TOML value is, as a person would say it."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__  # dates and times
