"""The local HTTP server under unsigned resource attacks: bounded threads, time and memory.

No signature is needed to open connections, to send bytes slowly or to announce a large body,
so the server itself bounds what a client can hold: connections at once (beyond the cap a 503
from the accept loop, no thread), the time to receive one whole request (a 408, however
steadily the bytes trickle in) and the bytes of bodies buffered over all connections (a 503
when the budget is spent; over the per-request limit a 413 as before). Every test then shows the
server answering normally.

The real ``LocalHTTPServer`` runs in this process on loopback in front of DynamoDB Local; the
attackers are real sockets. Every loop is bounded in count and time.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import select
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from scheduler.api.app import Application, Request, Response, Router, ServerLimits, create_app
from scheduler.api.auth import Access
from scheduler.config import parse_config
from scheduler.db.models import JobModel
from scheduler.github.signature import sign
from scheduler.local.http_server import MAX_HEADER_BYTES, LocalHTTPServer
from scheduler.settings import Settings, TableNames

SECRET = "http-server-bounds-secret-0123456789"
CONFIG = parse_config('[defaults]\nbranches = ["*"]\n', source="test-config")
MB = 1024 * 1024
PARTIAL_HEADERS = b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


# -- helpers ----------------------------------------------------------------------------------


@contextlib.contextmanager
def running(
    settings: Settings, limits: ServerLimits, *, max_body_bytes: int = 25 * MB
) -> Iterator[LocalHTTPServer]:
    app_settings = replace(settings, webhook_secret=SECRET, webhook_max_body_bytes=max_body_bytes)
    with LocalHTTPServer(create_app(app_settings, config=CONFIG), limits=limits) as server:
        yield server


# How long a test waits for what must happen (a connection's end, a budget freed): a bound that
# only a hang reaches, so that a loaded machine makes the suite slower, never red.
PATIENCE = 60.0


def wait_until(condition: Callable[[], bool], seconds: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


def read_answer(sock: socket.socket, seconds: float = PATIENCE) -> tuple[int, dict[str, str], Any]:
    """One whole HTTP response from ``sock`` (status, lower-case headers, JSON body)."""
    sock.settimeout(seconds)
    data = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep and len(body) >= _content_length(head):
            break
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
    }
    return int(lines[0].split()[1]), headers, json.loads(body)


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def healthz(server: LocalHTTPServer) -> int:
    host, port = server.address
    connection = http.client.HTTPConnection(host, port, timeout=PATIENCE)
    try:
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def answers_normally(server: LocalHTTPServer) -> bool:
    """A signed push makes a job and /healthz answers: the server is itself again."""
    push = {
        "ref": "refs/heads/main",
        "after": "a" * 40,
        "repository": {"full_name": "octo-org/api"},
        "sender": {"login": "octocat"},
    }
    body = json.dumps(push).encode()
    host, port = server.address
    connection = http.client.HTTPConnection(host, port, timeout=PATIENCE)
    try:
        connection.request(
            "POST",
            "/webhook",
            body,
            {
                "Content-Type": "application/json",
                "X-GitHub-Event": "push",
                "X-GitHub-Delivery": "after-the-attack",
                "X-Hub-Signature-256": sign(SECRET.encode(), body),
            },
        )
        response = connection.getresponse()
        answer = (response.status, json.loads(response.read()))
    finally:
        connection.close()
    return answer == (202, {"job_id": "gh-after-the-attack"}) and healthz(server) == 200


def connect(server: LocalHTTPServer) -> socket.socket:
    sock = socket.create_connection(server.address, timeout=PATIENCE)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


# -- connections ------------------------------------------------------------------------------


def test_four_hundred_slow_connections_do_not_spawn_four_hundred_threads(
    settings: Settings, tables: TableNames, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="scheduler.local.http_server")
    limits = ServerLimits(max_connections=64, request_timeout_seconds=60)
    with running(settings, limits) as server:
        baseline = threading.active_count()
        peak = baseline
        attackers: list[socket.socket] = []
        try:
            for _ in range(400):
                sock = connect(server)
                sock.sendall(PARTIAL_HEADERS)  # and never the blank line that ends them
                attackers.append(sock)
                peak = max(peak, threading.active_count())
            # The 336 over the cap are answered 503 from the accept loop and closed.
            refused: dict[int, tuple[int, dict[str, str], Any]] = {}
            deadline = time.monotonic() + 2 * PATIENCE
            while len(refused) < 336 and time.monotonic() < deadline:
                waiting = [s for s in attackers if s.fileno() not in refused]
                readable, _, _ = select.select(waiting, [], [], 0.5)
                for sock in readable:
                    refused[sock.fileno()] = read_answer(sock)
                peak = max(peak, threading.active_count())
            assert len(refused) == 336
            statuses = {status for status, _, _ in refused.values()}
            assert statuses == {503}
            _, headers, body = next(iter(refused.values()))
            assert "too many connections" in body["error"] and headers["retry-after"]
            assert headers["connection"] == "close"
            assert server.open_connections == 64
            # One thread per admitted connection, none for the ones turned away.
            assert peak <= baseline + 64 + 2, (baseline, peak)
        finally:
            for sock in attackers:
                sock.close()
        # The slow connections are gone: their threads end and the server serves again.
        assert wait_until(lambda: server.open_connections == 0, PATIENCE)
        assert wait_until(lambda: threading.active_count() <= baseline + 2, PATIENCE)
        assert answers_normally(server)
    # Headers cut short by the client's close are not served as if they were whole.
    served = [r.getMessage() for r in caplog.records if r.getMessage().startswith("POST ")]
    assert served == ["POST /webhook 202"]


# -- time -------------------------------------------------------------------------------------

DRIBBLES: dict[str, tuple[bytes, bytes]] = {
    # A byte of the headers every second, never the blank line.
    "headers": (b"POST /webhook HTTP/1.1\r\n", b"X-Padding: " + b"a" * 100),
    # Whole headers at once, then a byte of the announced body every second.
    "body": (PARTIAL_HEADERS + b"Content-Length: 100\r\n\r\n", b"{" + b" " * 99),
}


@pytest.mark.parametrize("part", DRIBBLES)
def test_a_slowloris_dribbling_a_byte_every_second_gets_408_after_the_deadline(
    settings: Settings, tables: TableNames, part: str
) -> None:
    limits = ServerLimits(request_timeout_seconds=3)
    start_bytes, dribble = DRIBBLES[part]
    with running(settings, limits) as server:
        sock = connect(server)
        try:
            started = time.monotonic()
            sock.sendall(start_bytes)
            answered = False
            for byte in dribble[:60]:  # at most a minute of dribbling
                readable, _, _ = select.select([sock], [], [], 1.0)
                if readable:
                    answered = True
                    break
                sock.sendall(bytes([byte]))
            # Each byte came well within any per-read timeout: the deadline is the whole
            # request's (about 3 s here; a loaded machine may answer a little later).
            assert answered, "the server still waits after a minute of dribbling"
            status, headers, body = read_answer(sock)
            elapsed = time.monotonic() - started
        finally:
            sock.close()
        assert status == 408 and "3 s" in body["error"] and headers["connection"] == "close"
        assert elapsed >= 3, elapsed  # not before the deadline
        assert wait_until(lambda: server.open_connections == 0, PATIENCE)
        assert answers_normally(server)
    assert [job.job_id for job in JobModel.scan(consistent_read=True)] == ["gh-after-the-attack"]


def test_an_idle_connection_is_closed_without_an_answer_after_the_deadline(
    settings: Settings, tables: TableNames
) -> None:
    with running(settings, ServerLimits(request_timeout_seconds=1)) as server:
        sock = connect(server)
        try:
            started = time.monotonic()
            sock.settimeout(PATIENCE)  # a bound only a connection never closed reaches
            assert sock.recv(1024) == b""  # closed, no 408 for a request never begun
            assert time.monotonic() - started >= 1  # not before the deadline
        finally:
            sock.close()
        assert wait_until(lambda: server.open_connections == 0, PATIENCE)


def test_keep_alive_requests_each_get_the_whole_deadline(
    settings: Settings, tables: TableNames
) -> None:
    # Ten requests over 5 s on one connection with a 3 s deadline: the clock restarts for
    # each request (and the wait before it), it does not run from the connection's start.
    # (A 0.5 s pause leaves 2.5 s of the deadline to a loaded machine.)
    with running(settings, ServerLimits(request_timeout_seconds=3)) as server:
        host, port = server.address
        connection = http.client.HTTPConnection(host, port, timeout=PATIENCE)
        try:
            for _ in range(10):
                connection.request("GET", "/healthz")
                response = connection.getresponse()
                answer = (response.status, json.loads(response.read()))
                assert answer == (200, {"status": "ok", "disk": "ok"})
                time.sleep(0.5)
        finally:
            connection.close()


def test_megabytes_of_headers_are_refused_with_431_after_the_header_cap(
    settings: Settings, tables: TableNames
) -> None:
    # The standard library alone would read 100 header lines of 64 KB each into memory.
    line = b"X-Padding: " + b"p" * 60_000 + b"\r\n"
    with running(settings, ServerLimits()) as server:
        sock = connect(server)
        with sock:
            sock.sendall(PARTIAL_HEADERS)
            with contextlib.suppress(OSError):  # the server may close while we still send
                for _ in range(100):
                    sock.sendall(line)
                    if select.select([sock], [], [], 0.2)[0]:
                        break
            status, headers, body = read_answer(sock)
        assert status == 431 and str(MAX_HEADER_BYTES) in body["error"]
        assert headers["connection"] == "close"
        assert answers_normally(server)


# -- memory -----------------------------------------------------------------------------------


def start_upload(server: LocalHTTPServer, announced: int) -> socket.socket:
    sock = connect(server)
    sock.sendall(
        PARTIAL_HEADERS
        + b"X-GitHub-Event: push\r\nX-GitHub-Delivery: big\r\n"
        + f"Content-Length: {announced}\r\n\r\n".encode()
    )
    return sock


def test_partial_uploads_beyond_the_body_budget_are_refused_with_503_until_it_frees(
    settings: Settings, tables: TableNames
) -> None:
    limits = ServerLimits(body_budget_bytes=3 * MB)
    with running(settings, limits, max_body_bytes=1 * MB) as server:
        uploads: list[socket.socket] = []
        try:
            for index in range(3):  # three half-sent bodies of 1 MB hold the whole budget
                sock = start_upload(server, 1 * MB)
                sock.sendall(b" " * (MB // 2))
                uploads.append(sock)
                assert wait_until(lambda n=index: server.body_bytes_held == (n + 1) * MB, PATIENCE)
            late = start_upload(server, 1 * MB)
            with late:
                status, headers, body = read_answer(late)
            assert status == 503 and "busy" in body["error"] and headers["retry-after"]
            # Over the per-request limit it is still 413, whatever the budget.
            too_big = start_upload(server, 1 * MB + 1)
            with too_big:
                assert read_answer(too_big)[0] == 413
            # A request without a body needs none of the budget.
            assert healthz(server) == 200
            # One upload gives up: its share of the budget is free again.
            uploads.pop().close()
            assert wait_until(lambda: server.body_bytes_held == 2 * MB, PATIENCE)
            assert answers_normally(server)
        finally:
            for sock in uploads:
                sock.close()
        assert wait_until(lambda: server.body_bytes_held == 0, PATIENCE)
    assert [job.job_id for job in JobModel.scan(consistent_read=True)] == ["gh-after-the-attack"]


def test_six_partial_25_mb_uploads_buffer_no_more_than_the_default_budget(
    settings: Settings, tables: TableNames
) -> None:
    # Default limits: 25 MB per request, 64 MB for all bodies. Unbounded, six uploads of 24 MB
    # of a 25 MB body each made the server hold ~150 MB; here two fit and four are turned away.
    chunk = b" " * MB
    # What Python allocates, not the process's RSS: memory freed by earlier tests of the session
    # (their bodies) is reused by the allocator without growing RSS, which hid these 50 MB.
    with running(settings, ServerLimits()) as server:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        uploads: list[socket.socket] = []
        refused = 0
        try:
            for _ in range(6):
                held = server.body_bytes_held
                sock = start_upload(server, 25 * MB)
                uploads.append(sock)
                # Either the budget takes it (held grows) or the answer is already a 503.
                assert wait_until(
                    lambda s=sock, h=held: (
                        server.body_bytes_held > h or bool(select.select([s], [], [], 0)[0])
                    ),
                    PATIENCE,
                )
                if select.select([sock], [], [], 0)[0]:
                    assert read_answer(sock)[0] == 503
                    refused += 1
                    continue
                for _ in range(24):
                    sock.sendall(chunk)
            assert refused == 4 and server.body_bytes_held == 50 * MB
            assert wait_until(
                lambda: tracemalloc.get_traced_memory()[0] - before >= 40 * MB, PATIENCE
            )
            grown = tracemalloc.get_traced_memory()[0] - before
            assert grown < 90 * MB, grown / MB
        finally:
            for sock in uploads:
                sock.close()
            tracemalloc.stop()
        assert wait_until(lambda: server.body_bytes_held == 0, PATIENCE)
        assert answers_normally(server)


# -- request framing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /healthz HTTP/1.x\r\nHost: x\r\n\r\n",
        b"POST /webhook HTTP/1.2.3\r\nContent-Length: 0\r\n\r\n",
        b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ],
)
def test_a_request_in_a_version_we_do_not_speak_gets_a_400_with_a_status_line(
    settings: Settings, tables: TableNames, request_bytes: bytes
) -> None:
    with running(settings, ServerLimits()) as server, connect(server) as sock:
        sock.sendall(request_bytes)
        status, headers, body = read_answer(sock)
        assert status == 400 and "version" in body["error"].lower(), body
        assert headers["content-type"] == "application/json"


@pytest.mark.parametrize("length", ["+3", " 0003 ", "1_0", "3,3", "0x3", "-1", "٣"])
def test_a_content_length_that_is_not_plain_digits_is_refused(
    settings: Settings, tables: TableNames, length: str
) -> None:
    with running(settings, ServerLimits()) as server, connect(server) as sock:
        sock.sendall(
            f"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\nabc".encode()
        )
        status, _headers, body = read_answer(sock)
        assert status == 400 and "Content-Length" in body["error"], body


def test_control_characters_in_a_path_cannot_forge_log_lines(
    settings: Settings, tables: TableNames, caplog: pytest.LogCaptureFixture
) -> None:
    with running(settings, ServerLimits()) as server, connect(server) as sock:
        caplog.set_level(logging.INFO, logger="scheduler.local.http_server")
        sock.sendall(b"GET /x\x1b[31mRED\x1b[0m\x08FAKE\x00 HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _headers, _body = read_answer(sock)
        assert status == 404
    lines = [r.getMessage() for r in caplog.records if r.name == "scheduler.local.http_server"]
    logged = [line for line in lines if "RED" in line]
    assert logged and all(c.isprintable() for line in logged for c in line), logged
    assert "\\x1b[31mRED" in logged[0]


# -- what the server sends ---------------------------------------------------------------------


def test_a_header_value_with_cr_or_lf_is_never_sent(caplog: pytest.LogCaptureFixture) -> None:
    """Defence in depth: whatever a route puts in a header, no line of its own reaches the
    client (the route's answer goes out without that header, and the bug is logged); neither
    does another control character, nor what latin-1 cannot carry (which failed the answer)."""

    def echo(request: Request) -> Response:
        value = request.query.get("v", "")
        return Response(200, {"ok": True}, {"x-echo": value, "x-kept": "yes"})

    router = Router()
    router.add("GET", "/echo", echo, access=Access.PUBLIC)
    app = Application(router, max_body_bytes=0)
    caplog.set_level(logging.ERROR, logger="scheduler.api.headers")
    with LocalHTTPServer(app) as server:
        hostile = ("%0d%0aSet-Cookie:%20injected=1", "%0aSet-Cookie:%20injected=1", "a%0db")
        for value in (*hostile, "a%00b", "a%0bb", "%e2%80%a8"):
            with connect(server) as sock:
                sock.sendall(f"GET /echo?v={value} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                status, headers, body = read_answer(sock)
            assert (status, body) == (200, {"ok": True}), (value, headers)
            assert "set-cookie" not in headers and "x-echo" not in headers, (value, headers)
            assert headers["x-kept"] == "yes"
        with connect(server) as sock:
            sock.sendall(b"GET /echo?v=plain HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_answer(sock)[1]["x-echo"] == "plain"
    refused = [r.getMessage() for r in caplog.records if r.name == "scheduler.api.headers"]
    assert len(refused) == 6 and all("x-echo" in line for line in refused), refused
    assert not any("injected" in line for line in refused)  # the value is not logged
