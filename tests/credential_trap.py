"""An https git remote on loopback that asks for credentials (401) and records what it is sent:
where a checkout would hand the git token to whoever asks. Git is told to trust its self-signed
certificate through a HOME of its own (``home``), so the real git client, TLS included, talks to
it."""

from __future__ import annotations

import base64
import contextlib
import http.server
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CredentialTrap", "credential_trap"]


@dataclass
class CredentialTrap:
    host: str  # 127.0.0.1:PORT, as git names it
    home: Path  # a HOME whose .gitconfig trusts the trap's certificate
    seen: list[str]  # the Authorization header of every request ("" when none)

    def url(self, path: str) -> str:
        return f"https://{self.host}/{path}"

    def tokens(self) -> list[str]:
        """The passwords of the Basic credentials the trap was sent."""
        found = []
        for header in self.seen:
            if header.startswith("Basic "):
                found.append(base64.b64decode(header[6:]).decode().partition(":")[2])
        return found


class _AskForCredentials(http.server.BaseHTTPRequestHandler):
    seen: list[str]

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Authorization", ""))
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="trap"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@contextlib.contextmanager
def credential_trap(folder: Path) -> Iterator[CredentialTrap]:
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        capture_output=True,
        check=True,
    )
    home = folder / "home"
    home.mkdir()
    (home / ".gitconfig").write_text(f"[http]\n\tsslCAInfo = {cert}\n")
    seen: list[str] = []
    handler = type("Handler", (_AskForCredentials,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield CredentialTrap(f"127.0.0.1:{server.server_address[1]}", home, seen)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
