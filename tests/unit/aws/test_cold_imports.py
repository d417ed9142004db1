"""Each Lambda function of the template loads only what it uses at cold start.

One fresh interpreter per function, with the function's environment as the template gives it
(secrets as plain values, tracing off as in the other tests): it imports the handler's module,
composes the core and touches what the handler uses first, then reports the top-level packages
loaded. Figures: ``bench/cold_imports.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scheduler.db.template import load_template

ROOT = Path(__file__).resolve().parents[3]
TEMPLATE = load_template(ROOT / "infra" / "template.yaml")

# Each handler's first use of the core, beyond core() itself.
FIRST_USE = {
    "webhook": "c.webhook_app",
    "api": "c.query_app",
    "stream": "c.dispatcher",
    "build_completed": "c.runs",
    "reap": "(c.reaper, c.reconciler)",
}
# Never at cold start unless configured: metrics' client (the local route only), the OTLP SDK
# (SCHEDULER_TRACING=otlp), X-Ray (tracing off here), PyJWT and cryptography (App mode).
NOWHERE = {"prometheus_client", "opentelemetry", "aws_xray_sdk", "jwt", "cryptography"}
# The functions that serve no HTTP and post nothing to GitHub (no token configured).
NO_HTTP = {"jinja2", "markupsafe", "httpx", "httpcore", "scheduler.api", "scheduler.github"}
MUST_NOT_LOAD = {
    # Serves no page; posts nothing to GitHub when no token is configured.
    "WebhookFunction": NOWHERE | {"jinja2", "markupsafe", "httpx", "httpcore"},
    "ApiFunction": NOWHERE | {"httpx", "httpcore", "scheduler.github"},  # receives no delivery
    "StreamFunction": NOWHERE | NO_HTTP,
    "CompletionFunction": NOWHERE | NO_HTTP,
    "ReaperFunction": NOWHERE | NO_HTTP,
}
SECRETS = {
    "SCHEDULER_WEBHOOK_SECRET_ARN": ("GITHUB_WEBHOOK_SECRET", "cold-imports-webhook-secret-0123"),
    "SCHEDULER_CURSOR_SECRET_ARN": ("SCHEDULER_CURSOR_SECRET", "cold-imports-cursor-secret"),
    "SCHEDULER_API_TOKEN_ARN": ("SCHEDULER_API_TOKEN", "cold-imports-api-token"),
}
PROBE = """
import importlib, json, sys
handlers = importlib.import_module({module!r})
c = handlers.core()
{first_use}
names = set(sys.modules)
print(json.dumps(sorted(names | {{n.split('.')[0] for n in names}})))
"""


def environment(logical_id: str, config: Path, **extra: str) -> dict[str, str]:
    """The function's variables from the template (optional parts off, references given
    stand-ins, parameters their defaults), secrets as the plain variables Settings reads."""
    parameters = TEMPLATE.get("Parameters", {})
    shared = TEMPLATE["Globals"]["Function"].get("Environment", {}).get("Variables", {})
    own = TEMPLATE["Resources"][logical_id]["Properties"]["Environment"]["Variables"]
    env = {
        "PATH": "/usr/bin:/bin",
        "AWS_LAMBDA_FUNCTION_NAME": logical_id,
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "SCHEDULER_DYNAMODB_ENDPOINT": "http://127.0.0.1:9",  # made, never contacted
        "SCHEDULER_TRACING": "off",
    }
    for name, given in {**shared, **own}.items():
        value: Any = given["Fn::If"][2] if isinstance(given, dict) and "Fn::If" in given else given
        if value == {"Ref": "AWS::NoValue"}:
            continue
        if name in SECRETS:
            env[SECRETS[name][0]] = SECRETS[name][1]
        elif name == "SCHEDULER_CONFIG":
            env[name] = str(config)
        elif isinstance(value, dict) and value.get("Ref") in parameters:
            env[name] = str(parameters[value["Ref"]]["Default"])
        elif isinstance(value, dict):
            env[name] = f"stand-in-{name.lower()}"
        else:
            env[name] = str(value)
    return {**env, **extra}


def loaded_modules(logical_id: str, config: Path, **extra: str) -> set[str]:
    handler = TEMPLATE["Resources"][logical_id]["Properties"]["Handler"]
    module, _, function = handler.rpartition(".")
    probe = PROBE.format(module=module, first_use=FIRST_USE[function])
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env=environment(logical_id, config, **extra),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cold") / "scheduler.toml"
    path.write_text((ROOT / "scheduler.local.toml").read_text())
    return path


def test_every_function_of_the_template_is_covered() -> None:
    functions = {
        name
        for name, resource in TEMPLATE["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
        and str(resource["Properties"].get("Handler", "")).startswith("scheduler.aws.handlers.")
    }
    assert functions == set(MUST_NOT_LOAD)


@pytest.mark.parametrize("logical_id", sorted(MUST_NOT_LOAD))
def test_a_cold_start_loads_only_what_the_function_uses(logical_id: str, config: Path) -> None:
    loaded = loaded_modules(logical_id, config)
    # The probe really composed a core: the store's client library is there.
    assert {"pynamodb", "botocore", "scheduler.wiring"} <= loaded
    assert sorted(MUST_NOT_LOAD[logical_id] & loaded) == []


def test_a_configured_github_token_still_brings_the_status_poster(config: Path) -> None:
    """Lazy, not lost: with a token the stream function makes its notifier (and httpx)."""
    loaded = loaded_modules("StreamFunction", config, SCHEDULER_GITHUB_TOKEN="cold-token")
    assert {"httpx", "scheduler.github.statuses"} <= loaded
    assert sorted({"jinja2", "jwt", "cryptography"} & loaded) == []


def test_x_ray_traces_github_only_where_a_github_client_is_made(config: Path) -> None:
    """The template's default tracing: X-Ray patches botocore at cold start and httpx only
    when a GitHub client is first made, so the reaper still loads no httpx."""
    reaper = loaded_modules("ReaperFunction", config, SCHEDULER_TRACING="xray")
    assert "aws_xray_sdk" in reaper
    assert sorted({"httpx", "httpcore", "jinja2"} & reaper) == []
    stream = loaded_modules(
        "StreamFunction", config, SCHEDULER_TRACING="xray", SCHEDULER_GITHUB_TOKEN="cold-token"
    )
    assert {"aws_xray_sdk.ext.httpx", "httpx"} <= stream
