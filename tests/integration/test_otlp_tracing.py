"""Issue 27: ``SCHEDULER_TRACING=otlp``: one job's life is one OpenTelemetry trace, with the
X-Ray path's span names (tests/integration/test_tracing.py), exported over OTLP/HTTP to a
receiver stood up here (POST /v1/traces, protobuf bodies decoded with opentelemetry-proto).
An X-Ray or untraced cold start never imports the SDK."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from scheduler import tracing
from scheduler.api.app import Request
from scheduler.db.models import JobModel
from scheduler.github.signature import sign
from scheduler.settings import Settings
from scheduler.wiring import build_core
from tests.integration.test_tracing import SECRET, TOKEN, Executor, GitHub, event


class Receiver:
    """An OTLP/HTTP trace receiver on loopback: keeps every request body it accepts."""

    def __init__(self) -> None:
        bodies: list[bytes] = []
        paths: list[tuple[str, str]] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                paths.append((self.path, self.headers.get("Content-Type", "")))
                bodies.append(body)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.bodies = bodies
        self.paths = paths
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def spans(self) -> list[Any]:
        found = []
        for body in self.bodies:
            request = ExportTraceServiceRequest.FromString(body)
            for resource_spans in request.resource_spans:
                service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}[
                    "service.name"
                ]
                assert service == "scheduler"
                for scope in resource_spans.scope_spans:
                    found.extend(scope.spans)
        return found

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    listening = Receiver()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{listening.url}/v1/traces")
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    monkeypatch.setitem(tracing._state, "recorder", None)
    monkeypatch.setitem(tracing._state, "otlp", None)  # configured afresh, off afterwards
    yield listening
    if tracing._state["otlp"] is not None:
        tracing._state["otlp"].shutdown()
    listening.close()


def attributes(span: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for a in span.attributes:
        kind = a.value.WhichOneof("value")
        values[a.key] = getattr(a.value, kind)
    return values


def test_one_job_is_one_otlp_trace_from_the_webhook_to_the_run_start(
    receiver: Receiver, settings: Settings, tables: object
) -> None:
    github = ThreadingHTTPServer(("127.0.0.1", 0), GitHub)
    threading.Thread(target=github.serve_forever, daemon=True).start()
    traced = replace(
        settings,
        webhook_secret=SECRET,
        tracing="otlp",
        github_token=TOKEN,
        github_api_url=f"http://127.0.0.1:{github.server_address[1]}",
    )
    core = build_core(traced, executor=Executor)
    assert tracing.enabled() and tracing._state["recorder"] is None  # not X-Ray
    try:
        body = json.dumps(
            {
                "ref": "refs/heads/main",
                "after": "e" * 40,
                "repository": {"full_name": "trace/otlp"},
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
                    "x-github-delivery": "otlp-1",
                    "x-hub-signature-256": sign(SECRET.encode(), body),
                },
                body,
            )
        )
        assert answer.status == 202, answer
        job_id = answer.body["job_id"]
        stored = JobModel.get(job_id, consistent_read=True).trace_id
        assert stored and stored.startswith("00-") and len(stored) == 55, stored  # traceparent

        pending = JobModel.get(job_id, consistent_read=True).serialize()
        assert core.dispatcher.handle_event(event(job_id, None, "1")) == {"batchItemFailures": []}
        assert core.dispatcher.handle_event(event(job_id, pending, "2")) == {
            "batchItemFailures": []
        }
        assert core.runs is not None
        assert core.runs.executor.started == [f"{job_id}#1"]  # type: ignore[attr-defined]
    finally:
        core.close()  # waits for the commit statuses
        github.shutdown()
    tracing.flush()

    assert receiver.paths and {p for p in receiver.paths} == {
        ("/v1/traces", "application/x-protobuf")
    }
    spans = receiver.spans()
    names = sorted(s.name for s in spans)
    assert names.count("transition") == 2 and "http" in names and "commit status" in names, names
    # One trace: the request, both transitions, their actions and the commit statuses.
    trace_ids = {s.trace_id.hex() for s in spans}
    assert trace_ids == {stored.split("-")[1]}, names
    http = next(s for s in spans if s.name == "http")
    assert http.parent_span_id == b"" and attributes(http) == {"method": "POST"}
    assert stored.split("-")[2] == http.span_id.hex()  # the job's later work hangs under it
    transitions = [s for s in spans if s.name == "transition"]
    for t in transitions:
        assert t.parent_span_id == http.span_id
        found = attributes(t)
        assert found["job_id"] == job_id and found["repo"] == "trace/otlp"
        assert found["attempt"] == 1
    moves = sorted((attributes(t)["from"], attributes(t)["to"]) for t in transitions)
    assert moves == [("new", "pending"), ("pending", "active")]
    by_id = {s.span_id: s for s in spans}
    children = {(by_id[s.parent_span_id].name, s.name) for s in spans if s.parent_span_id in by_id}
    assert ("transition", "Activate") in children and ("transition", "StartRun") in children
    started = next(t for t in transitions if attributes(t)["to"] == "active")
    assert any(s.name == "StartRun" and s.parent_span_id == started.span_id for s in spans)
    for status in (s for s in spans if s.name == "commit status"):
        assert status.parent_span_id == http.span_id
        assert attributes(status)["repo"] == "trace/otlp"
    raw = b"".join(receiver.bodies)
    assert SECRET.encode() not in raw and TOKEN.encode() not in raw
    assert b"x-hub-signature" not in raw.lower()


def test_an_x_ray_trace_id_is_continued_in_the_same_trace() -> None:
    from opentelemetry import trace

    from scheduler.tracing_otlp import parent_context

    context = trace.get_current_span(parent_context("1-5759e988-bd862e3fe1be46a994272793"))
    assert f"{context.get_span_context().trace_id:032x}" == "5759e988bd862e3fe1be46a994272793"
    for unreadable in (None, "", "garbage", "00-" + "0" * 32 + "-" + "0" * 16 + "-01"):
        assert not trace.get_current_span(parent_context(unreadable)).get_span_context().is_valid


def test_an_x_ray_or_untraced_cold_start_imports_no_opentelemetry_nor_prometheus() -> None:
    script = (
        "import sys\n"
        "from scheduler import tracing\n"
        "import scheduler.aws.handlers, scheduler.wiring\n"
        "tracing.configure('off')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules"
        " if m.startswith(('opentelemetry', 'prometheus_client'))}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
