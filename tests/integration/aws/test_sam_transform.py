"""The CloudFormation the SAM transform makes of infra/template.yaml (offline, with the SAM
CLI's own samtranslator): the stream's event source mapping and least-privilege roles."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]


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


FUNCTIONS = (
    "StreamFunction",
    "WebhookFunction",
    "ApiFunction",
    "CompletionFunction",
    "ReaperFunction",
)
# X-Ray has no resource-level permissions: the one grant on "*" any role may hold.
XRAY_WRITE = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}
LIST_STREAMS = {"Fn::Sub": "${JobsTable.Arn}/stream/*"}


def policies(template: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Each role's policy documents: its inline policies and the RolePolicy resources on it."""
    found: dict[str, list[dict[str, Any]]] = {}
    for name, role in of_type(template, "AWS::IAM::Role").items():
        for given in role.get("Policies", []):
            # A conditional policy: its "true" branch is what a deployment with it gets.
            policy = given["Fn::If"][1] if "Fn::If" in given else given
            found.setdefault(name, []).append(policy["PolicyDocument"])
    for policy in of_type(template, "AWS::IAM::RolePolicy").values():
        found.setdefault(policy["RoleName"]["Ref"], []).append(policy["PolicyDocument"])
    return found


def statements(template: dict[str, Any], role: str) -> list[dict[str, Any]]:
    return [s for document in policies(template).get(role, []) for s in document["Statement"]]


def listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def grants(template: dict[str, Any], role: str) -> list[tuple[str, str]]:
    """(action, resource) pairs, a resource as canonical JSON."""
    return [
        (action, json.dumps(resource, sort_keys=True))
        for statement in statements(template, role)
        for action in listed(statement["Action"])
        for resource in listed(statement["Resource"])
    ]


def test_inline_policies_name_their_resources_and_actions(transformed: dict[str, Any]) -> None:
    roles = of_type(transformed, "AWS::IAM::Role")
    assert set(roles) == {f"{function}Role" for function in FUNCTIONS} | {
        "BuildRole",
        "SecretsBuildRole",
    }
    # Policies live on the roles only (inline or AWS::IAM::RolePolicy): nothing else grants.
    kinds = {
        r["Type"] for r in transformed["Resources"].values() if r["Type"].startswith("AWS::IAM")
    }
    assert kinds <= {"AWS::IAM::Role", "AWS::IAM::RolePolicy"}
    for name in roles:
        for statement in statements(transformed, name):
            assert statement["Effect"] == "Allow", (name, statement)
            actions = listed(statement["Action"])
            assert all("*" not in action for action in actions), (name, statement)
            if statement["Resource"] == "*":
                assert set(actions) == XRAY_WRITE, (name, statement)
                continue
            if actions == ["dynamodb:ListStreams"]:
                # ListStreams names no one stream: the jobs table's streams, as SAM's
                # DynamoDBStreamReadPolicy scopes it.
                assert statement["Resource"] == LIST_STREAMS, (name, statement)
                continue
            if name == "SecretsBuildRole" and actions == ["secretsmanager:GetSecretValue"]:
                # A secret's ARN ends in a random suffix: the stack's run secrets by their
                # name prefix, and nothing else.
                assert statement["Resource"]["Fn::Sub"].endswith(
                    ":secret:${AWS::StackName}/run-secrets/*"
                ), statement
                continue
            if any(action.startswith("ssm:") for action in actions):
                # A build's git token has a name of its own (App mode): the stack's path only.
                assert statement["Resource"]["Fn::Sub"].endswith(
                    ":parameter/${BuildProject}/git-tokens/*"
                ), statement
                assert actions in (
                    ["ssm:GetParameters"],
                    ["ssm:PutParameter"],
                    ["ssm:DeleteParameter"],
                ), statement
                continue
            # A log stream is named by its writer (Lambda, CodeBuild): the group's ARN (which
            # ends in ":*") is the narrowest resource, and names no other group.
            assert "*" not in json.dumps(statement["Resource"]), (name, statement)


def test_only_the_secrets_project_may_read_run_secrets(transformed: dict[str, Any]) -> None:
    """A build can use its role: the project a fork's pull request (or any repository without
    secrets) builds in must not be able to read a secret it is not given."""
    resources = transformed["Resources"]
    assert resources["BuildProject"]["Properties"]["ServiceRole"] == {
        "Fn::GetAtt": ["BuildRole", "Arn"]
    }
    assert resources["SecretsBuildProject"]["Properties"]["ServiceRole"] == {
        "Fn::GetAtt": ["SecretsBuildRole", "Arn"]
    }
    build_actions = {
        action
        for statement in statements(transformed, "BuildRole")
        for action in listed(statement["Action"])
    }
    assert not any(action.startswith("secretsmanager:") for action in build_actions)


def test_no_role_holds_a_managed_policy(transformed: dict[str, Any]) -> None:
    # SAM's own roles carried AWSLambdaBasicExecutionRole (logs on "*"),
    # AWSLambdaDynamoDBExecutionRole (stream reads on "*") and AWSXrayWriteOnlyAccess.
    for name, role in of_type(transformed, "AWS::IAM::Role").items():
        assert "ManagedPolicyArns" not in role, name
        assert "PermissionsBoundary" not in role, name


def test_each_function_runs_under_its_own_role_that_only_lambda_of_this_account_assumes(
    transformed: dict[str, Any],
) -> None:
    functions = of_type(transformed, "AWS::Lambda::Function")
    assert set(functions) == set(FUNCTIONS)
    roles = of_type(transformed, "AWS::IAM::Role")
    for function, props in functions.items():
        assert props["Role"] == {"Fn::GetAtt": [f"{function}Role", "Arn"]}, function
        trust = roles[f"{function}Role"]["AssumeRolePolicyDocument"]["Statement"]
        assert [t["Principal"] for t in trust] == [{"Service": "lambda.amazonaws.com"}]
        assert [t["Action"] for t in trust] == ["sts:AssumeRole"]
        assert [t["Condition"] for t in trust] == [
            {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
        ]
        # Tracing is active, and Lambda refuses a traced function whose role cannot write
        # traces: the two X-Ray actions sit in the role itself (not in a later policy).
        assert props["TracingConfig"] == {"Mode": "Active"}
        inline = [
            (action, statement["Resource"])
            for given in roles[f"{function}Role"]["Policies"]
            if "Fn::If" not in given
            for statement in given["PolicyDocument"]["Statement"]
            for action in listed(statement["Action"])
        ]
        assert all((action, "*") in inline for action in XRAY_WRITE), function


def test_each_function_writes_its_own_log_group_and_creates_none(
    transformed: dict[str, Any],
) -> None:
    groups = of_type(transformed, "AWS::Logs::LogGroup")
    for function, props in of_type(transformed, "AWS::Lambda::Function").items():
        # Lambda writes to /aws/lambda/<function name> (LoggingConfig names no other group):
        # the template makes that group, so the role needs no logs:CreateLogGroup.
        assert "LogGroup" not in props["LoggingConfig"], function
        assert groups[f"{function}Logs"]["LogGroupName"] == {
            "Fn::Sub": f"/aws/lambda/${{{function}}}"
        }
        own = json.dumps({"Fn::GetAtt": [f"{function}Logs", "Arn"]})
        logs = grants(transformed, f"{function}Role")
        # (The API function also reads builds' logs: logs:GetLogEvents on BuildLogGroup.)
        assert [g for g in logs if g[0].startswith("logs:") and g[0] != "logs:GetLogEvents"] == [
            ("logs:CreateLogStream", own),
            ("logs:PutLogEvents", own),
        ], function
    for name in of_type(transformed, "AWS::IAM::Role"):
        assert all(action != "logs:CreateLogGroup" for action, _ in grants(transformed, name))


def test_the_stream_role_reads_the_stream_and_sends_given_up_batches_to_the_queue(
    transformed: dict[str, Any],
) -> None:
    # What SAM added to its own role for the event source and its on-failure destination,
    # which Lambda checks when it creates the mapping.
    (mapping,) = of_type(transformed, "AWS::Lambda::EventSourceMapping").values()
    granted = grants(transformed, "StreamFunctionRole")
    stream = json.dumps(mapping["EventSourceArn"], sort_keys=True)
    assert stream == json.dumps({"Fn::GetAtt": ["JobsTable", "StreamArn"]})
    for action in ("DescribeStream", "GetRecords", "GetShardIterator"):
        assert (f"dynamodb:{action}", stream) in granted
    assert ("dynamodb:ListStreams", json.dumps(LIST_STREAMS, sort_keys=True)) in granted
    queue = json.dumps(mapping["DestinationConfig"]["OnFailure"]["Destination"], sort_keys=True)
    assert ("sqs:SendMessage", queue) in granted
    # No other function reads the stream or writes the queue.
    for function in FUNCTIONS:
        if function != "StreamFunction":
            others = grants(transformed, f"{function}Role")
            assert all(resource not in (stream, queue) for _, resource in others), function


def test_the_github_token_is_granted_only_with_the_parameter(transformed: dict[str, Any]) -> None:
    role = of_type(transformed, "AWS::IAM::Role")["StreamFunctionRole"]
    conditional = [given["Fn::If"] for given in role["Policies"] if "Fn::If" in given]
    assert [(c[0], c[2]) for c in conditional] == [("HasGitHubToken", {"Ref": "AWS::NoValue"})]
    (statement,) = conditional[0][1]["PolicyDocument"]["Statement"]
    assert statement["Action"] == "secretsmanager:GetSecretValue"
    assert statement["Resource"] == {"Ref": "GitHubTokenSecretArn"}


def test_each_grant_is_made_once(transformed: dict[str, Any]) -> None:
    for name in of_type(transformed, "AWS::IAM::Role"):
        seen = grants(transformed, name)
        assert len(seen) == len(set(seen)), (name, sorted(seen))


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
    log_group = json.dumps({"Fn::GetAtt": ["BuildLogGroup", "Arn"]})
    git_tokens = json.dumps(
        {
            "Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}"
            ":parameter/${BuildProject}/git-tokens/*"
        }
    )
    assert grants(transformed, "BuildRole") == [
        ("logs:CreateLogStream", log_group),
        ("logs:PutLogEvents", log_group),
        # App mode: its own git token, read by the name its StartBuild gives (no listing).
        ("ssm:GetParameters", git_tokens),
    ]
    # Every function that starts, stops or reads builds names this project, and no other.
    for name in roles:
        for statement in statements(transformed, name):
            if any(action.startswith("codebuild:") for action in listed(statement["Action"])):
                assert "${BuildProject}" in json.dumps(statement["Resource"]), (name, statement)
