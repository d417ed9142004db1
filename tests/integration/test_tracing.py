"""Issue 12: one job's life is one X-Ray trace: the webhook request, each transition (annotated),
the run's start and the commit statuses, sent to a UDP listener standing in for the daemon."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from scheduler import tracing
from scheduler.api.app import Request
from scheduler.db.models import JobModel
from scheduler.github.signature import sign
from scheduler.runs.executor import Claim, OnFinished, RunRequest, RunResult, RunStatus
from scheduler.settings import Settings
from scheduler.wiring import build_core

SECRET = "tracing-webhook-secret-0123456789"
TOKEN = "ghp_tracing_token_never_in_a_segment"


class Daemon:
    """A UDP listener in place of the X-Ray daemon; keeps every segment document."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.packets: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                self.packets.append(self.sock.recv(65536))
            except TimeoutError:
                continue

    def segments(self) -> list[dict[str, Any]]:
        found = []
        for packet in self.packets:
            header, _, body = packet.partition(b"\n")
            assert json.loads(header) == {"format": "json", "version": 1}
            found.append(json.loads(body))
        return found

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


class GitHub(BaseHTTPRequestHandler):
    """GitHub's API: commit statuses are taken; the commits have no pipeline file."""

    reads: list[str] = []  # the contents reads, across requests

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        GitHub.reads.append(self.path)
        body = b'{"message": "Not Found"}'
        self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(201)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")


class Executor:
    """Starts nothing: claims the run and says it started (CodeBuild is not here)."""

    def __init__(self, _finished: OnFinished) -> None:
        self.started: list[str] = []

    def start(self, request: RunRequest, claim: Claim) -> str | None:
        if not claim():
            return None
        self.started.append(request.idempotency_key)
        return request.idempotency_key

    def cancel(self, run_id: str) -> None:
        pass

    def stopped(self, run_id: str) -> bool:
        return True

    def log_location(self, request: RunRequest) -> str | None:
        return None

    def status(self, key: str) -> RunStatus:
        return RunStatus.RUNNING

    def started_at(self, key: str) -> int | None:
        return None

    def result_of(self, run_id: str) -> RunResult | None:
        return None


@pytest.fixture
def daemon(monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemon]:
    listener = Daemon()
    monkeypatch.setenv("AWS_XRAY_DAEMON_ADDRESS", listener.address)
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    monkeypatch.setitem(tracing._state, "recorder", None)  # configured afresh, off afterwards
    yield listener
    listener.close()


def walk(entity: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for sub in entity.get("subsegments", []):
        yield sub
        yield from walk(sub)


def event(job_id: str, old: dict[str, Any] | None, sequence: str) -> dict[str, Any]:
    data: dict[str, Any] = {
        "Keys": {"job_id": {"S": job_id}},
        "NewImage": JobModel.get(job_id, consistent_read=True).serialize(),
        "SequenceNumber": sequence,
    }
    if old is not None:
        data["OldImage"] = old
    return {"Records": [{"eventName": "MODIFY" if old else "INSERT", "dynamodb": data}]}


def test_one_job_is_one_trace_from_the_webhook_to_the_run_start(
    daemon: Daemon, settings: Settings, tables: object
) -> None:
    github = ThreadingHTTPServer(("127.0.0.1", 0), GitHub)
    threading.Thread(target=github.serve_forever, daemon=True).start()
    traced = replace(
        settings,
        webhook_secret=SECRET,
        tracing="xray",
        github_token=TOKEN,
        github_api_url=f"http://127.0.0.1:{github.server_address[1]}",
    )
    core = build_core(traced, executor=Executor)
    try:
        body = json.dumps(
            {
                "ref": "refs/heads/main",
                "after": "f" * 40,
                "repository": {"full_name": "trace/app"},
                "sender": {"login": "octocat"},
            }
        ).encode()
        answer = core.http_app.handle(
            Request(
                "POST",
                "/webhook",
                {
                    "content-type": "application/json",
                    "x-github-event": "push",
                    "x-github-delivery": "trace-1",
                    "x-hub-signature-256": sign(SECRET.encode(), body),
                },
                body,
            )
        )
        assert answer.status == 202, answer
        job_id = answer.body["job_id"]
        trace_id = JobModel.get(job_id, consistent_read=True).trace_id
        assert trace_id and trace_id.startswith("1-")

        pending = JobModel.get(job_id, consistent_read=True).serialize()
        assert core.dispatcher.handle_event(event(job_id, None, "1")) == {"batchItemFailures": []}
        assert core.dispatcher.handle_event(event(job_id, pending, "2")) == {
            "batchItemFailures": []
        }
        assert core.runs is not None
        assert core.runs.executor.started == [f"{job_id}#1"]  # type: ignore[attr-defined]
        # Its pipeline file was asked of GitHub before it ran (none: its one step).
        assert f"/repos/trace/app/contents/.scheduler/pipeline.yml?ref={'f' * 40}" in GitHub.reads
    finally:
        core.close()  # waits for the commit statuses
        github.shutdown()
    time.sleep(0.5)  # the last UDP packets

    segments = daemon.segments()
    names = sorted(s["name"] for s in segments)
    assert names.count("transition") == 2 and "http" in names and "commit status" in names, names
    # One trace: the request, both transitions and the commit statuses.
    assert {s["trace_id"] for s in segments} == {trace_id}
    transitions = [s for s in segments if s["name"] == "transition"]
    annotations = sorted((t["annotations"]["from"], t["annotations"]["to"]) for t in transitions)
    assert annotations == [("new", "pending"), ("pending", "active")]
    for t in transitions:
        assert t["annotations"]["job_id"] == job_id and t["annotations"]["repo"] == "trace/app"
        assert t["annotations"]["attempt"] == 1
    started = next(t for t in transitions if t["annotations"]["to"] == "active")
    children = {sub["name"] for sub in started.get("subsegments", [])}
    assert "StartRun" in children, children
    activated = next(t for t in transitions if t["annotations"]["to"] == "pending")
    assert "Activate" in {sub["name"] for sub in activated.get("subsegments", [])}
    # DynamoDB calls appear (boto3 is patched); no secret appears anywhere.
    raw = b"".join(daemon.packets)
    calls = {sub["name"] for t in transitions for sub in walk(t) if sub.get("namespace") == "aws"}
    assert "dynamodb" in calls, calls
    assert SECRET.encode() not in raw and TOKEN.encode() not in raw
    assert b"x-hub-signature" not in raw.lower()
