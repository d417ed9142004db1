"""The pipeline file: what a good file becomes, and every rule a bad one breaks, with its line."""

from __future__ import annotations

import dataclasses
import itertools
import json
import textwrap
from pathlib import Path
from random import Random

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.config import RetryPolicy
from scheduler.errors import DomainError, PipelineFileError
from scheduler.pipelines import (
    MAX_FILE_BYTES,
    Pipeline,
    RunFacts,
    Step,
    decide,
    one_step_pipeline,
    parse_pipeline,
    pipeline_from_records,
    spec,
    step_from_record,
    step_record,
)

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(params=["libyaml", "pure"])
def loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both safe loaders: libyaml's where it is built, the pure-Python one as the fallback."""
    if request.param == "pure":
        monkeypatch.setattr(spec, "_LOADER", yaml.SafeLoader)
    else:
        assert spec._LOADER is yaml.CSafeLoader
    return str(request.param)


def parse(text: str) -> Pipeline:
    return parse_pipeline(textwrap.dedent(text))


def error_of(text: str) -> PipelineFileError:
    with pytest.raises(PipelineFileError) as caught:
        parse(text)
    return caught.value


# -- a good file --------------------------------------------------------------------------------


def test_this_repositorys_own_pipeline_runs_its_checks_in_order() -> None:
    pipeline = parse_pipeline((ROOT / ".scheduler" / "pipeline.yml").read_bytes())
    assert pipeline.keys == ("lint", "unit", "integration", "e2e", "reliability")
    assert pipeline.step("lint").needs == ()
    assert pipeline.step("unit").needs == ()
    assert pipeline.step("integration").needs == ("lint", "unit")
    assert pipeline.step("e2e").needs == ("integration",)
    assert pipeline.step("reliability").needs == ("integration",)
    for step in pipeline.steps:
        assert step.command[:2] == ("sh", "-c")
        assert "make" in step.command[2]
        assert step.timeout_seconds is not None
    assert "tests/unit" in pipeline.step("unit").command[2]
    assert "tests/integration" in pipeline.step("integration").command[2]
    assert "tests/e2e" in pipeline.step("e2e").command[2]
    assert "tests/reliability" in pipeline.step("reliability").command[2]
    # Both roots start at once; nothing else until they passed.
    assert decide(pipeline, {}, RunFacts(branch="main", event="push")).runnable == ("lint", "unit")


def test_every_field_reaches_the_model() -> None:
    pipeline = parse(
        """\
        env:
          CI: "true"
          LEVEL: shared
        steps:
          - key: build
            command: [make, build]
          - key: deploy
            command: ./deploy.sh --prod
            needs: build
            if: branch == "main" && event == "push"
            timeout_seconds: 600
            retry: {attempts: 3, on: [exit_code, timed_out], backoff_seconds: 5}
            env: {LEVEL: step, TARGET: prod}
            concurrency_group: deploy/prod
          - key: notify
            command: ["true"]
            needs: [deploy]
            if: always()
            retry: 2
        """
    )
    build, deploy, notify = pipeline.steps
    assert build == Step(
        key="build", command=("make", "build"), env=(("CI", "true"), ("LEVEL", "shared")), line=5
    )
    assert deploy.command == ("sh", "-c", "./deploy.sh --prod")
    assert deploy.needs == ("build",)
    assert deploy.condition.text == 'branch == "main" && event == "push"'
    assert deploy.timeout_seconds == 600
    assert deploy.retry == RetryPolicy(attempts=3, on=("exit_code", "timed_out"), backoff_seconds=5)
    # The step's env wins over the file's.
    assert deploy.environment() == {"CI": "true", "LEVEL": "step", "TARGET": "prod"}
    assert deploy.concurrency_group == "deploy/prod"
    assert deploy.line == 7
    assert notify.retry == RetryPolicy(attempts=2)
    assert notify.command == ("true",)
    assert build.timeout_seconds is None and build.retry is None  # the repository's own apply
    assert pipeline.source == ".scheduler/pipeline.yml"


def test_scalars_are_read_as_the_text_written() -> None:
    """YAML 1.1 reads 3.10 as a float and on / yes as booleans; a CI file means the text."""
    pipeline = parse(
        """\
        steps:
          - key: "3"
            command: [echo, 3.10, on, yes, 0x1f, ~x]
            env: {VERSION: 3.10, FLAG: on, COUNT: 007}
        """
    )
    step = pipeline.step("3")
    assert step.command == ("echo", "3.10", "on", "yes", "0x1f", "~x")
    assert step.environment() == {"VERSION": "3.10", "FLAG": "on", "COUNT": "007"}


def test_integers_follow_yaml() -> None:
    pipeline = parse(
        """\
        steps:
          - {key: a, command: x, timeout_seconds: 1_800}
          - {key: b, command: x, timeout_seconds: 0x10}
        """
    )
    assert [s.timeout_seconds for s in pipeline.steps] == [1800, 16]


def test_anchors_and_aliases_are_allowed() -> None:
    pipeline = parse(
        """\
        steps:
          - key: a
            command: x
            env: &shared {REGION: eu}
          - key: b
            command: x
            env: *shared
        """
    )
    assert pipeline.step("b").environment() == {"REGION": "eu"}


def test_steps_come_in_dependency_order_keeping_file_order_where_free() -> None:
    pipeline = parse(
        """\
        steps:
          - {key: deploy, command: x, needs: [test, lint]}
          - {key: test, command: x, needs: build}
          - {key: lint, command: x}
          - {key: build, command: x}
          - {key: docs, command: x}
        """
    )
    # Among steps whose needs came already, the one written first comes first.
    assert pipeline.keys == ("lint", "build", "test", "deploy", "docs")
    assert pipeline.dependents("build") == ("test",)
    assert pipeline.ancestors("deploy") == {"test", "lint", "build"}


def test_the_model_is_immutable_and_comparable() -> None:
    text = "steps: [{key: a, command: [make]}, {key: b, command: x, needs: a}]"
    pipeline = parse(text)
    with pytest.raises(dataclasses.FrozenInstanceError):
        pipeline.steps[0].key = "c"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        pipeline.source = "elsewhere"  # type: ignore[misc]
    assert parse(text) == pipeline
    assert hash(parse(text)) == hash(pipeline)


def test_without_a_file_the_operators_command_is_a_one_step_pipeline() -> None:
    pipeline = one_step_pipeline(["make", "test"], timeout_seconds=1800)
    assert pipeline.source == "config"
    assert pipeline.keys == ("build",)
    step = pipeline.step("build")
    assert step.command == ("make", "test")
    assert step.needs == () and step.timeout_seconds == 1800 and step.retry is None
    assert decide(pipeline, {}, RunFacts(branch="main")).runnable == ("build",)
    # Even on a branch no `if` names: the one step always runs (success() with no needs).
    assert decide(pipeline, {}, RunFacts()).runnable == ("build",)
    with pytest.raises(ValueError, match="non-empty argv"):
        one_step_pipeline([])
    with pytest.raises(ValueError, match="non-empty argv"):
        one_step_pipeline(["make", ""])


def test_a_pipeline_built_by_hand_is_held_to_the_same_rules() -> None:
    with pytest.raises(ValueError, match="not an earlier step"):
        Pipeline((Step(key="b", command=("x",), needs=("a",)), Step(key="a", command=("x",))))
    with pytest.raises(ValueError, match="twice"):
        Pipeline((Step(key="a", command=("x",)), Step(key="a", command=("y",))))
    with pytest.raises(ValueError, match="at least one step"):
        Pipeline(())


# -- a bad file: each rule, its reason and its line ---------------------------------------------

BAD_FILES: list[tuple[str, str, str, int | None]] = [
    # (id, file, a part of the reason, line)
    ("yaml-syntax", "steps:\n  - key: a\n    command: [x\n", "invalid YAML", 4),
    ("two-documents", "steps: []\n---\nsteps: []\n", "invalid YAML", 2),
    ("empty-file", "", "the file is empty", 1),
    ("not-a-mapping", "- a\n- b\n", "the file must be a mapping, not a list", 1),
    ("no-steps", "env: {A: b}\n", "must have 'steps'", 1),
    ("steps-not-a-list", "steps: {a: 1}\n", "steps must be a list, not a mapping", 1),
    ("steps-empty", "steps: []\n", "steps must not be empty", 1),
    (
        "unknown-top-field",
        "steps: [{key: a, command: x}]\nstages: []\n",
        "unknown field 'stages'",
        2,
    ),
    ("step-not-a-mapping", "steps:\n  - make test\n", "a step must be a mapping, not a string", 2),
    (
        "unknown-step-field",
        "steps:\n  - key: a\n    command: x\n    runs-on: linux\n",
        "step 'a': unknown field 'runs-on'",
        4,
    ),
    (
        "field-twice",
        "steps:\n  - key: a\n    command: x\n    command: y\n",
        "'command' appears twice",
        4,
    ),
    ("no-key", "steps:\n  - command: x\n", "must have a 'key'", 2),
    ("no-command", "steps:\n  - key: a\n", "step 'a' must have a 'command'", 2),
    ("key-malformed", "steps:\n  - key: a b\n    command: x\n", "key 'a b' must be", 2),
    ("key-with-bracket", "steps:\n  - key: 'a[x=1]'\n    command: x\n", "key 'a[x=1]' must be", 2),
    ("key-too-long", f"steps:\n  - key: {'k' * 65}\n    command: x\n", "must be 1-64", 2),
    ("key-empty", "steps:\n  - key:\n    command: x\n", "key must be a string, not empty", 2),
    (
        "key-twice",
        "steps:\n  - {key: a, command: x}\n  - {key: a, command: y}\n",
        "step key 'a' is used twice",
        3,
    ),
    ("command-empty", "steps:\n  - key: a\n    command: '  '\n", "command must not be empty", 3),
    ("command-empty-list", "steps:\n  - key: a\n    command: []\n", "command must not be empty", 3),
    (
        "command-mapping",
        "steps:\n  - key: a\n    command: {run: x}\n",
        "command must be a string, not a mapping",
        3,
    ),
    (
        "command-null-item",
        "steps:\n  - key: a\n    command: [make, ~]\n",
        "command item must be a string, not empty",
        3,
    ),
    (
        "needs-unknown",
        "steps:\n  - key: a\n    command: x\n    needs:\n      - b\n",
        "step 'a' needs 'b', which is not a step",
        5,
    ),
    ("needs-itself", "steps:\n  - key: a\n    command: x\n    needs: a\n", "needs itself", 4),
    (
        "needs-twice",
        "steps:\n  - {key: b, command: x}\n  - {key: a, command: x, needs: [b, b]}\n",
        "needs 'b' twice",
        3,
    ),
    (
        "needs-mapping",
        "steps:\n  - {key: a, command: x, needs: {b: 1}}\n",
        "needs must be a list",
        2,
    ),
    (
        "cycle",
        "steps:\n  - {key: a, command: x, needs: c}\n  - {key: b, command: x, needs: a}\n"
        "  - {key: c, command: x, needs: b}\n",
        "the needs form a cycle: a -> b -> c -> a",
        2,
    ),
    (
        "timeout-string",
        "steps:\n  - {key: a, command: x, timeout_seconds: soon}\n",
        "timeout_seconds must be a whole number, not a string",
        2,
    ),
    (
        "timeout-zero",
        "steps:\n  - {key: a, command: x, timeout_seconds: 0}\n",
        "between 1 and 604800, not 0",
        2,
    ),
    (
        "timeout-float",
        "steps:\n  - {key: a, command: x, timeout_seconds: 1.5}\n",
        "not the float 1.5",
        2,
    ),
    (
        "retry-zero",
        "steps:\n  - {key: a, command: x, retry: 0}\n",
        "retry must be between 1 and 100",
        2,
    ),
    (
        "retry-unknown-field",
        "steps:\n  - key: a\n    command: x\n    retry:\n      times: 2\n",
        "retry: unknown field 'times'",
        5,
    ),
    (
        "retry-bad-reason",
        "steps:\n  - key: a\n    command: x\n    retry:\n      on:\n"
        "        - exit_code\n        - cancelled\n",
        "'cancelled' is not a failure reason",
        7,
    ),
    (
        "env-bad-name",
        "steps:\n  - key: a\n    command: x\n    env:\n      BAD-NAME: 1\n",
        "'BAD-NAME' is not an environment variable name",
        5,
    ),
    (
        "env-null",
        "steps:\n  - key: a\n    command: x\n    env:\n      A:\n",
        "env.A must be a string, not empty",
        5,
    ),
    (
        "env-list",
        "env: [A]\nsteps: [{key: a, command: x}]\n",
        "env must be a mapping, not a list",
        1,
    ),
    (
        "group-malformed",
        "steps:\n  - {key: a, command: x, concurrency_group: 'de ploy'}\n",
        "concurrency_group 'de ploy' must be",
        2,
    ),
    (
        "if-syntax",
        "steps:\n  - key: a\n    command: x\n    if: branch = 'main'\n",
        "if: unexpected",
        4,
    ),
    (
        "if-not-a-condition",
        "steps:\n  - key: a\n    command: x\n    if: branch\n",
        "a value is not a condition",
        4,
    ),
    (
        "if-status-of-a-non-need",
        "steps:\n  - {key: b, command: x}\n"
        "  - key: a\n    command: x\n    if: status.b == 'failed'\n",
        "status.b names a step it does not need",
        5,
    ),
    (
        "matrix-empty",
        "steps:\n  - {key: a, command: x, matrix: {}}\n",
        "matrix must name at least one variable",
        2,
    ),
    (
        "matrix-not-lists",
        "steps:\n  - key: a\n    command: x\n    matrix:\n      os: linux\n",
        "matrix.os must be a list, not a string",
        5,
    ),
    (
        "matrix-empty-list",
        "steps:\n  - key: a\n    command: x\n    matrix:\n      os: []\n",
        "matrix.os must list at least one value",
        5,
    ),
    (
        "matrix-bad-value",
        "steps:\n  - key: a\n    command: x\n    matrix:\n      os: ['linux, mac']\n",
        "matrix value 'linux, mac' must be",
        5,
    ),
    (
        "matrix-value-twice",
        "steps:\n  - key: a\n    command: x\n    matrix:\n      os: [linux, linux]\n",
        "lists 'linux' twice",
        5,
    ),
    (
        "matrix-bad-name",
        "steps:\n  - key: a\n    command: x\n    matrix:\n      the-os: [linux]\n",
        "'the-os' is not an environment variable name",
        5,
    ),
    (
        "matrix-and-env",
        "steps:\n  - key: a\n    command: x\n    env: {os: mac}\n    matrix:\n      os: [linux]\n",
        "'os' is both a matrix variable and in env",
        6,
    ),
]


@pytest.mark.parametrize(
    ("text", "reason", "line"), [b[1:] for b in BAD_FILES], ids=[b[0] for b in BAD_FILES]
)
def test_a_bad_file_is_one_typed_error_with_its_reason_and_line(
    text: str, reason: str, line: int | None, loader: str
) -> None:
    error = error_of(text)
    assert reason in error.reason
    assert error.line == line
    assert str(error) == f".scheduler/pipeline.yml:{error.line}: {error.reason}"
    assert isinstance(error, DomainError)
    assert (error.http_status, error.exit_code) == (422, 2)


def test_a_cycle_names_its_keys_and_the_need_that_closes_it() -> None:
    error = error_of(
        """\
        steps:
          - {key: start, command: x}
          - {key: a, command: x, needs: [start, c]}
          - {key: b, command: x, needs: a}
          - {key: c, command: x, needs: b}
          - {key: after, command: x, needs: c}
        """
    )
    # "a -> b" reads: b needs a. The cycle's steps only (start and after are not in it).
    cycle = error.reason.split(": ", 1)[1].split(" -> ")
    assert cycle[0] == cycle[-1]
    assert sorted(cycle[:-1]) == ["a", "b", "c"]
    needs = {"a": {"c"}, "b": {"a"}, "c": {"b"}}
    assert all(before in needs[after] for before, after in itertools.pairwise(cycle))
    # The line of the `needs` in the cycle's first step that names its last.
    assert error.line == {"a": 3, "b": 4, "c": 5}[cycle[0]]


def test_the_size_limit_is_on_bytes() -> None:
    comment = "# é\n" * (MAX_FILE_BYTES // 5)
    text = comment + "steps: [{key: a, command: x}]\n"
    assert len(text) <= MAX_FILE_BYTES < len(text.encode())
    with pytest.raises(PipelineFileError) as caught:
        parse_pipeline(text)
    assert caught.value.line is None
    assert f"more than the limit of {MAX_FILE_BYTES}" in caught.value.reason
    at_limit = ("#" * (MAX_FILE_BYTES - 40) + "\nsteps: [{key: a, command: x}]\n").encode()
    assert len(at_limit) <= MAX_FILE_BYTES
    assert parse_pipeline(at_limit).keys == ("a",)


def test_a_file_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(PipelineFileError, match="not UTF-8") as caught:
        parse_pipeline(b"steps: [{key: a, command: \xff}]\n")
    assert caught.value.line is None


def test_nesting_too_deep_for_the_parser_is_a_file_error(loader: str) -> None:
    expected = "nested too deeply" if loader == "pure" else "exceeded maximum nesting depth"
    with pytest.raises(PipelineFileError, match=expected):
        parse_pipeline("steps: " + "[" * 30000 + "]" * 30000 + "\n")
    with pytest.raises(PipelineFileError, match=expected):
        parse_pipeline("steps:\n" + "- " * 30000 + "x\n")


def test_python_tags_are_refused_not_constructed(loader: str) -> None:
    text = "steps:\n  - key: a\n    command: !!python/object/apply:os.system [id]\n"
    with pytest.raises(PipelineFileError, match=r"tag 'tag:yaml\.org,2002:python/object") as caught:
        parse_pipeline(text)
    assert caught.value.line == 3
    with pytest.raises(PipelineFileError, match="tag '!Ref' is not allowed") as caught:
        parse_pipeline("steps:\n  - key: a\n    command: x\n    env: {A: !Ref B}\n")
    assert caught.value.line == 4


def test_the_source_is_named_in_the_error() -> None:
    with pytest.raises(PipelineFileError) as caught:
        parse_pipeline("steps: []\n", source="octo/api@abc123:.scheduler/pipeline.yml")
    assert str(caught.value).startswith("octo/api@abc123:.scheduler/pipeline.yml:1: ")


# -- acyclicity, for any graph ------------------------------------------------------------------


@st.composite
def graphs(draw: st.DrawFn) -> dict[str, list[str]]:
    """Up to 12 steps with any needs among them (cycles included)."""
    count = draw(st.integers(1, 12))
    keys = [f"s{i}" for i in range(count)]
    return {
        key: draw(
            st.lists(
                st.sampled_from([k for k in keys if k != key] or [key]), unique=True, max_size=4
            )
        )
        if count > 1
        else []
        for key in keys
    }


def has_cycle(graph: dict[str, list[str]]) -> bool:
    remaining = {key: set(needs) for key, needs in graph.items()}
    while remaining:
        free = [key for key, needs in remaining.items() if not needs & remaining.keys()]
        if not free:
            return True
        for key in free:
            del remaining[key]
    return False


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_a_file_parses_exactly_when_its_needs_have_no_cycle(graph: dict[str, list[str]]) -> None:
    text = yaml.safe_dump(
        {"steps": [{"key": k, "command": ["true"], "needs": n} for k, n in graph.items()]}
    )
    if has_cycle(graph):
        with pytest.raises(PipelineFileError) as caught:
            parse_pipeline(text)
        cycle = caught.value.reason.removeprefix("the needs form a cycle: ").split(" -> ")
        assert len(cycle) >= 3 and cycle[0] == cycle[-1]
        assert len(set(cycle[:-1])) == len(cycle) - 1
        # Each arrow is a real need: "a -> b" means b needs a.
        for before, after in itertools.pairwise(cycle):
            assert before in graph[after]
        assert caught.value.line is not None
    else:
        pipeline = parse_pipeline(text)
        assert sorted(pipeline.keys) == sorted(graph)
        seen: set[str] = set()
        for step in pipeline.steps:
            assert set(step.needs) == set(graph[step.key])
            assert set(step.needs) <= seen  # every need comes first
            seen.add(step.key)


# -- merge keys ---------------------------------------------------------------------------------


def test_merge_keys_share_fields_and_what_is_written_wins() -> None:
    pipeline = parse(
        """\
        steps:
          - &defaults
            key: base
            command: make base
            timeout_seconds: 300
            env: &env {REGION: eu, LEVEL: base}
          - <<: *defaults
            key: other
            env:
              <<: *env
              LEVEL: other
          - <<: [{timeout_seconds: 60}, *defaults]
            key: third
        """
    )
    other = pipeline.step("other")
    assert other.command == ("sh", "-c", "make base")
    assert other.timeout_seconds == 300
    assert other.environment() == {"REGION": "eu", "LEVEL": "other"}
    # The first merged mapping wins over later ones.
    assert pipeline.step("third").timeout_seconds == 60


def test_a_merge_of_a_non_mapping_or_a_merge_loop_is_a_file_error() -> None:
    with pytest.raises(PipelineFileError, match="'<<' merges mappings, not a string") as caught:
        parse("steps:\n  - key: a\n    command: x\n    <<: nothing\n")
    assert caught.value.line == 4
    with pytest.raises(PipelineFileError, match="merges nested deeper than 8"):
        parse("steps:\n  - &a\n    key: a\n    command: x\n    env: &e {<<: *e}\n")


# -- stored and read back -----------------------------------------------------------------------


def test_each_step_round_trips_through_plain_data() -> None:
    pipeline = parse(
        """\
        env: {CI: "1"}
        steps:
          - key: test
            command: [make, test]
            matrix: {python: ["3.11", "3.12"]}
            retry: {attempts: 2, on: [exit_code]}
            timeout_seconds: 60
          - key: deploy
            command: ./deploy
            needs: test
            if: branch == "main" && status.test != "failed"
            concurrency_group: deploy
        """
    )
    records = [json.loads(json.dumps(step_record(step))) for step in pipeline.steps]
    assert [step_from_record(record) for record in records] == list(pipeline.steps)
    assert records[2]["if"] == 'branch == "main" && status.test != "failed"'
    assert records[0]["retry"] == {"attempts": 2, "on": ["exit_code"], "backoff_seconds": 0}
    assert pipeline_from_records(records) == pipeline
    # In any order (a query returns them by key), the pipeline is the same set in need order.
    again = pipeline_from_records(reversed(records))
    assert set(again.steps) == set(pipeline.steps)
    assert again.keys.index("deploy") == 2


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs(), st.randoms(use_true_random=False))
def test_any_acyclic_pipeline_round_trips(graph: dict[str, list[str]], random: Random) -> None:
    if has_cycle(graph):
        return
    text = yaml.safe_dump(
        {"steps": [{"key": k, "command": ["true"], "needs": n} for k, n in graph.items()]}
    )
    pipeline = parse_pipeline(text)
    records = [step_record(step) for step in pipeline.steps]
    assert pipeline_from_records(records) == pipeline
    random.shuffle(records)
    shuffled = pipeline_from_records(records)
    assert set(shuffled.steps) == set(pipeline.steps)


def test_the_example_in_the_modules_docstring_is_a_valid_file() -> None:
    assert spec.__doc__ is not None
    example = spec.__doc__.split("The file::", 1)[1].split("\n\nThe YAML", 1)[0]
    pipeline = parse_pipeline(textwrap.dedent(example))
    assert pipeline.keys == ("lint", "test[python=3.11]", "test[python=3.12]", "deploy")
    assert pipeline.step("deploy").needs == ("test[python=3.11]", "test[python=3.12]")
