"""CodeBuild on loopback, speaking its JSON 1.1 protocol (``X-Amz-Target:
CodeBuild_20161006.<Action>``), so the function processes reach it through boto3 unchanged
(``AWS_ENDPOINT_URL_CODEBUILD``). Also answers Secrets Manager's ``GetSecretValue`` for the
functions' secrets (``AWS_ENDPOINT_URL_SECRETS_MANAGER``).

Like CodeBuild: a build runs for a while and ends by itself; ``StopBuild`` only asks (the build
reports ``STOPPED`` ``stop_delay`` seconds later); a repeated ``idempotencyToken`` returns the
first build; any action can be throttled on demand (``ThrottlingException``). Each ended build
sends a "CodeBuild Build State Change" event to ``on_event`` (EventBridge, see ``AwsStack``).

The books it keeps are the tests' independent evidence: ``StartBuild`` calls per token,
builds per job attempt, and the most builds ``IN_PROGRESS`` per repository, checked at every
start and sampled continuously by a ticker thread.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Build", "CodeBuildServer"]

PROJECT = "chaos-build"
TARGET = "CodeBuild_20161006."
FINAL = ("SUCCEEDED", "FAILED", "FAULT", "STOPPED", "TIMED_OUT")


@dataclass
class Build:
    id: str
    token: str
    project: str
    variables: list[dict[str, str]]
    started: float
    ends_at: float
    final: str  # what it ends as if nobody stops it
    status: str = "IN_PROGRESS"
    stop_at: float | None = None
    ended: float | None = None

    def variable(self, name: str) -> str:
        return next((v["value"] for v in self.variables if v["name"] == name), "")

    @property
    def repo(self) -> str:
        return self.variable("SCHEDULER_REPO")

    @property
    def attempt_key(self) -> tuple[str, int]:
        return self.variable("SCHEDULER_JOB_ID"), int(self.variable("SCHEDULER_ATTEMPT") or 0)

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "arn": f"arn:aws:codebuild:us-east-1:123456789012:build/{self.id}",
            "projectName": self.project,
            "buildStatus": self.status,
            "currentPhase": "COMPLETED" if self.status != "IN_PROGRESS" else "BUILD",
            "startTime": self.started,
            "environment": {"environmentVariables": self.variables},
        }


@dataclass
class OverLimit:
    repo: str
    running: list[str]
    limit: int
    at: float


@dataclass
class Books:
    start_calls: Counter[str] = field(default_factory=Counter)  # token -> StartBuild calls
    builds_of: Counter[tuple[str, int]] = field(default_factory=Counter)  # attempt -> builds
    stop_calls: Counter[str] = field(default_factory=Counter)  # build id -> StopBuild calls
    throttled: Counter[str] = field(default_factory=Counter)  # action -> refusals
    over_limit: list[OverLimit] = field(default_factory=list)
    samples: int = 0
    most_running: Counter[str] = field(default_factory=Counter)  # repo -> max IN_PROGRESS


class _QuietServer(ThreadingHTTPServer):
    """A caller killed mid-request (the chaos kills function processes) resets its
    connection: that is the fault under test, not the stand-in's, so it prints nothing."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class CodeBuildServer:
    """``plan(repo, job_id, attempt) -> (seconds, final status)`` decides each build;
    ``limits`` is each repository's concurrency (the invariant the ticker samples)."""

    def __init__(
        self,
        port: int,
        *,
        plan: Callable[[str, str, int], tuple[float, str]],
        limits: Callable[[str], int],
        secrets: dict[str, str],
        stop_delay: float = 0.4,
    ) -> None:
        self.plan, self.limits, self.secrets, self.stop_delay = plan, limits, secrets, stop_delay
        self.builds: dict[str, Build] = {}
        self.by_token: dict[str, str] = {}
        self.books = Books()
        self.lock = threading.Lock()
        self.throttles: dict[str, int] = {}  # action -> refusals left (-1: until lifted)
        self.on_event: Callable[[dict[str, Any]], None] = lambda event: None
        self.shape_errors: list[str] = []
        self._stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                target = self.headers.get("X-Amz-Target", "")
                status, answer = server.handle(target, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = _QuietServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        threading.Thread(target=self._tick, daemon=True).start()

    # -- faults on demand -----------------------------------------------------------------

    def throttle(self, action: str, times: int = -1) -> None:
        """Refuse the next ``times`` calls of ``action`` (-1: until :meth:`lift`)."""
        with self.lock:
            self.throttles[action] = times

    def lift(self, action: str) -> None:
        with self.lock:
            self.throttles.pop(action, None)

    def _throttled(self, action: str) -> bool:
        left = self.throttles.get(action)
        if left is None or left == 0:
            return False
        if left > 0:
            self.throttles[action] = left - 1
        self.books.throttled[action] += 1
        return True

    # -- the protocol ---------------------------------------------------------------------

    def handle(self, target: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if target == "secretsmanager.GetSecretValue":
            arn = body["SecretId"]
            return 200, {"ARN": arn, "Name": arn, "SecretString": self.secrets[arn]}
        if not target.startswith(TARGET):
            return 400, {"__type": "UnknownOperationException", "message": target}
        action = target[len(TARGET) :]
        with self.lock:
            if self._throttled(action):
                return 400, {"__type": "ThrottlingException", "message": "Rate exceeded"}
            if action == "StartBuild":
                return self._start(body)
            if action == "StopBuild":
                return self._stop_build(body)
            if action == "ListBuildsForProject":
                return self._list_builds(body)
            if action == "BatchGetBuilds":
                ids = body["ids"]
                found = [self.builds[i].describe() for i in ids if i in self.builds]
                return 200, {
                    "builds": found,
                    "buildsNotFound": [i for i in ids if i not in self.builds],
                }
        return 400, {"__type": "InvalidInputException", "message": f"unsupported {action}"}

    def _start(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        token = body.get("idempotencyToken", "")
        variables = body.get("environmentVariablesOverride") or []
        names = {v.get("name") for v in variables}
        missing = {"SCHEDULER_JOB_ID", "SCHEDULER_ATTEMPT", "SCHEDULER_REPO"} - names
        if not token or missing or not body.get("projectName"):
            self.shape_errors.append(f"StartBuild without token/variables: {sorted(missing)}")
            return 400, {"__type": "InvalidInputException", "message": "bad request"}
        self.books.start_calls[token] += 1
        if token in self.by_token:  # CodeBuild: the same token answers with the first build
            return 200, {"build": self.builds[self.by_token[token]].describe()}
        now = time.monotonic()
        probe = Build("", token, body["projectName"], variables, now, now, "SUCCEEDED")
        job_id, attempt = probe.attempt_key
        seconds, final = self.plan(probe.repo, job_id, attempt)
        build = Build(
            f"{body['projectName']}:{uuid.uuid4()}",
            token,
            body["projectName"],
            variables,
            now,
            now + seconds,
            final,
        )
        self.builds[build.id] = build
        self.by_token[token] = build.id
        self.books.builds_of[build.attempt_key] += 1
        self._check(build.repo, now)
        return 200, {"build": build.describe()}

    def _list_builds(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """CodeBuild's ListBuildsForProject: a project's build ids, newest first by default,
        100 a page, the rest behind ``nextToken`` (here: the offset of the next page)."""
        if not body.get("projectName"):
            self.shape_errors.append("ListBuildsForProject without projectName")
            return 400, {"__type": "InvalidInputException", "message": "bad request"}
        mine = [b for b in self.builds.values() if b.project == body["projectName"]]
        mine.sort(
            key=lambda b: b.started, reverse=body.get("sortOrder", "DESCENDING") != "ASCENDING"
        )
        offset = int(body.get("nextToken") or 0)
        page = [b.id for b in mine[offset : offset + 100]]
        answer: dict[str, Any] = {"ids": page}
        if offset + 100 < len(mine):
            answer["nextToken"] = str(offset + 100)
        return 200, answer

    def _stop_build(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        build = self.builds.get(body.get("id", ""))
        if build is None:
            return 400, {"__type": "ResourceNotFoundException", "message": "no such build"}
        self.books.stop_calls[build.id] += 1
        if build.status != "IN_PROGRESS":
            return 400, {"__type": "InvalidInputException", "message": "Build is not in progress"}
        if build.stop_at is None:
            build.stop_at = time.monotonic() + self.stop_delay  # StopBuild only asks
        return 200, {"build": build.describe()}

    # -- time -----------------------------------------------------------------------------

    def _check(self, repo: str, now: float) -> None:
        running = [
            b.id for b in self.builds.values() if b.repo == repo and b.status == "IN_PROGRESS"
        ]
        self.books.most_running[repo] = max(self.books.most_running[repo], len(running))
        if len(running) > self.limits(repo):
            self.books.over_limit.append(OverLimit(repo, running, self.limits(repo), now))

    def _tick(self) -> None:
        while not self._stop.wait(0.02):
            ended: list[Build] = []
            with self.lock:
                now = time.monotonic()
                for build in self.builds.values():
                    if build.status != "IN_PROGRESS":
                        continue
                    if build.stop_at is not None and now >= build.stop_at:
                        build.status = "STOPPED"
                    elif now >= build.ends_at:
                        build.status = build.final
                    else:
                        continue
                    build.ended = now
                    ended.append(build)
                self.books.samples += 1
                for repo in {b.repo for b in self.builds.values() if b.status == "IN_PROGRESS"}:
                    self._check(repo, now)
            for build in ended:
                self.on_event(state_change(build))

    def in_progress(self) -> list[Build]:
        with self.lock:
            return [b for b in self.builds.values() if b.status == "IN_PROGRESS"]

    def close(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()


def state_change(build: Build) -> dict[str, Any]:
    """The "CodeBuild Build State Change" event EventBridge delivers for an ended build."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "CodeBuild Build State Change",
        "source": "aws.codebuild",
        "account": "123456789012",
        "region": "us-east-1",
        "detail": {
            "build-status": build.status,
            "project-name": build.project,
            "build-id": build.describe()["arn"],
            "additional-information": {
                "environment": {
                    "environment-variables": [
                        {**v, "type": v.get("type", "PLAINTEXT")} for v in build.variables
                    ]
                }
            },
        },
    }
