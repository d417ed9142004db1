"""A real loopback HTTP server for the application (the local runtime's API Gateway).

The standard library's ``ThreadingHTTPServer`` (one thread per connection, HTTP/1.1
keep-alive). ``bench/webhook.py`` measures it against DynamoDB Local's raw write rate: each
request costs well under a millisecond of Python next to the database transaction it makes, so
a production server would not change the figures, and this one needs no dependency.

What a production front end would do is done here too: the body limit is checked from
``Content-Length`` *before* the body is read (413, connection closed), chunked bodies are
refused (411), every method reaches the router (so an unknown one is a JSON 405, never the
standard library's HTML 501), a slow client times out, and nothing of a request but its method,
path and status is logged.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from scheduler.api.app import Application, Request, Response
from scheduler.errors import DomainError, LengthRequired, PayloadTooLarge, WebhookRejected

__all__ = ["LocalHTTPServer"]

log = logging.getLogger(__name__)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Many deliveries may connect at once; the default backlog of 5 makes the kernel drop
    # SYNs, and a dropped SYN costs the client a one-second retransmission.
    request_queue_size = 1024
    app: Application
    socket_timeout: float


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes; with Nagle's algorithm the body would wait for the
    # client's delayed ACK of the headers (40 ms on Linux) on every keep-alive request.
    disable_nagle_algorithm = True
    server: _Server
    server_version = "scheduler"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        # A client that stops sending mid-request releases its thread after this long.
        self.connection.settimeout(self.server.socket_timeout)

    def __getattr__(self, name: str) -> Any:
        # Every method, even one we have never heard of, is routed (405 from the router).
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)

    def _serve(self) -> None:
        try:
            request = self._request()
        except DomainError as exc:
            # The body was not read: the connection cannot carry another request.
            self.close_connection = True
            self._send(Response.error(exc))
            return
        self._send(self.server.app.handle(request))

    def _request(self) -> Request:
        split = urlsplit(self.path)
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]},{value}" if key in headers else value
        if "transfer-encoding" in headers:
            raise LengthRequired("chunked bodies are not supported: send Content-Length")
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError as exc:
            raise WebhookRejected("malformed Content-Length header") from exc
        if length < 0:
            raise WebhookRejected("malformed Content-Length header")
        limit = self.server.app.max_body_bytes
        if length > limit:
            raise PayloadTooLarge(f"body over the limit of {limit} bytes")
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
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The standard library's errors (bad request line, oversized headers) as JSON too.
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
        log.info("%s %s %s", self.command, path, code)


class LocalHTTPServer:
    """Serves ``app`` on ``host:port`` (port 0 picks a free one) from a background thread."""

    def __init__(
        self,
        app: Application,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        socket_timeout: float = 30.0,
    ) -> None:
        self._server = _Server((host, port), _Handler, bind_and_activate=True)
        self._server.app = app
        self._server.socket_timeout = socket_timeout
        self._thread: threading.Thread | None = None

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
