"""Every response ``/openapi.json`` describes is produced over real HTTP, as described.

The local stack's application (webhook, read routes, dashboard, ``/metrics``) is served on
loopback against DynamoDB Local with an API token set; one request per described
(method, path, status) makes that status, and its body is held to the document (JSON bodies
against their schemas, other bodies by media type). 503 comes from a second server, in a
process of its own, whose DynamoDB endpoint refuses connections. The test ends by comparing
what was produced with what is described, both ways.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from scheduler.api.metrics_route import scheduler_metrics
from scheduler.api.openapi import document
from scheduler.github.signature import sign
from scheduler.local.http_server import LocalHTTPServer
from scheduler.local.log_reader import LocalLogReader
from scheduler.local.run_log import log_file
from scheduler.settings import Settings
from scheduler.wiring import build_core
from tests.conftest import MakeJob

SECRET = "openapi-responses-webhook-secret-0123456789"
TOKEN = "openapi-responses-api-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY = 64 * 1024
REPO = "octo-org/api"
EVENTS = Path(__file__).resolve().parents[2] / "events"
METHODS = {"get", "post", "put", "patch", "delete"}

# A server in its own process (the models are bound per process) whose DynamoDB is not there.
DOWN_SERVER = """
import sys
from dataclasses import replace
from scheduler.local.http_server import LocalHTTPServer
from scheduler.settings import Settings
from scheduler.wiring import build_core

settings = replace(
    Settings().for_local(sys.argv[1]), webhook_secret=sys.argv[2], api_token=sys.argv[3]
)
server = LocalHTTPServer(build_core(settings, executor=None).http_app).start()
print(server.url, flush=True)
sys.stdin.read()
server.stop()
"""


def _media(content_type: str) -> str:
    return content_type.split(";", maxsplit=1)[0].strip().lower()


@dataclass
class Probe:
    """Sends requests, checks each answer against the document, and notes what was produced."""

    base_url: str
    doc: dict[str, Any] = field(default_factory=document)
    produced: set[tuple[str, str, str]] = field(default_factory=set)

    def described(self, method: str, template: str, status: int) -> dict[str, Any]:
        responses = self.doc["paths"][template][method.lower()]["responses"]
        assert str(status) in responses, f"{method} {template} answered {status}, not described"
        response: dict[str, Any] = responses[str(status)]
        if "$ref" in response:
            response = self.doc["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
        return response

    def __call__(
        self,
        method: str,
        template: str,
        status: int,
        path: str | None = None,
        *,
        base_url: str | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        url = (base_url or self.base_url) + (path or template)
        answer = httpx.request(method, url, timeout=30, follow_redirects=False, **kwargs)
        assert answer.status_code == status, (method, url, answer.status_code, answer.text[:300])
        response = self.described(method, template, status)
        content = response.get("content")
        if content:
            media = _media(answer.headers["content-type"])
            types = {_media(name): value for name, value in content.items()}
            assert media in types, (method, template, status, media, list(types))
            if media == "application/json":
                schema = {**types[media]["schema"], "components": self.doc["components"]}
                jsonschema.Draft202012Validator(schema).validate(answer.json())
        for header in response.get("headers", {}):
            assert header.lower() in answer.headers, (method, template, status, header)
        self.produced.add((method.upper(), template, str(status)))
        return answer


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def down_server_url() -> Iterator[str]:
    dead = f"http://127.0.0.1:{_free_port()}"
    process = subprocess.Popen(
        [sys.executable, "-c", DOWN_SERVER, dead, SECRET, TOKEN],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    try:
        assert process.stdout is not None
        yield process.stdout.readline().strip()
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(timeout=30)


def _delivery(event: str, body: bytes, delivery: str, **headers: str) -> dict[str, Any]:
    return {
        "content": body,
        "headers": {
            "Content-Type": "application/json",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": sign(SECRET.encode(), body),
            **headers,
        },
    }


def test_every_described_response_is_produced(
    settings: Settings, make_job: MakeJob, tmp_path: Path, down_server_url: str
) -> None:
    logs_dir = tmp_path / "logs"
    core = build_core(
        replace(
            settings,
            webhook_secret=SECRET,
            api_token=TOKEN,
            config_path=None,
            webhook_max_body_bytes=MAX_BODY,
        ),
        executor=None,
        log_reader=LocalLogReader(logs_dir),
    )
    app = core.http_app
    scheduler_metrics(core.store)(app.router)  # as `scheduler up` serves it
    for job_id, status in [
        ("j-failed", "failed"),
        ("j-pending", "pending"),
        ("j-waiting", "waiting"),
        ("j-passed", "passed"),
    ]:
        make_job(job_id, status, repo=REPO)
    log = log_file(logs_dir, "j-failed", 1)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("step 1\nstep 2 failed\n")

    server = LocalHTTPServer(app).start()
    try:
        _probe_everything(Probe(server.url), down_server_url)
    finally:
        server.stop()


def _probe_everything(probe: Probe, down: str) -> None:
    push = (EVENTS / "push.branch.json").read_bytes()
    ping = (EVENTS / "ping.json").read_bytes()

    # -- the webhook ----------------------------------------------------------------------
    hook = "/webhook"
    probe("POST", hook, 200, **_delivery("ping", ping, "d-ping"))
    created = probe("POST", hook, 202, **_delivery("push", push, "d-push"))
    assert created.json()["job_id"]
    probe("POST", hook, 400, **_delivery("push", b"{", "d-bad"))
    unsigned = _delivery("push", push, "d-unsigned")
    del unsigned["headers"]["X-Hub-Signature-256"]
    probe("POST", hook, 401, **unsigned)
    probe("POST", hook, 413, **_delivery("push", b" " * (MAX_BODY + 1), "d-big"))
    probe("POST", hook, 415, **_delivery("push", push, "d-text", **{"Content-Type": "text/plain"}))
    probe("POST", hook, 503, base_url=down, **_delivery("push", push, "d-down"))

    # -- operations -----------------------------------------------------------------------
    probe("GET", "/healthz", 200)
    served = probe("GET", "/openapi.json", 200)
    assert served.json() == probe.doc
    metrics = probe("GET", "/metrics", 200, headers=AUTH)
    assert "scheduler_" in metrics.text
    probe("GET", "/metrics", 401)

    # -- the read routes ------------------------------------------------------------------
    jobs = "/repos/{owner}/{repo}/jobs"
    listed = probe("GET", jobs, 200, f"/repos/{REPO}/jobs", headers=AUTH)
    assert {job["job_id"] for job in listed.json()["jobs"]} >= {"j-failed", "j-passed"}
    probe("GET", jobs, 400, f"/repos/{REPO}/jobs?colour=red", headers=AUTH)
    probe("GET", jobs, 401, f"/repos/{REPO}/jobs")
    probe("GET", jobs, 503, f"/repos/{REPO}/jobs", base_url=down, headers=AUTH)

    stats = "/repos/{owner}/{repo}/stats"
    probe("GET", stats, 200, f"/repos/{REPO}/stats", headers=AUTH)
    probe("GET", stats, 400, "/repos/-bad-/x/stats", headers=AUTH)
    probe("GET", stats, 401, f"/repos/{REPO}/stats")
    probe("GET", stats, 404, "/repos/nobody/nothing/stats", headers=AUTH)
    probe("GET", stats, 503, f"/repos/{REPO}/stats", base_url=down, headers=AUTH)

    job = "/jobs/{job_id}"
    shown = probe("GET", job, 200, "/jobs/j-failed", headers=AUTH)
    assert shown.json()["history"]
    probe("GET", job, 400, "/jobs/j-failed?verbose=1", headers=AUTH)
    probe("GET", job, 401, "/jobs/j-failed")
    probe("GET", job, 404, "/jobs/nope", headers=AUTH)
    probe("GET", job, 503, "/jobs/j-failed", base_url=down, headers=AUTH)

    job_log = "/jobs/{job_id}/log"
    assert "step 2 failed" in probe("GET", job_log, 200, "/jobs/j-failed/log", headers=AUTH).text
    probe("GET", job_log, 400, "/jobs/j-failed/log?lines=5", headers=AUTH)
    probe("GET", job_log, 401, "/jobs/j-failed/log")
    probe("GET", job_log, 404, "/jobs/nope/log", headers=AUTH)
    probe("GET", job_log, 503, "/jobs/j-failed/log", base_url=down, headers=AUTH)

    # -- the dashboard's pages and buttons ------------------------------------------------
    probe("GET", "/", 200, headers=AUTH)
    assert 'name="token"' in probe("GET", "/", 401).text  # the token form

    repo_page = "/ui/repos/{owner}/{repo}"
    probe("GET", repo_page, 200, f"/ui/repos/{REPO}", headers=AUTH)
    probe("GET", repo_page, 400, f"/ui/repos/{REPO}?colour=red", headers=AUTH)
    probe("GET", repo_page, 401, f"/ui/repos/{REPO}")

    job_page = "/ui/jobs/{job_id}"
    probe("GET", job_page, 200, "/ui/jobs/j-failed", headers=AUTH)
    probe("GET", job_page, 400, "/ui/jobs/j-failed?colour=red", headers=AUTH)
    probe("GET", job_page, 401, "/ui/jobs/j-failed")
    probe("GET", job_page, 404, "/ui/jobs/nope", headers=AUTH)

    login = probe("POST", "/ui/login", 303, data={"token": TOKEN, "next": "/"})
    session = {"Cookie": login.headers["set-cookie"].split(";")[0]}
    probe("POST", "/ui/login", 401, data={"token": "wrong"})
    probe("POST", "/ui/logout", 303, headers=AUTH)
    probe("POST", "/ui/logout", 403, headers=session)

    for action, job_id in [
        ("retry", "j-failed"),
        ("cancel", "j-pending"),
        ("approve", "j-waiting"),
    ]:
        button = "/ui/jobs/{job_id}/" + action
        done = probe("POST", button, 303, f"/ui/jobs/{job_id}/{action}", headers=AUTH)
        assert done.headers["location"].startswith(f"/ui/jobs/{job_id}?done=")
        probe("POST", button, 401, f"/ui/jobs/{job_id}/{action}")
        probe("POST", button, 403, f"/ui/jobs/{job_id}/{action}", headers=session)
        probe("POST", button, 404, f"/ui/jobs/nope/{action}", headers=AUTH)

    # -- polled fragments and static files (ETag, 304) ------------------------------------
    def fresh_then_304(template: str, path: str, headers: dict[str, str]) -> None:
        first = probe("GET", template, 200, path, headers=headers)
        again = {**headers, "If-None-Match": first.headers["etag"]}
        probe("GET", template, 304, path, headers=again)

    fresh_then_304("/ui/part/repos", "/ui/part/repos", AUTH)
    probe("GET", "/ui/part/repos", 401)

    jobs_part = "/ui/part/repos/{owner}/{repo}/jobs"
    fresh_then_304(jobs_part, f"/ui/part/repos/{REPO}/jobs", AUTH)
    probe("GET", jobs_part, 400, f"/ui/part/repos/{REPO}/jobs?colour=red", headers=AUTH)
    probe("GET", jobs_part, 401, f"/ui/part/repos/{REPO}/jobs")

    job_part = "/ui/part/jobs/{job_id}"
    fresh_then_304(job_part, "/ui/part/jobs/j-passed", AUTH)
    probe("GET", job_part, 401, "/ui/part/jobs/j-passed")
    probe("GET", job_part, 404, "/ui/part/jobs/nope", headers=AUTH)

    log_part = "/ui/part/jobs/{job_id}/log"
    tail = probe("GET", log_part, 200, "/ui/part/jobs/j-failed/log?attempt=1", headers=AUTH)
    assert "step 1" in tail.json()["text"]
    probe("GET", log_part, 400, "/ui/part/jobs/j-failed/log?colour=red", headers=AUTH)
    probe("GET", log_part, 401, "/ui/part/jobs/j-failed/log")
    probe("GET", log_part, 404, "/ui/part/jobs/nope/log", headers=AUTH)

    fresh_then_304("/ui/static/{name}", "/ui/static/dashboard.js", {})
    probe("GET", "/ui/static/{name}", 404, "/ui/static/nope.js")

    # -- what was produced is what is described ------------------------------------------
    described = {
        (method.upper(), path, status)
        for path, item in probe.doc["paths"].items()
        for method, operation in item.items()
        if method in METHODS
        for status in operation["responses"]
    }
    never_produced = sorted(described - probe.produced)
    assert never_produced == [], "described but never produced"
    assert probe.produced <= described
