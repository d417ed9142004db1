"""The CloudFormation the SAM transform makes of infra/template.yaml (offline, with the SAM
CLI's own samtranslator): the stream's event source mapping and least-privilege policies."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def transformed() -> dict[str, Any]:
    subprocess.run(["make", "sam"], cwd=ROOT, check=True, capture_output=True)
    done = subprocess.run(
        [
            str(ROOT / ".venv-sam" / "bin" / "python"),
            str(Path(__file__).with_name("sam_transform.py")),
            str(ROOT / "infra" / "template.yaml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout))


def of_type(template: dict[str, Any], kind: str) -> dict[str, Any]:
    return {n: r["Properties"] for n, r in template["Resources"].items() if r["Type"] == kind}


def test_the_stream_mapping_is_what_the_local_runner_emulates(transformed: dict[str, Any]) -> None:
    (mapping,) = of_type(transformed, "AWS::Lambda::EventSourceMapping").values()
    assert mapping["FunctionName"] == {"Ref": "StreamFunction"}
    assert mapping["BatchSize"] == 100 and mapping["MaximumBatchingWindowInSeconds"] == 0
    assert mapping["BisectBatchOnFunctionError"] is True
    assert mapping["MaximumRetryAttempts"] == 3 and mapping["MaximumRecordAgeInSeconds"] == 3600
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["DestinationConfig"]["OnFailure"]["Destination"] == {
        "Fn::GetAtt": ["StreamDeadLetterQueue", "Arn"]
    }
    assert json.loads(mapping["FilterCriteria"]["Filters"][0]["Pattern"]) == {
        "eventName": ["INSERT", "MODIFY"]
    }


def statements(role: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for given in role.get("Policies", []):
        # A conditional policy: its "true" branch is what a deployment with it gets.
        policy = given["Fn::If"][1] if "Fn::If" in given else given
        found += policy["PolicyDocument"]["Statement"]
    return found


def test_inline_policies_name_their_resources_and_actions(transformed: dict[str, Any]) -> None:
    roles = of_type(transformed, "AWS::IAM::Role")
    assert set(roles) == {
        "StreamFunctionRole",
        "WebhookFunctionRole",
        "ApiFunctionRole",
        "CompletionFunctionRole",
        "ReaperFunctionRole",
        "BuildRole",
    }
    for name, role in roles.items():
        for statement in statements(role):
            actions = statement["Action"]
            actions = actions if isinstance(actions, list) else [actions]
            assert all("*" not in action for action in actions), (name, statement)
            assert statement["Resource"] != "*", (name, statement)
            # A build's log stream is named by CodeBuild (the build's id): its group's ARN
            # (which ends in ":*") is the narrowest resource, and names no other group.
            assert "*" not in json.dumps(statement["Resource"]), (name, statement)


def test_each_grant_is_made_once(transformed: dict[str, Any]) -> None:
    for name, role in of_type(transformed, "AWS::IAM::Role").items():
        seen: list[str] = []
        for statement in statements(role):
            actions = statement["Action"]
            for action in actions if isinstance(actions, list) else [actions]:
                key = f"{action} {json.dumps(statement['Resource'], sort_keys=True)}"
                assert key not in seen, (name, key)
                seen.append(key)


def test_the_urls_are_public_and_the_api_asks_for_its_token(transformed: dict[str, Any]) -> None:
    # A browser cannot sign SigV4 requests: the API URL is public and the app asks for the
    # token (ApiTokenSecret, given to the API function only).
    urls = {
        props["TargetFunctionArn"]["Ref"]: props["AuthType"]
        for props in of_type(transformed, "AWS::Lambda::Url").values()
    }
    assert urls == {"WebhookFunction": "NONE", "ApiFunction": "NONE"}
    holders = [
        name
        for name, props in of_type(transformed, "AWS::Lambda::Function").items()
        if "SCHEDULER_API_TOKEN_ARN" in props.get("Environment", {}).get("Variables", {})
    ]
    assert holders == ["ApiFunction"]


def test_builds_run_in_the_stacks_own_project_with_a_role_that_only_writes_its_log(
    transformed: dict[str, Any],
) -> None:
    project = of_type(transformed, "AWS::CodeBuild::Project")["BuildProject"]
    assert project["ServiceRole"] == {"Fn::GetAtt": ["BuildRole", "Arn"]}
    assert project["Source"]["Type"] == "NO_SOURCE"  # each build names its repository
    assert project["LogsConfig"]["CloudWatchLogs"]["GroupName"] == {"Ref": "BuildLogGroup"}
    roles = of_type(transformed, "AWS::IAM::Role")
    trust = roles["BuildRole"]["AssumeRolePolicyDocument"]["Statement"]
    assert [t["Principal"] for t in trust] == [{"Service": "codebuild.amazonaws.com"}]
    assert all("aws:SourceAccount" in t["Condition"]["StringEquals"] for t in trust)
    granted = [
        (action, json.dumps(statement["Resource"]))
        for statement in statements(roles["BuildRole"])
        for action in statement["Action"]
    ]
    log_group = json.dumps({"Fn::GetAtt": ["BuildLogGroup", "Arn"]})
    assert granted == [("logs:CreateLogStream", log_group), ("logs:PutLogEvents", log_group)]
    # Every function that starts, stops or reads builds names this project, and no other.
    for name, role in roles.items():
        for statement in statements(role):
            actions = statement["Action"]
            actions = actions if isinstance(actions, list) else [actions]
            if any(action.startswith("codebuild:") for action in actions):
                assert "${BuildProject}" in json.dumps(statement["Resource"]), (name, statement)
