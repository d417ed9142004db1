"""The pipeline as later code stores and runs it: frozen, typed, already expanded.

A :class:`Pipeline` holds its steps after matrix expansion, in an order where every step comes
after its needs; each :class:`Step` carries everything its run needs (argv, environment,
limits), so a step item can be written from it alone. A string ``command`` is already
``("sh", "-c", text)``, so there is one command shape downstream.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from scheduler.config import RetryPolicy
from scheduler.pipelines.conditions import SUCCESS, Condition

__all__ = [
    "DEFAULT_STEP_KEY",
    "ENDED_STATUSES",
    "PIPELINE_FILE",
    "EndStatus",
    "Pipeline",
    "Step",
    "StepStatus",
    "one_step_pipeline",
]

PIPELINE_FILE = ".scheduler/pipeline.yml"
# The key of the one step a pipeline made from the operator's ``command`` has.
DEFAULT_STEP_KEY = "build"

StepStatus = Literal["blocked", "pending", "active", "passed", "failed", "skipped", "cancelled"]
EndStatus = Literal["passed", "failed", "skipped", "cancelled"]
ENDED_STATUSES: frozenset[str] = frozenset({"passed", "failed", "skipped", "cancelled"})


@dataclass(frozen=True, slots=True)
class Step:
    """One step after expansion: a matrix variant is a step of its own."""

    key: str  # unique in the pipeline: ``lint``, ``test[os=linux,python=3.11]``
    command: tuple[str, ...]  # argv; a string in the file is ("sh", "-c", string)
    name: str = ""  # the key as written in the file (shared by a matrix's variants)
    needs: tuple[str, ...] = ()  # keys of steps (variants expanded)
    condition: Condition = SUCCESS
    # The file's env (pipeline-wide, then the step's) and the variant's matrix values, by name.
    env: tuple[tuple[str, str], ...] = ()
    matrix: tuple[tuple[str, str], ...] = ()  # this variant's values, by name
    timeout_seconds: int | None = None  # None: the repository's timeout
    retry: RetryPolicy | None = None  # None: the repository's retry policy
    concurrency_group: str | None = None
    line: int | None = None  # where the step starts in the file (None: not from a file)

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.key)

    def environment(self) -> dict[str, str]:
        return dict(self.env)


@dataclass(frozen=True, slots=True)
class Pipeline:
    """Steps in dependency order; ``source`` says where they came from (a file, or "config")."""

    steps: tuple[Step, ...]
    source: str = PIPELINE_FILE
    _by_key: Mapping[str, Step] = field(init=False, repr=False, compare=False)
    _dependents: Mapping[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)
    _ancestors: Mapping[str, frozenset[str]] = field(init=False, repr=False, compare=False)
    _variants: Mapping[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The parser guarantees these; a pipeline built by hand (tests, the fallback) is held
        # to the same rules, so later code never meets an unknown need or a cycle.
        if not self.steps:
            raise ValueError("a pipeline has at least one step")
        by_key: dict[str, Step] = {}
        dependents: dict[str, list[str]] = {}
        ancestors: dict[str, frozenset[str]] = {}
        variants: dict[str, list[str]] = {}
        for step in self.steps:
            if step.key in by_key:
                raise ValueError(f"step {step.key!r} appears twice")
            for need in step.needs:
                if need not in by_key:
                    raise ValueError(f"step {step.key!r} needs {need!r}, not an earlier step")
                dependents[need].append(step.key)
            by_key[step.key] = step
            dependents[step.key] = []
            ancestors[step.key] = frozenset(step.needs).union(
                *(ancestors[need] for need in step.needs)
            )
            variants.setdefault(step.name, []).append(step.key)
        object.__setattr__(self, "_by_key", by_key)
        object.__setattr__(self, "_dependents", {k: tuple(v) for k, v in dependents.items()})
        object.__setattr__(self, "_ancestors", ancestors)
        object.__setattr__(self, "_variants", {k: tuple(v) for k, v in variants.items()})

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(step.key for step in self.steps)

    def step(self, key: str) -> Step:
        return self._by_key[key]

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def __len__(self) -> int:
        return len(self.steps)

    def dependents(self, key: str) -> tuple[str, ...]:
        """The steps that name ``key`` in their needs (directly)."""
        return self._dependents[key]

    def ancestors(self, key: str) -> frozenset[str]:
        """Every step ``key`` waits for, directly or through its needs."""
        return self._ancestors[key]

    def resolve(self, ref: str) -> tuple[str, ...]:
        """The steps a name in the file stands for: one step, or all of a matrix's variants."""
        if ref in self._by_key:
            return (ref,)
        return self._variants.get(ref, ())


def one_step_pipeline(
    command: Sequence[str],
    *,
    key: str = DEFAULT_STEP_KEY,
    timeout_seconds: int | None = None,
    retry: RetryPolicy | None = None,
    env: Mapping[str, str] | None = None,
) -> Pipeline:
    """The pipeline of a repository without a file: the operator's ``command`` as one step.

    Limits left None are the repository's own, so a one-step pipeline runs exactly as a job
    did before pipelines existed.
    """
    if not command or not all(isinstance(arg, str) and arg for arg in command):
        raise ValueError("command must be a non-empty argv list of non-empty strings")
    step = Step(
        key=key,
        command=tuple(command),
        env=tuple(sorted((env or {}).items())),
        timeout_seconds=timeout_seconds,
        retry=retry,
    )
    return Pipeline((step,), source="config")
