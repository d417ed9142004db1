"""A real loopback HTTP server for the application (the local runtime's API Gateway).

The standard library's ``ThreadingHTTPServer`` (one thread per connection, HTTP/1.1
keep-alive). ``bench/webhook.py`` measures it against DynamoDB Local's raw write rate: each
request costs well under a millisecond of Python next to the database transaction it makes, so
a production server would not change the figures, and this one needs no dependency.

What a production front end would do is done here too: the body limit is checked from
``Content-Length`` *before* the body is read (413, connection closed), chunked bodies are
refused (411), every method reaches the router (so an unknown one is a JSON 405, never the
standard library's HTML 501), and nothing of a request but its method, path and status is
logged. None of what a client can hold without a signature is unbounded
(:class:`~scheduler.api.app.ServerLimits`):

- connections: at most ``max_connections`` are served (a thread each); the accept loop itself
  answers any more with a 503 and closes them, so a flood costs no thread;
- time: a request's headers and body must arrive within ``request_timeout_seconds`` of the
  moment the server starts waiting for it (408 if some of it came, a silent close for an idle
  connection), however steadily a slow client trickles bytes in;
- memory: the bodies being read or handled, over all connections, hold at most
  ``body_budget_bytes``; a request whose ``Content-Length`` does not fit in what is left gets
  a 503 before its body is read.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import re
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from scheduler.api.app import Application, Request, Response, ServerLimits
from scheduler.api.headers import sendable
from scheduler.errors import (
    DomainError,
    HeadersTooLarge,
    LengthRequired,
    PayloadTooLarge,
    RequestTimeout,
    ServerBusy,
    WebhookRejected,
)

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["LocalHTTPServer"]

log = logging.getLogger(__name__)

# A connection turned away by the accept loop is closed after this long at most, or as soon as
# its client closes: closing at once while its request still arrives would make the kernel
# answer with a reset, which can destroy the 503 before the client reads it.
_LINGER_SECONDS = 2.0
_LINGER_MAX = 256
# Request line and headers together. GitHub's deliveries send about 1 KB of headers; nginx
# allows 32 KB by default. Without a cap the standard library takes 100 lines of 64 KB each
# (6.4 MB per connection), outside the body budget.
MAX_HEADER_BYTES = 64 * 1024


class _StopReading(Exception):
    """A read refused (deadline passed, headers too large): close, with ``answer`` if any.

    Not a TimeoutError, which the standard library's handler swallows without an answer.
    """

    def __init__(self, answer: DomainError | None) -> None:
        super().__init__(str(answer))
        self.answer = answer


class _RequestReader(io.RawIOBase):
    """A connection's bytes, read for one request at a time within its bounds.

    A per-read socket timeout cannot bound a request whose client sends a byte a second: each
    read here gets what remains of one deadline for the whole request. Until the headers are
    parsed, the bytes read are capped too (the standard library would take 100 header lines of
    64 KB each); the body is bounded by its ``Content-Length`` and the body budget instead.
    """

    def __init__(self, connection: socket.socket, seconds: float) -> None:
        self._connection = connection
        self._seconds = seconds
        self.start()

    def start(self) -> None:
        """A new request: its clock starts now (an idle connection is closed at its end)."""
        self.deadline = time.monotonic() + self._seconds
        self.received = 0
        # The buffered reader above reads ahead up to a buffer's worth beyond the headers.
        self.limit: float = MAX_HEADER_BYTES + io.DEFAULT_BUFFER_SIZE
        self.ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise self._timed_out()
        self._connection.settimeout(remaining)
        try:
            count = self._connection.recv_into(buffer)
        except TimeoutError:
            raise self._timed_out() from None
        self.received += count
        self.ended = self.ended or count == 0
        if self.received > self.limit:
            raise _StopReading(HeadersTooLarge(f"request headers over {MAX_HEADER_BYTES} bytes"))
        return count

    def _timed_out(self) -> _StopReading:
        if not self.received:  # an idle connection: closed without a word, as HTTP allows
            return _StopReading(None)
        return _StopReading(RequestTimeout(f"request not received within {self._seconds:g} s"))


class _BodyBudget:
    """Bytes of request bodies the server holds at once, over all connections."""

    def __init__(self, total: int) -> None:
        self._free = total
        self._total = total
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        with self._lock:
            return self._total - self._free

    @contextlib.contextmanager
    def hold(self, size: int) -> Iterator[None]:
        """Reserve ``size`` bytes for a body while the block runs; ServerBusy if they are not
        free (nothing is read then, so the client can send the same request again)."""
        with self._lock:
            if size > self._free:
                raise ServerBusy("server busy: too many request bodies in flight; retry later")
            self._free -= size
        try:
            yield
        finally:
            with self._lock:
                self._free += size


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Many deliveries may connect at once; the default backlog of 5 makes the kernel drop
    # SYNs, and a dropped SYN costs the client a one-second retransmission.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], app: Application, limits: ServerLimits) -> None:
        super().__init__(address, _Handler, bind_and_activate=True)
        self.app = app
        self.limits = limits
        self.bodies = _BodyBudget(limits.body_budget_bytes)
        self.connections = 0
        self._connections_lock = threading.Lock()
        self._refusing = False
        # Only the accept loop's thread touches this.
        self._lingering: deque[tuple[socket.socket, float]] = deque()
        self._busy_answer = _raw_answer(
            Response.error(
                ServerBusy(
                    f"server busy: too many connections (limit {limits.max_connections});"
                    " retry later"
                )
            )
        )

    # Runs in the accept loop: admitting a connection is counting it before its thread starts.
    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            admitted = self.connections < self.limits.max_connections
            if admitted:
                self.connections += 1
        if not admitted:
            self._turn_away(request)
            return
        self._refusing = False
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release_connection()  # no thread started: nobody else will
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release_connection()

    def _release_connection(self) -> None:
        with self._connections_lock:
            self.connections -= 1

    def _turn_away(self, connection: socket.socket) -> None:
        """Answer 503 without a thread: the send buffer of a new connection is empty, so the
        few hundred bytes go out without blocking the accept loop."""
        if not self._refusing:
            self._refusing = True
            log.warning(
                "connection limit reached: answering 503",
                extra={"max_connections": self.limits.max_connections},
            )
        try:
            connection.setblocking(False)
            _drain(connection)
            connection.send(self._busy_answer)
            connection.shutdown(socket.SHUT_WR)
        except OSError:
            connection.close()
            return
        if len(self._lingering) >= _LINGER_MAX:
            self._lingering.popleft()[0].close()
        self._lingering.append((connection, time.monotonic() + _LINGER_SECONDS))

    def service_actions(self) -> None:
        # Called by serve_forever between requests (at least every poll interval).
        super().service_actions()
        now = time.monotonic()
        for _ in range(len(self._lingering)):
            connection, close_at = self._lingering.popleft()
            try:
                done = _drain(connection) or now >= close_at
            except OSError:
                done = True
            if done:
                connection.close()
            else:
                self._lingering.append((connection, close_at))

    def server_close(self) -> None:
        super().server_close()
        while self._lingering:
            self._lingering.popleft()[0].close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that resets or vanishes mid-request is routine, not a traceback on stderr;
        # anything else is a bug, logged as one (never printed to stderr).
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            log.debug("connection lost", exc_info=True)
        else:
            log.exception("request handling failed")


def _drain(connection: socket.socket) -> bool:
    """Read what a non-blocking ``connection`` has received (at most 64 KB); True at its end."""
    try:
        for _ in range(16):
            if not connection.recv(4096):
                return True
    except BlockingIOError:
        pass
    return False


def _raw_answer(response: Response) -> bytes:
    """``response`` as the bytes of a whole HTTP/1.1 answer that closes the connection."""
    body = response.encode()
    lines = [
        f"HTTP/1.1 {response.status} {BaseHTTPRequestHandler.responses[response.status][0]}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in sendable(response.headers)),
        "Connection: close",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # A request whose version cannot be parsed is answered with a status line (the standard
    # library's default, HTTP/0.9, would send a bare body that no client can read).
    default_request_version = "HTTP/1.0"
    # Headers and body leave in two writes; with Nagle's algorithm the body would wait for the
    # client's delayed ACK of the headers (40 ms on Linux) on every keep-alive request.
    disable_nagle_algorithm = True
    server: _Server
    server_version = "scheduler"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        seconds = self.server.limits.request_timeout_seconds
        self.connection.settimeout(seconds)  # for writes; reads keep the request's deadline
        self.rfile.close()  # the standard buffered socket file, replaced by a bounded one
        self._reader = _RequestReader(self.connection, seconds)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        self._reader.start()
        # What the log line and an answer need, should the request line never arrive.
        self.command, self.path, self.request_version = "", "", self.protocol_version
        try:
            super().handle_one_request()
        except _StopReading as stop:
            self.close_connection = True
            if stop.answer is not None:
                self._send(Response.error(stop.answer))

    def send_response(self, code: int, message: str | None = None) -> None:
        # Reads leave the socket's timeout at what remained of the deadline; an answer gets
        # the whole timeout to leave.
        self.connection.settimeout(self.server.limits.request_timeout_seconds)
        super().send_response(code, message)

    def __getattr__(self, name: str) -> Any:
        # Every method, even one we have never heard of, is routed (405 from the router).
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)

    def _serve(self) -> None:
        if self._reader.ended:
            # The client closed before its headers were complete: nothing to answer.
            self.close_connection = True
            return
        self._reader.limit = math.inf  # the headers are in; the body has bounds of its own
        headers = self._headers()
        try:
            length = self._content_length(headers)
            # The body's bytes count against the budget until the app has answered.
            with self.server.bodies.hold(length):
                response = self.server.app.handle(self._request(headers, length))
        except DomainError as exc:
            # The body was not (wholly) read: the connection cannot carry another request.
            self.close_connection = True
            self._send(Response.error(exc))
            return
        self._send(response)

    def _headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]},{value}" if key in headers else value
        return headers

    def _content_length(self, headers: dict[str, str]) -> int:
        if "transfer-encoding" in headers:
            raise LengthRequired("chunked bodies are not supported: send Content-Length")
        value = headers.get("content-length", "0")
        # Digits only: int() would also take "+3", " 3 " and "1_0", which a proxy in front
        # may read differently (request smuggling).
        if not _DIGITS.fullmatch(value):
            raise WebhookRejected("malformed Content-Length header")
        length = int(value)
        limit = self.server.app.max_body_bytes
        if length > limit:
            raise PayloadTooLarge(f"body over the limit of {limit} bytes")
        return length

    def _request(self, headers: dict[str, str], length: int) -> Request:
        split = urlsplit(self.path)
        body = self.rfile.read(length) if length else b""
        if len(body) != length:
            raise WebhookRejected("body shorter than Content-Length")
        return Request(
            method=self.command.upper(),
            path=split.path,
            headers=headers,
            body=body,
            query=dict(parse_qsl(split.query)),
        )

    def _send(self, response: Response) -> None:
        payload = response.encode()
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in sendable(response.headers):
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The standard library's errors (bad request line, oversized headers) as JSON too.
        if code == HTTPStatus.HTTP_VERSION_NOT_SUPPORTED:
            # Hostile or mistaken input is a 4xx here, never a 5xx.
            code, message = HTTPStatus.BAD_REQUEST, f"unsupported HTTP version: {message}"
        self.close_connection = True
        body = json.dumps({"error": message or self.responses.get(code, ("error",))[0]}).encode()
        self.send_response(code, message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # The request line holds only method and path (never headers or the body).
        # Before the request line is parsed there is no path (a garbage request).
        path = urlsplit(getattr(self, "path", "") or "").path
        log.info("%s %s %s", _printable(self.command), _printable(path), code)


_DIGITS = re.compile(r"[0-9]{1,18}")


def _printable(text: str | None, limit: int = 300) -> str:
    """``text`` for a log line: control characters escaped (a request cannot forge or colour
    log lines), cut at ``limit``."""
    text = (text or "")[:limit]
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


class LocalHTTPServer:
    """Serves ``app`` on ``host:port`` (port 0 picks a free one) from a background thread."""

    def __init__(
        self,
        app: Application,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        limits: ServerLimits | None = None,
    ) -> None:
        """``limits`` default to the app's (made from the settings by ``create_app``)."""
        self._server = _Server((host, port), app, limits or app.server_limits)
        self._thread: threading.Thread | None = None

    @property
    def open_connections(self) -> int:
        """Connections being served now (each has a thread)."""
        return self._server.connections

    @property
    def body_bytes_held(self) -> int:
        """Bytes of the body budget reserved by requests being read or handled now."""
        return self._server.bodies.held

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    def start(self) -> LocalHTTPServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.2},
                name="http-server",
                daemon=True,
            )
            self._thread.start()
            log.info("HTTP server listening", extra={"url": self.url})
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until :meth:`stop` is called from another one."""
        log.info("HTTP server listening", extra={"url": self.url})
        self._server.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> LocalHTTPServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
