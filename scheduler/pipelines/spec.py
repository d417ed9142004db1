"""``.scheduler/pipeline.yml``: read with a safe YAML loader, validated whole, expanded.

The file::

    env:                          # optional, for every step
      CI: "true"
    steps:
      - key: lint
        command: make lint        # a string runs as ``sh -c``; a list is an argv
      - key: test
        command: [make, test]
        matrix: {python: ["3.11", "3.12"]}   # a step per value; its env has python=3.11
        needs: [lint]
        timeout_seconds: 900
        retry: 2                  # attempts; or {attempts: 2, on: [exit_code], backoff_seconds: 5}
      - key: deploy
        command: ./deploy.sh
        needs: test               # a matrixed key means all of its variants
        if: branch == "main" && event == "push"
        concurrency_group: deploy
        env: {TARGET: prod}

The YAML is composed into nodes (never constructed into arbitrary objects), so every rule
broken is reported with its line: one :class:`PipelineFileError` for the first one found, and
nothing half-made. Scalars are read from their text where text is meant (``3.10`` stays
``"3.10"``, ``on`` stays ``"on"``), since YAML 1.1 would turn them into a float or a boolean.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import yaml

from scheduler.config import RetryPolicy
from scheduler.errors import PipelineFileError
from scheduler.pipelines.conditions import SUCCESS, Condition, parse_condition
from scheduler.pipelines.matrix import Variant, expand, variant_count, variant_key
from scheduler.pipelines.model import PIPELINE_FILE, Pipeline, Step

__all__ = [
    "MAX_FILE_BYTES",
    "MAX_STEPS",
    "RETRY_REASONS",
    "parse_pipeline",
]

MAX_FILE_BYTES = 64 * 1024
MAX_STEPS = 256  # after matrix expansion
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600
# Failure reasons a step's retry may name (cancelled and superseded are never retried).
RETRY_REASONS = ("exit_code", "timed_out", "error", "runner_lost", "start_failed")

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_MATRIX_VALUE = re.compile(r"[A-Za-z0-9._+:/@-]{1,64}")
_GROUP = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}")

# Builds ints the way YAML 1.1 reads them (0x1f, 1_000, 017); holds no state between calls.
_SAFE = yaml.constructor.SafeConstructor()
_PLAIN_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}"
    for name in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp", "merge")
)
# libyaml's safe loader composes a file of 256 steps in ~20 ms against ~170 ms in pure Python,
# and refuses nesting deeper than 1000 itself; the pure one is the fallback (its recursion on
# deep nesting is caught below).
_LOADER: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = getattr(
    yaml, "CSafeLoader", yaml.SafeLoader
)
_MERGE = "tag:yaml.org,2002:merge"
MAX_MERGE_DEPTH = 8
_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_NULL = "tag:yaml.org,2002:null"

TOP_FIELDS = ("env", "steps")
STEP_FIELDS = (
    "command",
    "concurrency_group",
    "env",
    "if",
    "key",
    "matrix",
    "needs",
    "retry",
    "timeout_seconds",
)


@dataclass(slots=True)
class _StepSpec:
    """One step as written, before its matrix is expanded and its needs resolved."""

    name: str
    line: int
    command: tuple[str, ...]
    needs: list[tuple[str, int]] = field(default_factory=list)
    condition: Condition = SUCCESS
    condition_line: int = 0
    env: dict[str, str] = field(default_factory=dict)
    matrix: dict[str, list[str]] = field(default_factory=dict)
    matrix_line: int = 0
    timeout_seconds: int | None = None
    retry: RetryPolicy | None = None
    concurrency_group: str | None = None


def parse_pipeline(content: str | bytes, *, source: str = PIPELINE_FILE) -> Pipeline:
    """The pipeline ``content`` describes, or :class:`PipelineFileError` for the first rule it
    breaks (with the 1-based line)."""
    raw = content.encode("utf-8") if isinstance(content, str) else content
    if len(raw) > MAX_FILE_BYTES:
        raise PipelineFileError(
            f"the file is {len(raw)} bytes, more than the limit of {MAX_FILE_BYTES}", None, source
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PipelineFileError(f"not UTF-8 text ({exc.reason})", None, source) from exc
    return _Reader(source).pipeline(_compose(text, source))


def _compose(text: str, source: str) -> yaml.Node:
    """The file's one YAML document as nodes (a safe loader, and only composed: no Python
    object is ever built from it)."""
    try:
        node = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise PipelineFileError(f"invalid YAML: {problem}", line, source) from exc
    except yaml.YAMLError as exc:
        raise PipelineFileError(f"invalid YAML: {exc}", None, source) from exc
    except RecursionError as exc:
        raise PipelineFileError("invalid YAML: nested too deeply", None, source) from exc
    if node is None:
        raise PipelineFileError("the file is empty: it must have a list of steps", 1, source)
    _check_tags(node, source)
    return node


def _check_tags(root: yaml.Node, source: str) -> None:
    """Refuse explicit tags (``!!python/object``, ``!Ref``...): composing never builds them,
    but a tagged list must not pass for a command either. Aliases are visited once."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.tag not in _PLAIN_TAGS:
            raise PipelineFileError(f"the tag {node.tag!r} is not allowed", _line(node), source)
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.extend((key, value))


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag == _NULL:
        return "empty"
    if node.tag == _STR:
        return "a string"
    if node.tag == _INT or node.tag.endswith((":float", ":bool")):
        return f"the {node.tag.rsplit(':', 1)[-1]} {node.value}"
    return f"the value {node.value!r}"


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, message: str, node_or_line: yaml.Node | int | None) -> PipelineFileError:
        line = node_or_line if not isinstance(node_or_line, yaml.Node) else _line(node_or_line)
        return PipelineFileError(message, line, self.source)

    # -- shapes ------------------------------------------------------------------------------

    def mapping(
        self, node: yaml.Node, what: str, known: tuple[str, ...]
    ) -> Iterator[tuple[str, yaml.Node, yaml.Node]]:
        """The (name, key node, value node) of a mapping with only ``known`` keys, each once."""
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(f"{what} must be a mapping, not {_kind(node)}", node)
        seen: set[str] = set()
        for key_node, value_node in self.pairs(node, what):
            name = self.name(key_node, what)
            if known and name not in known:
                raise self.fail(
                    f"{what}: unknown field {name!r} (known: {', '.join(known)})", key_node
                )
            if name in seen:
                raise self.fail(f"{what}: {name!r} appears twice", key_node)
            seen.add(name)
            yield name, key_node, value_node

    def pairs(
        self, node: yaml.MappingNode, what: str, depth: int = 0
    ) -> list[tuple[yaml.Node, yaml.Node]]:
        """A mapping's pairs with YAML merge keys (``<<: *defaults``) applied: what is written
        in the mapping wins over what is merged, and the first merged mapping over later ones."""
        written: list[tuple[yaml.Node, yaml.Node]] = []
        merged: list[tuple[yaml.Node, yaml.Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE:
                written.append((key_node, value_node))
                continue
            sources = (
                value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            )
            for source in sources:
                if not isinstance(source, yaml.MappingNode):
                    raise self.fail(f"{what}: '<<' merges mappings, not {_kind(source)}", source)
                if depth >= MAX_MERGE_DEPTH:
                    raise self.fail(f"{what}: merges nested deeper than {MAX_MERGE_DEPTH}", source)
                merged.extend(self.pairs(source, what, depth + 1))
        names = {str(key.value) for key, _ in written}
        for key_node, value_node in merged:
            if str(key_node.value) not in names:
                names.add(str(key_node.value))
                written.append((key_node, value_node))
        return written

    def name(self, node: yaml.Node, what: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag == _NULL or not node.value:
            raise self.fail(f"{what}: a field's name must be a plain word", node)
        return str(node.value)

    def text(self, node: yaml.Node, what: str) -> str:
        """A scalar's text as written; numbers and booleans are taken as the text they are."""
        if not isinstance(node, yaml.ScalarNode) or node.tag == _NULL:
            raise self.fail(f"{what} must be a string, not {_kind(node)}", node)
        return str(node.value)

    def integer(self, node: yaml.Node, what: str, low: int, high: int) -> int:
        if not isinstance(node, yaml.ScalarNode) or node.tag != _INT:
            raise self.fail(f"{what} must be a whole number, not {_kind(node)}", node)
        value = int(_SAFE.construct_yaml_int(node))
        if not low <= value <= high:
            raise self.fail(f"{what} must be between {low} and {high}, not {value}", node)
        return value

    def sequence(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(f"{what} must be a list, not {_kind(node)}", node)
        return list(node.value)

    def env(self, node: yaml.Node, what: str) -> dict[str, str]:
        env: dict[str, str] = {}
        for name, key_node, value_node in self.mapping(node, what, ()):
            if not _ENV_NAME.fullmatch(name):
                raise self.fail(f"{what}: {name!r} is not an environment variable name", key_node)
            env[name] = self.text(value_node, f"{what}.{name}")
        return env

    # -- the file ----------------------------------------------------------------------------

    def pipeline(self, root: yaml.Node) -> Pipeline:
        shared_env: dict[str, str] = {}
        steps_node: yaml.Node | None = None
        for name, _key_node, value_node in self.mapping(root, "the file", TOP_FIELDS):
            if name == "env":
                shared_env = self.env(value_node, "env")
            else:
                steps_node = value_node
        if steps_node is None:
            raise self.fail("the file must have 'steps', a list of steps", root)
        items = self.sequence(steps_node, "steps")
        if not items:
            raise self.fail("steps must not be empty", steps_node)
        specs: list[_StepSpec] = []
        names: set[str] = set()
        for item in items:
            spec = self.step(item)
            if spec.name in names:
                raise self.fail(f"step key {spec.name!r} is used twice", spec.line)
            names.add(spec.name)
            specs.append(spec)
        return _Builder(self, specs, shared_env).pipeline()

    def step(self, node: yaml.Node) -> _StepSpec:
        # The key first, so every later error can name the step it is about.
        key_value = self.step_key(node)
        key = self.text(key_value, "key")
        if not _KEY.fullmatch(key):
            raise self.fail(
                f"key {key!r} must be 1-64 letters, digits, '-' or '_', starting with a letter"
                " or digit",
                key_value,
            )
        what = f"step {key!r}"
        fields = {
            name: (key_node, value_node)
            for name, key_node, value_node in self.mapping(node, what, STEP_FIELDS)
        }
        if "command" not in fields:
            raise self.fail(f"{what} must have a 'command'", node)
        command = self.command(fields["command"][1], what)
        spec = _StepSpec(name=key, line=_line(node), command=command)
        for name, (_key_node, value) in fields.items():
            self.step_field(spec, name, value, what)
        for matrix_name in spec.matrix:
            if matrix_name in spec.env:
                raise self.fail(
                    f"{what}: {matrix_name!r} is both a matrix variable and in env",
                    spec.matrix_line,
                )
        return spec

    def step_key(self, node: yaml.Node) -> yaml.Node:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(f"a step must be a mapping, not {_kind(node)}", node)
        for key_node, value_node in self.pairs(node, "a step"):
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == "key":
                return value_node
        raise self.fail("a step must have a 'key'", node)

    def step_field(self, spec: _StepSpec, name: str, value: yaml.Node, what: str) -> None:
        """One optional field of a step (``key`` and ``command`` are read first)."""
        match name:
            case "needs":
                spec.needs = self.needs(value, what)
            case "if":
                spec.condition = parse_condition(
                    self.text(value, f"{what}: if"), line=_line(value), source=self.source
                )
                spec.condition_line = _line(value)
            case "env":
                spec.env = self.env(value, f"{what}: env")
            case "matrix":
                spec.matrix = self.matrix(value, what)
                spec.matrix_line = _line(value)
            case "timeout_seconds":
                spec.timeout_seconds = self.integer(
                    value, f"{what}: timeout_seconds", 1, MAX_TIMEOUT_SECONDS
                )
            case "retry":
                spec.retry = self.retry(value, f"{what}: retry")
            case "concurrency_group":
                group = self.text(value, f"{what}: concurrency_group")
                if not _GROUP.fullmatch(group):
                    raise self.fail(
                        f"{what}: concurrency_group {group!r} must be 1-128 letters, digits"
                        " or '_.:/-', starting with a letter or digit",
                        value,
                    )
                spec.concurrency_group = group

    def command(self, node: yaml.Node, what: str) -> tuple[str, ...]:
        if isinstance(node, yaml.SequenceNode):
            argv = tuple(self.text(arg, f"{what}: command item") for arg in node.value)
            if not argv or not argv[0]:
                raise self.fail(f"{what}: command must not be empty", node)
            return argv
        script = self.text(node, f"{what}: command")
        if not script.strip():
            raise self.fail(f"{what}: command must not be empty", node)
        # A string is a script for the run's shell: the payload still reaches it only as
        # environment variables, and nothing from the run is ever formatted into it.
        return ("sh", "-c", script)

    def needs(self, node: yaml.Node, what: str) -> list[tuple[str, int]]:
        # One need may be written without a list.
        single = isinstance(node, yaml.ScalarNode)
        items = [node] if single else self.sequence(node, f"{what}: needs")
        needs: list[tuple[str, int]] = []
        for item in items:
            ref = self.text(item, f"{what}: needs item")
            if any(ref == seen for seen, _ in needs):
                raise self.fail(f"{what} needs {ref!r} twice", item)
            needs.append((ref, _line(item)))
        return needs

    def matrix(self, node: yaml.Node, what: str) -> dict[str, list[str]]:
        matrix: dict[str, list[str]] = {}
        for name, key_node, value_node in self.mapping(node, f"{what}: matrix", ()):
            if not _ENV_NAME.fullmatch(name):
                raise self.fail(
                    f"{what}: matrix variable {name!r} is not an environment variable name",
                    key_node,
                )
            values: list[str] = []
            for item in self.sequence(value_node, f"{what}: matrix.{name}"):
                value = self.text(item, f"{what}: matrix.{name} item")
                if not _MATRIX_VALUE.fullmatch(value):
                    raise self.fail(
                        f"{what}: matrix value {value!r} must be 1-64 letters, digits or '._+:/@-'",
                        item,
                    )
                if value in values:
                    raise self.fail(f"{what}: matrix.{name} lists {value!r} twice", item)
                values.append(value)
            if not values:
                raise self.fail(f"{what}: matrix.{name} must list at least one value", value_node)
            matrix[name] = values
        if not matrix:
            raise self.fail(f"{what}: matrix must name at least one variable", node)
        return matrix

    def retry(self, node: yaml.Node, what: str) -> RetryPolicy:
        if isinstance(node, yaml.ScalarNode):
            return RetryPolicy(attempts=self.integer(node, f"{what}", 1, 100))
        attempts, on, backoff = 1, RetryPolicy().on, 0
        known = ("attempts", "backoff_seconds", "on")
        for name, _key_node, value in self.mapping(node, what, known):
            if name == "attempts":
                attempts = self.integer(value, f"{what}.attempts", 1, 100)
            elif name == "backoff_seconds":
                backoff = self.integer(value, f"{what}.backoff_seconds", 0, 3600)
            else:
                items = self.sequence(value, f"{what}.on")
                reasons = [self.text(item, f"{what}.on item") for item in items]
                for item, reason in zip(items, reasons, strict=True):
                    if reason not in RETRY_REASONS:
                        raise self.fail(
                            f"{what}.on: {reason!r} is not a failure reason"
                            f" (known: {', '.join(RETRY_REASONS)})",
                            item,
                        )
                on = tuple(reasons)
        return RetryPolicy(attempts=attempts, on=on, backoff_seconds=backoff)


_Variants = dict[str, list[tuple[str, Variant]]]
"""Each step's name -> its variants' keys and values."""


class _Builder:
    """Expands matrices, resolves needs, rejects cycles, orders the steps."""

    def __init__(self, reader: _Reader, specs: list[_StepSpec], shared_env: dict[str, str]) -> None:
        self.reader = reader
        self.specs = specs
        self.shared_env = shared_env

    def pipeline(self) -> Pipeline:
        total = 0
        for spec in self.specs:
            total += variant_count(spec.matrix)
            if total > MAX_STEPS:
                raise self.reader.fail(
                    f"more than {MAX_STEPS} steps after matrix expansion (step {spec.name!r}"
                    f" brings the count to {total})",
                    spec.matrix_line or spec.line,
                )
        variants = {
            spec.name: [(variant_key(spec.name, v), v) for v in expand(spec.matrix)]
            for spec in self.specs
        }
        expanded_keys = {key for found in variants.values() for key, _ in found}
        steps: list[Step] = []
        need_lines: dict[tuple[str, str], int] = {}
        for spec in self.specs:
            needs = self.resolve_needs(spec, variants, expanded_keys)
            self.check_condition(spec)
            for key, variant in variants[spec.name]:
                for ref, line in spec.needs:
                    for need in self.expand_ref(ref, variants):
                        need_lines.setdefault((key, need), line)
                env = {**self.shared_env, **spec.env, **dict(variant)}
                steps.append(
                    Step(
                        key=key,
                        name=spec.name,
                        command=spec.command,
                        needs=needs,
                        condition=spec.condition,
                        env=tuple(sorted(env.items())),
                        matrix=variant,
                        timeout_seconds=spec.timeout_seconds,
                        retry=spec.retry,
                        concurrency_group=spec.concurrency_group,
                        line=spec.line,
                    )
                )
        ordered = self.order(steps, need_lines)
        return Pipeline(tuple(ordered), source=self.reader.source)

    @staticmethod
    def expand_ref(ref: str, variants: _Variants) -> list[str]:
        if ref in variants:
            return [key for key, _ in variants[ref]]
        return [ref]

    def resolve_needs(
        self,
        spec: _StepSpec,
        variants: _Variants,
        expanded_keys: set[str],
    ) -> tuple[str, ...]:
        needs: list[str] = []
        for ref, line in spec.needs:
            if ref == spec.name:
                raise self.reader.fail(
                    f"step {spec.name!r} needs itself (a cycle: {ref} -> {ref})", line
                )
            if ref not in variants and ref not in expanded_keys:
                raise self.reader.fail(
                    f"step {spec.name!r} needs {ref!r}, which is not a step", line
                )
            needs.extend(self.expand_ref(ref, variants))
        return tuple(dict.fromkeys(needs))

    def check_condition(self, spec: _StepSpec) -> None:
        # status.<key> is only known once that step ended, and only needs are sure to have.
        written = {ref for ref, _ in spec.needs}
        for key in spec.condition.need_keys():
            if key not in written:
                raise self.reader.fail(
                    f"step {spec.name!r}: if: status.{key} names a step it does not need"
                    f" (its needs: {', '.join(sorted(written)) or 'none'})",
                    spec.condition_line,
                )

    def order(self, steps: list[Step], need_lines: dict[tuple[str, str], int]) -> list[Step]:
        """Steps with every need before them, in file order where free (Kahn's algorithm)."""
        position = {step.key: index for index, step in enumerate(steps)}
        waiting = {step.key: len(step.needs) for step in steps}
        dependents: dict[str, list[str]] = {step.key: [] for step in steps}
        for step in steps:
            for need in step.needs:
                dependents[need].append(step.key)
        ready = [position[key] for key, count in waiting.items() if count == 0]
        heapq.heapify(ready)
        ordered: list[Step] = []
        while ready:
            step = steps[heapq.heappop(ready)]
            ordered.append(step)
            for dependent in dependents[step.key]:
                waiting[dependent] -= 1
                if waiting[dependent] == 0:
                    heapq.heappush(ready, position[dependent])
        if len(ordered) < len(steps):
            cycle = find_cycle({step.key: step.needs for step in steps if waiting[step.key]})
            # The line of the need that closes the cycle: its first step names its last.
            line = need_lines.get((cycle[-1], cycle[-2]))
            raise self.reader.fail(f"the needs form a cycle: {' -> '.join(cycle)}", line)
        return ordered


def find_cycle(graph: dict[str, tuple[str, ...]]) -> list[str]:
    """One cycle of ``graph`` (key -> needs) as keys, the first repeated at the end.

    Called only when a cycle exists among these keys (every one still waits on a need).
    """
    for start in graph:
        path: list[str] = []
        on_path: dict[str, int] = {}
        node = start
        # Every remaining key waits on a remaining key, so following needs must loop.
        while node not in on_path:
            on_path[node] = len(path)
            path.append(node)
            node = next(need for need in graph[node] if need in graph)
        cycle = [*path[on_path[node] :], node]
        # Written in the direction a reader follows: a step, then what needs it.
        return cycle[::-1]
    raise AssertionError("find_cycle called on a graph without a cycle")
