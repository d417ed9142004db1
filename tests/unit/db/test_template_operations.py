"""The SAM template's operational parts: alarms, logs, outputs, filters (read, not deployed)."""

from __future__ import annotations

import json
from typing import Any

from scheduler.db.template import load_template
from scheduler.settings import DEFAULT_TEMPLATE

TEMPLATE: dict[str, Any] = load_template(DEFAULT_TEMPLATE)
RESOURCES: dict[str, Any] = TEMPLATE["Resources"]
FUNCTIONS = sorted(
    name for name, r in RESOURCES.items() if r["Type"] == "AWS::Serverless::Function"
)


def alarms() -> list[dict[str, Any]]:
    return [r["Properties"] for r in RESOURCES.values() if r["Type"] == "AWS::CloudWatch::Alarm"]


def test_every_function_has_error_and_throttle_alarms() -> None:
    watched = {
        (a["MetricName"], a["Dimensions"][0]["Value"]["Ref"])
        for a in alarms()
        if a["Namespace"] == "AWS/Lambda"
    }
    for function in FUNCTIONS:
        assert ("Errors", function) in watched and ("Throttles", function) in watched
    assert ("IteratorAge", "StreamFunction") in watched


def test_dead_letters_and_failed_builds_raise_alarms_on_one_topic() -> None:
    metrics = {a["MetricName"] for a in alarms()}
    assert {"ApproximateNumberOfMessagesVisible", "FailedBuilds"} <= metrics
    assert all(a["AlarmActions"] == [{"Ref": "AlarmTopic"}] for a in alarms())


def test_logs_are_json_at_info_and_kept_for_a_bounded_time() -> None:
    logging_config = TEMPLATE["Globals"]["Function"]["LoggingConfig"]
    assert logging_config["LogFormat"] == "JSON"
    assert logging_config["ApplicationLogLevel"] == "INFO"
    groups = {
        r["Properties"]["LogGroupName"]["Fn::Sub"]: r["Properties"]["RetentionInDays"]
        for r in RESOURCES.values()
        if r["Type"] == "AWS::Logs::LogGroup"
    }
    kept = {"Ref": "LogRetentionDays"}
    builds = "/aws/codebuild/${AWS::StackName}-build"  # the jobs' own output
    assert groups == {builds: kept} | {f"/aws/lambda/${{{f}}}": kept for f in FUNCTIONS}


def test_the_webhook_url_output_is_the_payload_url() -> None:
    value = TEMPLATE["Outputs"]["WebhookUrl"]["Value"]["Fn::Sub"]
    assert value == "${WebhookFunctionUrl.FunctionUrl}webhook"  # FunctionUrl ends with "/"


def test_ttl_removals_never_reach_the_stream_function() -> None:
    events = RESOURCES["StreamFunction"]["Properties"]["Events"]
    (source,) = [e["Properties"] for e in events.values() if e["Type"] == "DynamoDB"]
    patterns = [json.loads(f["Pattern"]) for f in source["FilterCriteria"]["Filters"]]
    assert patterns == [{"eventName": ["INSERT", "MODIFY"]}]


def test_retention_days_reaches_the_functions() -> None:
    variables = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["SCHEDULER_RETENTION_DAYS"] == {"Ref": "RetentionDays"}


def test_the_local_runner_tables_are_not_deployed() -> None:
    tables = {name for name, r in RESOURCES.items() if r["Type"] == "AWS::DynamoDB::Table"}
    assert tables == {"JobsTable", "ReposTable"}
    local = load_template(DEFAULT_TEMPLATE.parent / "local-tables.yaml")["Resources"]
    assert set(local) == {"RunnerStateTable", "DeadLetterTable"}


def test_the_public_functions_have_reserved_concurrency_from_parameters() -> None:
    """A flood of unsigned requests to a public function URL takes at most its reservation of
    the account's concurrency: the stream function (unreserved) is never starved by it."""
    parameters = TEMPLATE["Parameters"]
    public = {n for n in FUNCTIONS if "FunctionUrlConfig" in RESOURCES[n]["Properties"]}
    assert public == {"WebhookFunction", "ApiFunction"}
    defaults = {}
    for function in public:
        reserved = RESOURCES[function]["Properties"]["ReservedConcurrentExecutions"]
        # 0 in the parameter means "no reservation" (an account whose quota is too small for
        # one), never Lambda's 0, which would throttle every request.
        condition, value, no_value = reserved["Fn::If"]
        assert no_value == {"Ref": "AWS::NoValue"}
        parameter = parameters[value["Ref"]]
        assert parameter["Type"] == "Number" and parameter["MinValue"] == 0
        assert TEMPLATE["Conditions"][condition] == {
            "Fn::Not": [{"Fn::Equals": [{"Ref": value["Ref"]}, 0]}]
        }
        defaults[function] = parameter["Default"]
    assert defaults == {"WebhookFunction": 20, "ApiFunction": 10}
    assert "ReservedConcurrentExecutions" not in RESOURCES["StreamFunction"]["Properties"]
