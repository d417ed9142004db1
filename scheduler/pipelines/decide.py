"""Fan-in, as a pure function: which blocked steps run or are skipped, and the verdict.

The engine calls :func:`decide` with every step's current status whenever a step ends (and
once at the start, with none ended); it writes each answer with a guarded transition, so
replaying the same decision changes nothing. A step is only ever decided once all of its
needs have ended. Skips cascade inside one decision: a step skipped here counts as ended for
its own dependents, so one call settles everything that can be settled.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from scheduler.pipelines.conditions import ConditionInputs
from scheduler.pipelines.model import ENDED_STATUSES, Pipeline, Step, StepStatus

__all__ = ["Decision", "RunFacts", "Verdict", "decide", "downstream", "verdict"]

Verdict = Literal["running", "passed", "failed"]


@dataclass(frozen=True, slots=True)
class RunFacts:
    """What a run's ``if`` conditions may read about the delivery ("" when it has none)."""

    branch: str = ""
    tag: str = ""
    event: str = ""
    pr: str = ""

    def variables(self) -> dict[str, str]:
        return {"branch": self.branch, "tag": self.tag, "event": self.event, "pr": self.pr}


@dataclass(frozen=True, slots=True)
class Decision:
    """Blocked steps to move: to ``pending`` (runnable) or to ``skipped``; in pipeline order."""

    runnable: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()


def decide(pipeline: Pipeline, statuses: Mapping[str, StepStatus], facts: RunFacts) -> Decision:
    """For the steps still ``blocked`` (a step missing from ``statuses`` is blocked), those
    whose needs have all ended: runnable when their ``if`` holds, skipped otherwise."""
    known: dict[str, str] = {key: statuses.get(key, "blocked") for key in pipeline.keys}
    runnable: list[str] = []
    skipped: list[str] = []
    variables = facts.variables()
    # Pipeline order puts every need before its dependents, so one pass sees cascaded skips.
    for step in pipeline.steps:
        if known[step.key] != "blocked":
            continue
        if not all(known[need] in ENDED_STATUSES for need in step.needs):
            continue
        if step.condition.evaluate(_inputs(pipeline, step, known, variables)):
            runnable.append(step.key)
        else:
            skipped.append(step.key)
            known[step.key] = "skipped"
    return Decision(tuple(runnable), tuple(skipped))


def _inputs(
    pipeline: Pipeline, step: Step, known: Mapping[str, str], variables: dict[str, str]
) -> ConditionInputs:
    upstream = [known[key] for key in pipeline.ancestors(step.key)]

    def need_status(ref: str) -> str:
        return _combined([known[key] for key in pipeline.resolve(ref)])

    return ConditionInputs(
        variables=variables,
        need_status=need_status,
        upstream_failed="failed" in upstream,
        upstream_cancelled="cancelled" in upstream,
    )


def _combined(statuses: list[str]) -> str:
    """One status for a matrixed need: its worst variant (failed, cancelled), else passed
    when any variant ran, else skipped."""
    for worst in ("failed", "cancelled", "passed"):
        if worst in statuses:
            return worst
    return "skipped" if statuses else ""


def verdict(pipeline: Pipeline, statuses: Mapping[str, StepStatus]) -> Verdict:
    """``running`` until every step ended; then passed when every step passed or was skipped,
    failed otherwise (a failed or cancelled step)."""
    ended = [statuses.get(key, "blocked") for key in pipeline.keys]
    if not all(status in ENDED_STATUSES for status in ended):
        return "running"
    return "passed" if all(s in ("passed", "skipped") for s in ended) else "failed"


def downstream(pipeline: Pipeline, roots: Iterable[str]) -> tuple[str, ...]:
    """``roots`` and every step that waits for one of them, directly or through its needs,
    in pipeline order: what a re-run of ``roots`` runs again."""
    wanted = frozenset(roots)
    return tuple(
        step.key
        for step in pipeline.steps
        if step.key in wanted or pipeline.ancestors(step.key) & wanted
    )
