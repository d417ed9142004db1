"""A step as plain data (JSON / a DynamoDB map) and back, so each step item can carry its own.

The ``if`` is stored as its text and parsed again when read: the text is what was validated at
load time, and the tree is rebuilt by the same parser (never by ``eval``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypedDict

from scheduler.config import RetryPolicy
from scheduler.pipelines.conditions import parse_condition
from scheduler.pipelines.model import PIPELINE_FILE, Pipeline, Step

__all__ = ["RetryRecord", "StepRecord", "pipeline_from_records", "step_from_record", "step_record"]


class RetryRecord(TypedDict):
    attempts: int
    on: list[str]
    backoff_seconds: int


StepRecord = TypedDict(
    "StepRecord",
    {
        "key": str,
        "name": str,
        "command": list[str],
        "needs": list[str],
        "if": str,
        "env": dict[str, str],
        "matrix": dict[str, str],
        "timeout_seconds": int | None,
        "retry": RetryRecord | None,
        "concurrency_group": str | None,
        "line": int | None,
    },
)


def step_record(step: Step) -> StepRecord:
    retry: RetryRecord | None = None
    if step.retry is not None:
        retry = {
            "attempts": step.retry.attempts,
            "on": list(step.retry.on),
            "backoff_seconds": step.retry.backoff_seconds,
        }
    return {
        "key": step.key,
        "name": step.name,
        "command": list(step.command),
        "needs": list(step.needs),
        "if": step.condition.text,
        "env": dict(step.env),
        "matrix": dict(step.matrix),
        "timeout_seconds": step.timeout_seconds,
        "retry": retry,
        "concurrency_group": step.concurrency_group,
        "line": step.line,
    }


def step_from_record(record: StepRecord) -> Step:
    retry = record["retry"]
    return Step(
        key=record["key"],
        name=record["name"],
        command=tuple(record["command"]),
        needs=tuple(record["needs"]),
        condition=parse_condition(record["if"]),
        env=tuple(sorted(record["env"].items())),
        matrix=tuple(sorted(record["matrix"].items())),
        timeout_seconds=record["timeout_seconds"],
        retry=None
        if retry is None
        else RetryPolicy(
            attempts=retry["attempts"],
            on=tuple(retry["on"]),
            backoff_seconds=retry["backoff_seconds"],
        ),
        concurrency_group=record["concurrency_group"],
        line=record["line"],
    )


def pipeline_from_records(
    records: Iterable[StepRecord], *, source: str = PIPELINE_FILE
) -> Pipeline:
    """The pipeline of stored steps, read in any order (a query returns them by key)."""
    steps = [step_from_record(record) for record in records]
    placed: dict[str, Step] = {}
    # Steps given in pipeline order are placed in one pass, in that order; in any other order,
    # each pass places at least one (stored steps came from a valid pipeline), else the
    # Pipeline constructor below names the need that is missing.
    while len(placed) < len(steps):
        before = len(placed)
        for step in steps:
            if step.key not in placed and all(need in placed for need in step.needs):
                placed[step.key] = step
        if len(placed) == before:
            break
    rest = [step for step in steps if step.key not in placed]
    return Pipeline((*placed.values(), *rest), source=source)
