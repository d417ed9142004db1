"""Issue 12: every built Lambda function boots under AWS's own runtime interface client.

``make sam-build`` builds the artefacts (``.aws-sam/build/<LogicalId>/``); each function is then
started as ``python -S -m awslambdaric <Handler>`` with only its artefact (and the runtime client)
on the import path, the environment the template gives it, and ``AWS_LAMBDA_RUNTIME_API``
pointing at a loopback stand-in of the Lambda Runtime API. Each gets its real event shapes and
works against DynamoDB Local; CodeBuild is a stand-in on the same server that checks the request
shape. A missing dependency or a wrong handler path fails here (``/runtime/init/error``).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from scheduler.db.models import JobModel
from scheduler.db.template import load_template
from scheduler.github.signature import sign
from scheduler.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
BUILD = ROOT / ".aws-sam" / "build"
RIC = ROOT / ".aws-sam" / "ric"
SECRET = "boot-test-secret-0123456789abcdef"
PROJECT = "ci-project"
WEBHOOK_SECRET_ARN = "arn:aws:secretsmanager:us-east-1:1:secret:webhook-AbCdEf"
CURSOR_SECRET_ARN = "arn:aws:secretsmanager:us-east-1:1:secret:cursor-AbCdEf"
API_TOKEN_SECRET_ARN = "arn:aws:secretsmanager:us-east-1:1:secret:api-token-AbCdEf"
API_TOKEN = "api-token-for-the-boot-test"
SECRETS = {
    WEBHOOK_SECRET_ARN: SECRET,
    CURSOR_SECRET_ARN: "cursor-key-for-the-boot-test",
    API_TOKEN_SECRET_ARN: API_TOKEN,
}
FUNCTIONS = (
    "WebhookFunction",
    "ApiFunction",
    "StreamFunction",
    "CompletionFunction",
    "ReaperFunction",
)
API = "/2018-06-01/runtime"


class RuntimeApi:
    """The Lambda Runtime API (next, response, error, init error) and a CodeBuild stand-in."""

    def __init__(self) -> None:
        self.events: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.results: dict[str, tuple[str, Any]] = {}
        self.done: dict[str, threading.Event] = {}
        self.init_errors: list[Any] = []
        self.first_poll: float | None = None
        self.codebuild: list[tuple[str, dict[str, Any]]] = []
        self.secrets_read: list[str] = []
        self.github_reads: list[str] = []  # GitHub's contents API: no pipeline file here
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # the runtime client (libcurl) keeps its connection

            def log_message(self, *args: Any) -> None:
                pass

            def _body(self) -> Any:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                return json.loads(raw) if raw else None

            def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path.startswith("/repos/"):
                    api.github_reads.append(self.path)
                    self._send(404, {"message": "Not Found"})
                    return
                assert self.path == f"{API}/invocation/next", self.path
                if api.first_poll is None:
                    api.first_poll = time.monotonic()
                request_id, event = api.events.get()
                self._send(
                    200,
                    event,
                    {
                        "Lambda-Runtime-Aws-Request-Id": request_id,
                        "Lambda-Runtime-Deadline-Ms": str(int(time.time() * 1000) + 60_000),
                        "Lambda-Runtime-Invoked-Function-Arn": "arn:aws:lambda:us-east-1:1:f",
                        "Lambda-Runtime-Trace-Id": "Root=1-5f0c0000-0123456789abcdef01234567;"
                        "Parent=53995c3f42cd8ad8;Sampled=1",
                    },
                )

            def do_POST(self) -> None:
                body = self._body()
                if self.path == f"{API}/init/error":
                    api.init_errors.append(body)
                elif self.path.startswith(f"{API}/invocation/"):
                    request_id, kind = self.path.split("/")[-2:]
                    api.results[request_id] = (kind, body)
                    api.done[request_id].set()
                elif self.headers.get("X-Amz-Target") == "secretsmanager.GetSecretValue":
                    arn = body["SecretId"]
                    api.secrets_read.append(arn)
                    self._send(200, {"ARN": arn, "Name": arn, "SecretString": SECRETS[arn]})
                    return
                elif self.headers.get("X-Amz-Target", "").startswith("CodeBuild_20161006."):
                    action = self.headers["X-Amz-Target"].split(".")[1]
                    api.codebuild.append((action, body))
                    if action == "StartBuild":
                        build = {"id": f"{PROJECT}:{uuid.uuid4()}", "buildStatus": "IN_PROGRESS"}
                        self._send(200, {"build": build})
                    else:
                        self._send(200, {"builds": [], "buildsNotFound": []})
                    return
                else:
                    raise AssertionError(f"unexpected POST {self.path}")
                self._send(202, {"status": "OK"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def invoke(self, event: dict[str, Any], timeout: float = 60) -> Any:
        request_id = str(uuid.uuid4())
        self.done[request_id] = threading.Event()
        self.events.put((request_id, event))
        assert self.done[request_id].wait(timeout), f"no answer; init errors {self.init_errors}"
        kind, body = self.results[request_id]
        assert kind == "response", body
        return body


@pytest.fixture(scope="module")
def artefacts() -> Path:
    build = subprocess.run(
        ["make", "sam-build", "lambda-ric"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    compiled = "lambda-bytecode: 5 artefacts compiled" in build.stderr
    assert compiled or "lambda-bytecode: skipped: no Python 3.12" in build.stderr, build.stderr
    for function in FUNCTIONS:
        folder = BUILD / function
        assert (folder / "scheduler" / "aws" / "handlers.py").exists(), function
        assert not (folder / "tests").exists() and not (folder / "bench").exists()
        assert not (folder / ".dynamodb-local").exists()
        if compiled:
            # Lambda's code folder is read-only: the bytecode of Lambda's Python ships with it.
            for module in ("scheduler/aws/handlers.py", "botocore/client.py"):
                source = folder / module
                pyc = source.parent / "__pycache__" / f"{source.stem}.cpython-312.pyc"
                assert pyc.exists(), (function, module)
    return BUILD


def function_environment(logical_id: str, settings: Settings) -> dict[str, str]:
    """The function's environment as the template gives it, its references made local."""
    refs = {
        "JobsTable": settings.tables.jobs,
        "ReposTable": settings.tables.repos,
        "RepositoryConfigFile": "scheduler.local.toml",
        "BuildProject": PROJECT,
        "SecretsBuildProject": f"{PROJECT}-secrets",
        "WebhookSecret": WEBHOOK_SECRET_ARN,
        "CursorSecret": CURSOR_SECRET_ARN,
        "ApiTokenSecret": API_TOKEN_SECRET_ARN,
        "RetentionDays": "30",
    }
    template = load_template(BUILD / "template.yaml")
    shared = template.get("Globals", {}).get("Function", {}).get("Environment", {})
    own = template["Resources"][logical_id]["Properties"]["Environment"]
    variables = {**shared.get("Variables", {}), **own["Variables"]}
    env = {}
    for name, given in variables.items():
        # The test deploys with every optional part off: a condition takes its else branch.
        conditional = isinstance(given, dict) and set(given) == {"Fn::If"}
        value = given["Fn::If"][2] if conditional else given
        if value == {"Ref": "AWS::NoValue"}:
            continue
        if isinstance(value, dict) and set(value) == {"Ref"}:
            env[name] = refs[value["Ref"]]
        elif isinstance(value, dict) and set(value) == {"Fn::Sub"}:
            env[name] = value["Fn::Sub"].replace("${AWS::StackName}", "boot-test")
        else:
            assert isinstance(value, str | int), (name, value)
            env[name] = str(value)
    return env


class Function:
    def __init__(self, logical_id: str, settings: Settings, artefacts: Path, logs: Path) -> None:
        template = load_template(artefacts / "template.yaml")
        handler = template["Resources"][logical_id]["Properties"]["Handler"]
        self.api = RuntimeApi()
        root = artefacts / logical_id
        env = {
            "PATH": os.environ["PATH"],
            "AWS_LAMBDA_RUNTIME_API": self.api.address,
            "AWS_LAMBDA_FUNCTION_NAME": logical_id,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
            "LAMBDA_TASK_ROOT": str(root),
            "_HANDLER": handler,
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "PYTHONPATH": f"{root}:{RIC}",
            # Local stand-ins: DynamoDB Local, and CodeBuild on the Runtime API's server.
            "SCHEDULER_DYNAMODB_ENDPOINT": settings.dynamodb_endpoint or "",
            "AWS_ENDPOINT_URL_CODEBUILD": f"http://{self.api.address}",
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": f"http://{self.api.address}",
            **function_environment(logical_id, settings),
        }
        if logical_id == "StreamFunction":
            # GitHub's contents API (the stream reads pipeline files): on the same stand-in.
            # Only there: elsewhere the payloads' github.com clone URLs must stay GitHub's.
            env["SCHEDULER_GITHUB_API_URL"] = f"http://{self.api.address}"
        self.log = logs / f"{logical_id}.log"
        self.started = time.monotonic()
        # -S: no site-packages; the artefact and the runtime client are all there is.
        self.process = subprocess.Popen(
            [sys.executable, "-S", "-m", "awslambdaric", handler],
            cwd=root,
            env=env,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        """What the function printed (its log lines), for a failing assertion."""
        return self.log.read_text(errors="replace")[-4000:]

    def invoke(self, event: dict[str, Any]) -> Any:
        try:
            return self.api.invoke(event)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.output()}") from None

    def boot_seconds(self) -> float:
        assert self.api.first_poll is not None
        return self.api.first_poll - self.started

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(10)


@pytest.fixture
def functions(
    artefacts: Path, settings: Settings, tables: object, tmp_path: Path
) -> Iterator[dict[str, Function]]:
    started = {name: Function(name, settings, artefacts, tmp_path) for name in FUNCTIONS}
    try:
        yield started
    finally:
        for function in started.values():
            function.stop()
        for name, function in started.items():
            assert function.api.init_errors == [], (name, function.api.init_errors)


def url_event(
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    query: str = "",
) -> dict[str, Any]:
    """A Function URL request (payload format 2.0)."""
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": {k.lower(): v for k, v in (headers or {}).items()},
        "requestContext": {
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "1.2.3.4"},
            "requestId": str(uuid.uuid4()),
            "timeEpoch": int(time.time() * 1000),
        },
        "body": body.decode(),
        "isBase64Encoded": False,
    }


def stream_event(job_id: str, old: dict[str, Any] | None, sequence: str) -> dict[str, Any]:
    new = JobModel.get(job_id, consistent_read=True).serialize()
    data: dict[str, Any] = {
        "Keys": {"job_id": {"S": job_id}},
        "NewImage": new,
        "SequenceNumber": sequence,
        "SizeBytes": 100,
        "StreamViewType": "NEW_AND_OLD_IMAGES",
        "ApproximateCreationDateTime": time.time(),
    }
    if old is not None:
        data["OldImage"] = old
    return {
        "Records": [
            {
                "eventID": str(uuid.uuid4()),
                "eventName": "MODIFY" if old else "INSERT",
                "eventVersion": "1.1",
                "eventSource": "aws:dynamodb",
                "awsRegion": "us-east-1",
                "dynamodb": data,
                "eventSourceARN": "arn:aws:dynamodb:us-east-1:1:table/jobs/stream/2026",
            }
        ]
    }


def test_every_function_boots_under_the_runtime_client_and_does_its_job(
    functions: dict[str, Function],
) -> None:
    webhook, stream = functions["WebhookFunction"], functions["StreamFunction"]
    completion, reaper = functions["CompletionFunction"], functions["ReaperFunction"]
    sha = "e" * 40
    body = json.dumps(
        {
            "ref": "refs/heads/main",
            "after": sha,
            "repository": {
                "full_name": "boot/app",
                "clone_url": "https://github.com/boot/app.git",
            },
            "sender": {"login": "octocat"},
        }
    ).encode()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": "boot-1",
        "X-Hub-Signature-256": sign(SECRET.encode(), body),
    }

    # The webhook: a signed push makes a job; the read routes see it.
    answer = webhook.invoke(url_event("POST", "/webhook", body, headers))
    assert answer["statusCode"] == 202, answer
    job_id = json.loads(answer["body"])["job_id"]
    # The public URL serves the webhook only; reads go to the IAM-authenticated API function.
    hidden = webhook.invoke(url_event("GET", "/repos/boot/app/jobs"))
    assert hidden["statusCode"] == 404, hidden
    api = functions["ApiFunction"]
    # The API asks for its token (from Secrets Manager, as the other secrets).
    refused = api.invoke(url_event("GET", "/repos/boot/app/jobs"))
    assert refused["statusCode"] == 401, refused
    bearer = {"Authorization": f"Bearer {API_TOKEN}"}
    listing = api.invoke(url_event("GET", "/repos/boot/app/jobs", headers=bearer))
    assert listing["statusCode"] == 200, listing
    # The dashboard renders from the templates packaged with the function.
    page = api.invoke(url_event("GET", "/ui/repos/boot/app", headers=bearer))
    assert page["statusCode"] == 200 and job_id in page["body"], page
    assert [j["job_id"] for j in json.loads(listing["body"])["jobs"]] == [job_id]
    health = webhook.invoke(url_event("GET", "/healthz"))
    assert health["statusCode"] == 200, health
    # Secrets came from Secrets Manager, once each (the environment holds only their ARNs),
    # and each function read only its own.
    assert webhook.api.secrets_read == [WEBHOOK_SECRET_ARN]
    assert api.api.secrets_read == [CURSOR_SECRET_ARN, API_TOKEN_SECRET_ARN]

    # The stream: the new job is activated; its activation starts one build.
    pending = JobModel.get(job_id, consistent_read=True).serialize()
    assert stream.invoke(stream_event(job_id, None, "100")) == {"batchItemFailures": []}
    assert str(JobModel.get(job_id, consistent_read=True).status) == "active"
    # Its commit's pipeline file was asked of GitHub first (none: the job is its one step).
    assert stream.api.github_reads == [
        f"/repos/boot/app/contents/.scheduler/pipeline.yml?ref={sha}"
    ]
    started = stream.invoke(stream_event(job_id, pending, "200"))
    assert started == {"batchItemFailures": []}, stream.output()
    starts = [call for action, call in stream.api.codebuild if action == "StartBuild"]
    assert len(starts) == 1, (stream.api.codebuild, stream.output())
    # The build is of the job's repository at its exact commit (on the ref that holds it).
    assert starts[0]["projectName"] == PROJECT
    assert starts[0]["sourceVersion"] == f"refs/heads/main^{{{sha}}}"
    assert starts[0]["sourceLocationOverride"] == "https://github.com/boot/app.git"
    assert starts[0]["sourceTypeOverride"] == "GITHUB"
    assert starts[0]["idempotencyToken"] == f"{job_id}#1"
    build_id = JobModel.get(job_id, consistent_read=True).run_id
    assert build_id and build_id.startswith(f"{PROJECT}:")

    # The build's completion (EventBridge) passes the job.
    event = {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "CodeBuild Build State Change",
        "source": "aws.codebuild",
        "account": "1",
        "region": "us-east-1",
        "detail": {
            "build-status": "SUCCEEDED",
            "project-name": PROJECT,
            "build-id": build_id,
            "additional-information": {
                "environment": {
                    "environment-variables": [
                        {"name": "SCHEDULER_JOB_ID", "value": job_id, "type": "PLAINTEXT"},
                        {"name": "SCHEDULER_ATTEMPT", "value": "1", "type": "PLAINTEXT"},
                    ]
                }
            },
        },
    }
    assert completion.invoke(event) == {"reported": True, "job_id": job_id}
    assert str(JobModel.get(job_id, consistent_read=True).status) == "passed"

    # The scheduled reaper: nothing overdue, nothing stalled.
    scheduled = {"detail-type": "Scheduled Event", "source": "aws.events", "detail": {}}
    assert reaper.invoke(scheduled) == {
        "timed_out": [],
        "promoted": {},
        "runs_ended": [],
        "released": [],
        "stopping": [],
        "retried": [],
        "settled": [],
    }

    for name, function in functions.items():
        print(f"{name}: booted and imported its handler in {function.boot_seconds():.2f} s")


def test_the_template_passes_sam_validate_lint() -> None:
    checked = subprocess.run(
        ["make", "sam-validate"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-3000:]
    assert "is a valid SAM Template" in checked.stdout + checked.stderr
