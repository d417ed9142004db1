"""A step's ``if`` (parsed, checked, evaluated, never eval'd) and the fan-in decision it feeds."""

from __future__ import annotations

import textwrap

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.errors import PipelineFileError
from scheduler.pipelines import (
    Pipeline,
    RunFacts,
    Step,
    StepStatus,
    decide,
    downstream,
    parse_condition,
    parse_pipeline,
    verdict,
)
from scheduler.pipelines.conditions import (
    And,
    Call,
    Compare,
    ConditionInputs,
    NeedStatus,
    Not,
    Or,
    Text,
    Variable,
)


def inputs(
    upstream_failed: bool = False,
    upstream_cancelled: bool = False,
    needs: dict[str, str] | None = None,
    **variables: str,
) -> ConditionInputs:
    return ConditionInputs(
        variables=variables,
        need_status=(needs or {}).__getitem__,
        upstream_failed=upstream_failed,
        upstream_cancelled=upstream_cancelled,
    )


# -- parsing ------------------------------------------------------------------------------------


def test_the_grammar_builds_a_tree_with_usual_precedence() -> None:
    condition = parse_condition("branch == 'main' || tag != \"\" && !(event == 'pull_request')")
    assert condition.expr == Or(
        Compare("==", Variable("branch"), Text("main")),
        And(
            Compare("!=", Variable("tag"), Text("")),
            Not(Compare("==", Variable("event"), Text("pull_request"))),
        ),
    )
    assert parse_condition("always()").expr == Call("always")
    assert parse_condition(" status.test[os=linux] == 'failed' ").expr == Compare(
        "==", NeedStatus("test[os=linux]"), Text("failed")
    )
    assert parse_condition("status.lint == 'passed'").need_keys() == ("lint",)


@pytest.mark.parametrize(
    ("text", "message", "column"),
    [
        ("branch = 'main'", "unexpected \"= 'main'\"", 8),
        ("branch", "a value is not a condition", 7),
        ("'main'", "a value is not a condition", 7),
        ("branch == ", "expected a value, found end of condition", 11),
        ("branch == 'main", 'unexpected "\'main"', 11),
        ("(branch == 'x'", "expected ')' before end of condition", 15),
        ("success(1)", "success takes no arguments", 1),
        ("always", "always takes no arguments", 1),
        ("&& branch == 'x'", "expected a value, found '&&'", 1),
        ("branch == 'x' &&", "expected a value, found end of condition", 17),
        ("ref == 'main'", "unknown name 'ref'", 1),
        ("__import__('os').system('id') == ''", "unknown name '__import__'", 1),
        ("${{ github.ref }} == 'x'", "unexpected '${{ github'", 1),
        ("branch == 'a' branch == 'b'", "unexpected 'branch'", 15),
        ("status.lint", "a value is not a condition", 12),
        ("!" * 40 + "always()", "nested deeper than 32 levels", 33),
        ("(" * 40 + "always()" + ")" * 40, "nested deeper than 32 levels", 33),
    ],
)
def test_a_syntax_error_names_the_column(text: str, message: str, column: int) -> None:
    with pytest.raises(PipelineFileError) as caught:
        parse_condition(text, line=7)
    assert caught.value.line == 7
    assert message in caught.value.reason
    assert caught.value.reason.endswith(f"at column {column}")


def test_empty_and_overlong_conditions_are_refused() -> None:
    with pytest.raises(PipelineFileError, match="must not be empty"):
        parse_condition("   ")
    with pytest.raises(PipelineFileError, match="longer than 4096"):
        parse_condition("always() || " * 400 + "always()")


def test_a_condition_in_a_file_reports_the_line_of_its_if() -> None:
    text = textwrap.dedent(
        """\
        steps:
          - key: a
            command: x

            if: branch == main
        """
    )
    with pytest.raises(PipelineFileError) as caught:
        parse_pipeline(text)
    assert caught.value.line == 5
    assert "unknown name 'main'" in caught.value.reason


# -- evaluation ---------------------------------------------------------------------------------


def test_values_are_compared_as_text() -> None:
    condition = parse_condition("branch == 'main' && event == 'push' && pr == ''")
    assert condition.evaluate(inputs(branch="main", event="push", pr=""))
    assert not condition.evaluate(inputs(branch="main", event="pull_request", pr="7"))
    # A shell-looking value is data: it is only ever compared.
    assert not condition.evaluate(inputs(branch="$(rm -rf /)", event="push"))
    assert parse_condition("tag != ''").evaluate(inputs(tag="v1.0"))
    assert not parse_condition("tag != ''").evaluate(inputs())


def test_status_functions_look_upstream() -> None:
    always, success, failure = (parse_condition(f"{f}()") for f in ("always", "success", "failure"))
    clean, failed, cancelled = (
        inputs(),
        inputs(upstream_failed=True),
        inputs(upstream_cancelled=True),
    )
    assert [c.evaluate(clean) for c in (always, success, failure)] == [True, True, False]
    assert [c.evaluate(failed) for c in (always, success, failure)] == [True, False, True]
    assert [c.evaluate(cancelled) for c in (always, success, failure)] == [True, False, False]


def test_a_condition_without_a_status_function_implies_success() -> None:
    on_main = parse_condition("branch == 'main'")
    assert on_main.implies_success
    assert on_main.evaluate(inputs(branch="main"))
    assert not on_main.evaluate(inputs(upstream_failed=True, branch="main"))
    # Naming any status function lifts the implied success().
    either = parse_condition("failure() || branch == 'main'")
    assert not either.implies_success
    assert either.evaluate(inputs(upstream_failed=True, branch="dev"))
    assert either.evaluate(inputs(branch="main"))
    assert not either.evaluate(inputs(branch="dev"))


def test_need_status_is_read_through_the_inputs() -> None:
    condition = parse_condition("always() && status.lint == 'failed'")
    assert condition.evaluate(inputs(needs={"lint": "failed"}))
    assert not condition.evaluate(inputs(needs={"lint": "passed"}))


# -- fan-in -------------------------------------------------------------------------------------


def pipeline_of(text: str) -> Pipeline:
    return parse_pipeline(textwrap.dedent(text))


MAIN = RunFacts(branch="main", event="push")

CHAIN = """\
    steps:
      - {key: build, command: x}
      - {key: test, command: x, needs: build}
      - {key: package, command: x, needs: test}
      - {key: cleanup, command: x, needs: package, if: always()}
      - {key: report, command: x, needs: package, if: failure()}
      - {key: deploy, command: x, needs: package, if: branch == "main"}
    """


def test_at_the_start_the_steps_without_needs_run() -> None:
    pipeline = pipeline_of(CHAIN)
    assert decide(pipeline, {}, MAIN).runnable == ("build",)
    # Active and pending steps are not decided again.
    assert decide(pipeline, {"build": "active"}, MAIN).runnable == ()
    assert decide(pipeline, {"build": "pending"}, MAIN).runnable == ()


def test_a_step_runs_when_its_last_need_ends() -> None:
    pipeline = pipeline_of(
        """\
        steps:
          - {key: a, command: x}
          - {key: b, command: x}
          - {key: c, command: x, needs: [a, b]}
        """
    )
    assert decide(pipeline, {"a": "passed", "b": "active"}, MAIN) == decide(
        pipeline, {"a": "passed", "b": "active"}, MAIN
    )
    assert decide(pipeline, {"a": "passed", "b": "active"}, MAIN).runnable == ()
    assert decide(pipeline, {"a": "passed", "b": "passed"}, MAIN).runnable == ("c",)


def test_a_failed_need_skips_its_dependents_transitively_unless_their_if_says_otherwise() -> None:
    pipeline = pipeline_of(CHAIN)
    decision = decide(pipeline, {"build": "failed"}, MAIN)
    # test and package are skipped in the same decision; cleanup (always) and report (failure)
    # run; deploy is skipped: its `if` names no status function, so success() is implied.
    assert decision.skipped == ("test", "package", "deploy")
    assert decision.runnable == ("cleanup", "report")
    statuses: dict[str, StepStatus] = {
        "build": "failed",
        "test": "skipped",
        "package": "skipped",
        "deploy": "skipped",
        "cleanup": "passed",
        "report": "passed",
    }
    assert verdict(pipeline, statuses) == "failed"


def test_a_rerun_resets_its_roots_and_everything_downstream_in_pipeline_order() -> None:
    pipeline = pipeline_of(CHAIN)
    assert downstream(pipeline, ["build"]) == pipeline.keys  # everything follows build
    assert downstream(pipeline, ["test"]) == ("test", "package", "cleanup", "report", "deploy")
    assert downstream(pipeline, ["report", "package"]) == ("package", "cleanup", "report", "deploy")
    assert downstream(pipeline, ["report"]) == ("report",)
    assert downstream(pipeline, []) == ()
    # Reset, the re-run steps are decided anew: build fails no more, so test runs.
    statuses: dict[str, StepStatus] = {"build": "passed"}
    assert decide(pipeline, statuses, MAIN).runnable == ("test",)


def test_a_skip_by_condition_is_not_a_failure() -> None:
    pipeline = pipeline_of(
        """\
        steps:
          - {key: build, command: x}
          - {key: deploy, command: x, needs: build, if: branch == "main"}
          - {key: announce, command: x, needs: deploy}
          - {key: on-failure, command: x, needs: deploy, if: failure()}
        """
    )
    feature = RunFacts(branch="feature", event="push")
    decision = decide(pipeline, {"build": "passed"}, feature)
    assert decision.skipped == ("deploy", "on-failure")
    assert decision.runnable == ("announce",)
    statuses: dict[str, StepStatus] = {
        "build": "passed",
        "deploy": "skipped",
        "on-failure": "skipped",
        "announce": "passed",
    }
    assert verdict(pipeline, statuses) == "passed"


def test_the_status_of_a_need_drives_an_if() -> None:
    pipeline = pipeline_of(
        """\
        steps:
          - key: test
            command: x
            matrix: {os: [linux, mac]}
          - key: flaky-report
            command: x
            needs: test
            if: always() && status.test == "failed"
          - key: linux-only
            command: x
            needs: ["test[os=linux]"]
            if: status.test[os=linux] == "passed"
        """
    )
    failed_on_mac: dict[str, StepStatus] = {"test[os=linux]": "passed", "test[os=mac]": "failed"}
    decision = decide(pipeline, failed_on_mac, MAIN)
    assert decision.runnable == ("flaky-report", "linux-only")
    all_passed: dict[str, StepStatus] = {"test[os=linux]": "passed", "test[os=mac]": "passed"}
    assert decide(pipeline, all_passed, MAIN).skipped == ("flaky-report",)


def test_a_cancelled_need_stops_success_but_not_always() -> None:
    pipeline = pipeline_of(
        """\
        steps:
          - {key: a, command: x}
          - {key: b, command: x, needs: a}
          - {key: c, command: x, needs: a, if: always()}
          - {key: d, command: x, needs: a, if: failure()}
        """
    )
    decision = decide(pipeline, {"a": "cancelled"}, MAIN)
    assert decision.runnable == ("c",)
    assert decision.skipped == ("b", "d")


def test_the_verdict() -> None:
    pipeline = pipeline_of("steps: [{key: a, command: x}, {key: b, command: x, needs: a}]")
    assert verdict(pipeline, {}) == "running"
    assert verdict(pipeline, {"a": "passed", "b": "active"}) == "running"
    assert verdict(pipeline, {"a": "passed", "b": "passed"}) == "passed"
    assert verdict(pipeline, {"a": "passed", "b": "skipped"}) == "passed"
    assert verdict(pipeline, {"a": "skipped", "b": "skipped"}) == "passed"
    assert verdict(pipeline, {"a": "failed", "b": "skipped"}) == "failed"
    assert verdict(pipeline, {"a": "passed", "b": "cancelled"}) == "failed"


# -- properties: a step is never unblocked early, and every pipeline ends -----------------------

CONDITIONS = [None, "always()", "failure()", "success()", 'branch == "main"', '!(branch == "main")']
ENDED: list[StepStatus] = ["passed", "failed", "skipped", "cancelled"]


@st.composite
def dags(draw: st.DrawFn) -> Pipeline:
    """Up to 15 steps, each needing some earlier ones, each with one of a few conditions."""
    count = draw(st.integers(1, 15))
    steps = []
    for index in range(count):
        needs = draw(st.lists(st.integers(0, index - 1), unique=True, max_size=3)) if index else []
        condition = draw(st.sampled_from(CONDITIONS))
        step: dict[str, object] = {
            "key": f"s{index}",
            "command": "x",
            "needs": [f"s{n}" for n in needs],
        }
        if condition:
            step["if"] = condition
        steps.append(step)
    return parse_pipeline(yaml.safe_dump({"steps": steps}))


facts = st.sampled_from(
    [MAIN, RunFacts(branch="dev", event="push"), RunFacts(tag="v1", event="push")]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dags(), st.data(), facts)
def test_a_decision_never_unblocks_a_step_before_all_its_needs_ended(
    pipeline: Pipeline, data: st.DataObject, run: RunFacts
) -> None:
    all_statuses: list[StepStatus] = ["blocked", "pending", "active", *ENDED]
    statuses: dict[str, StepStatus] = {
        key: data.draw(st.sampled_from(all_statuses)) for key in pipeline.keys
    }
    decision = decide(pipeline, statuses, run)
    decided = decision.runnable + decision.skipped
    assert len(set(decided)) == len(decided)
    skipped = set(decision.skipped)
    for key in decided:
        assert statuses[key] == "blocked"
        for need in pipeline.step(key).needs:
            # Ended before, or skipped in this same decision (a skip cascades).
            assert statuses[need] in ENDED or need in skipped


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dags(), st.data(), facts)
def test_every_pipeline_ends_each_step_decided_once(
    pipeline: Pipeline, data: st.DataObject, run: RunFacts
) -> None:
    """The engine's loop: decide, run what is runnable (any outcome), decide again."""
    statuses: dict[str, StepStatus] = {}
    decided: list[str] = []
    for _round in range(len(pipeline) + 1):
        decision = decide(pipeline, statuses, run)
        decided.extend(decision.runnable + decision.skipped)
        for key in decision.skipped:
            statuses[key] = "skipped"
        for key in decision.runnable:
            statuses[key] = data.draw(st.sampled_from(["passed", "failed"]))
        if not decision.runnable and not decision.skipped:
            break
    assert sorted(decided) == sorted(pipeline.keys)  # each step exactly once
    outcome = verdict(pipeline, statuses)
    expected = "passed" if all(s in ("passed", "skipped") for s in statuses.values()) else "failed"
    assert outcome == expected
    # Every decision agrees with the step's `if` read over its ancestors' final statuses (they
    # had all ended when it was decided): skipped exactly when the condition is false.
    for key in pipeline.keys:
        upstream = [statuses[k] for k in pipeline.ancestors(key)]
        holds = pipeline.step(key).condition.evaluate(
            ConditionInputs(
                variables=run.variables(),
                need_status=statuses.__getitem__,
                upstream_failed="failed" in upstream,
                upstream_cancelled=False,
            )
        )
        assert (statuses[key] != "skipped") == holds


def test_a_step_built_by_hand_defaults_to_success() -> None:
    pipeline = Pipeline(
        (Step(key="a", command=("x",)), Step(key="b", command=("x",), needs=("a",)))
    )
    assert decide(pipeline, {"a": "failed"}, MAIN).skipped == ("b",)
    assert decide(pipeline, {"a": "passed"}, MAIN).runnable == ("b",)
