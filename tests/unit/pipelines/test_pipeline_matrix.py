"""Matrix expansion: one step per variant, deterministic keys, values as environment, limits."""

from __future__ import annotations

import itertools
import math
import textwrap
import time

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.errors import PipelineFileError
from scheduler.pipelines import (
    MAX_STEPS,
    Pipeline,
    RunFacts,
    decide,
    expand,
    parse_pipeline,
    variant_count,
    variant_key,
)


def parse(text: str) -> Pipeline:
    return parse_pipeline(textwrap.dedent(text))


def test_each_variant_is_a_step_with_its_values_as_environment() -> None:
    pipeline = parse(
        """\
        steps:
          - key: test
            command: [make, test]
            env: {CI: "1"}
            matrix:
              python: ["3.11", "3.12"]
              os: [linux, mac]
        """
    )
    assert pipeline.keys == (
        "test[os=linux,python=3.11]",
        "test[os=linux,python=3.12]",
        "test[os=mac,python=3.11]",
        "test[os=mac,python=3.12]",
    )
    step = pipeline.step("test[os=mac,python=3.11]")
    assert step.name == "test"
    assert step.matrix == (("os", "mac"), ("python", "3.11"))
    assert step.environment() == {"CI": "1", "os": "mac", "python": "3.11"}
    assert step.command == ("make", "test")
    assert pipeline.resolve("test") == pipeline.keys


def test_keys_do_not_depend_on_the_order_variables_are_written() -> None:
    one = parse("steps: [{key: t, command: x, matrix: {b: [1, 2], a: [x, y]}}]")
    other = parse("steps: [{key: t, command: x, matrix: {a: [x, y], b: [1, 2]}}]")
    assert one.keys == other.keys
    assert one.keys[0] == "t[a=x,b=1]"


def test_values_keep_their_written_text() -> None:
    pipeline = parse("steps: [{key: t, command: x, matrix: {python: [3.10, 3.9], debug: [on]}}]")
    assert pipeline.keys == ("t[debug=on,python=3.10]", "t[debug=on,python=3.9]")


def test_needs_on_a_matrixed_key_means_every_variant() -> None:
    pipeline = parse(
        """\
        steps:
          - key: build
            command: x
            matrix: {arch: [amd64, arm64]}
          - key: test
            command: x
            needs: build
            matrix: {os: [linux, mac]}
          - key: publish
            command: x
            needs: [test]
          - key: smoke
            command: x
            needs: ["build[arch=arm64]"]
        """
    )
    builds = ("build[arch=amd64]", "build[arch=arm64]")
    for key in ("test[os=linux]", "test[os=mac]"):
        assert pipeline.step(key).needs == builds
    assert pipeline.step("publish").needs == ("test[os=linux]", "test[os=mac]")
    # A single variant may be named by its key.
    assert pipeline.step("smoke").needs == ("build[arch=arm64]",)
    facts = RunFacts(branch="main")
    statuses = {"build[arch=amd64]": "passed", "build[arch=arm64]": "active"}
    assert decide(pipeline, statuses, facts).runnable == ()
    statuses["build[arch=arm64]"] = "passed"
    assert decide(pipeline, statuses, facts).runnable == ("test[os=linux]", "test[os=mac]", "smoke")


def test_a_need_on_an_unknown_variant_is_refused_with_its_line() -> None:
    with pytest.raises(PipelineFileError) as caught:
        parse(
            """\
            steps:
              - {key: build, command: x, matrix: {arch: [amd64]}}
              - key: smoke
                command: x
                needs:
                  - build[arch=arm64]
            """
        )
    assert caught.value.line == 6
    assert "needs 'build[arch=arm64]', which is not a step" in caught.value.reason


def test_the_step_limit_counts_variants() -> None:
    sixteen = list(range(16))
    at_limit = {"steps": [{"key": "t", "command": "x", "matrix": {"a": sixteen, "b": sixteen}}]}
    assert len(parse_pipeline(yaml.safe_dump(at_limit))) == MAX_STEPS == 256
    over = textwrap.dedent(
        f"""\
        steps:
          - key: lint
            command: x
          - key: t
            command: x
            matrix: {{a: {sixteen}, b: {sixteen}}}
        """
    )
    with pytest.raises(PipelineFileError) as caught:
        parse_pipeline(over)
    assert "more than 256 steps after matrix expansion" in caught.value.reason
    assert "step 't' brings the count to 257" in caught.value.reason
    assert caught.value.line == 6  # t's matrix


def test_a_huge_matrix_is_refused_before_it_is_expanded() -> None:
    """10 variables of 10 values would be 10**10 steps: counted, never made."""
    matrix = {f"v{i}": [str(n) for n in range(10)] for i in range(10)}
    text = yaml.safe_dump({"steps": [{"key": "t", "command": "x", "matrix": matrix}]})
    started = time.perf_counter()
    with pytest.raises(PipelineFileError, match="brings the count to 10000000000"):
        parse_pipeline(text)
    assert time.perf_counter() - started < 1.0


def test_the_functions_directly() -> None:
    assert variant_count({}) == 1
    assert expand({}) == [()]
    assert variant_key("lint", ()) == "lint"
    assert expand({"b": ["1"], "a": ["x", "y"]}) == [
        (("a", "x"), ("b", "1")),
        (("a", "y"), ("b", "1")),
    ]
    assert variant_key("t", (("a", "x"), ("b", "1"))) == "t[a=x,b=1]"


# -- properties ---------------------------------------------------------------------------------

names = st.from_regex(r"[a-z][a-z0-9_]{0,5}", fullmatch=True)
values = st.from_regex(r"[a-z0-9][a-z0-9.+-]{0,5}", fullmatch=True)
matrices = st.dictionaries(
    names, st.lists(values, min_size=1, max_size=4, unique=True), min_size=1, max_size=4
)


@settings(max_examples=300, deadline=None)
@given(matrices)
def test_expansion_is_the_cartesian_product(matrix: dict[str, list[str]]) -> None:
    variants = expand(matrix)
    assert len(variants) == variant_count(matrix) == math.prod(len(v) for v in matrix.values())
    # Every combination exactly once, names in order in each.
    expected = {
        tuple(zip(sorted(matrix), combo, strict=True))
        for combo in itertools.product(*(matrix[n] for n in sorted(matrix)))
    }
    assert set(variants) == expected
    keys = [variant_key("s", v) for v in variants]
    assert len(set(keys)) == len(keys)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.none(), matrices), min_size=1, max_size=6))
def test_a_file_has_as_many_steps_as_its_variants_or_is_refused(
    step_matrices: list[dict[str, list[str]] | None],
) -> None:
    steps: list[dict[str, object]] = []
    for index, matrix in enumerate(step_matrices):
        step: dict[str, object] = {"key": f"s{index}", "command": ["true"]}
        if matrix is not None:
            step["matrix"] = matrix
        if index:
            step["needs"] = [f"s{index - 1}"]
        steps.append(step)
    text = yaml.safe_dump({"steps": steps})
    expected = sum(variant_count(m) if m else 1 for m in step_matrices)
    if expected > MAX_STEPS:
        with pytest.raises(PipelineFileError, match="more than 256 steps"):
            parse_pipeline(text)
        return
    pipeline = parse_pipeline(text)
    assert len(pipeline) == expected
    assert len(set(pipeline.keys)) == expected
    for index, matrix in enumerate(step_matrices):
        variants = pipeline.resolve(f"s{index}")
        assert len(variants) == (variant_count(matrix) if matrix else 1)
        for key in variants:
            step = pipeline.step(key)
            assert step.environment() == {**dict(step.matrix)}
            # Each variant waits for every variant of the step before it.
            assert set(step.needs) == (set(pipeline.resolve(f"s{index - 1}")) if index else set())
