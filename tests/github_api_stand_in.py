"""A stand-in for GitHub's REST API on loopback, strict about what it is sent.

Every request is checked the way GitHub would: ``Accept: application/vnd.github+json``, the
``X-GitHub-Api-Version`` header, ``Authorization: Bearer <JWT>`` (RS256, signed by the App's
key, ``iss`` the App id, at most ten minutes) for ``/app/...`` and the installation's lookup,
``token <installation token>`` (one it issued, unexpired, of an installation that serves the
repository) for everything else, and each body's shape (check runs: GitHub's fields, enums and
size limits). A request that fails a check is answered 400/401 and recorded in ``problems``:
a test asserts that list stays empty. It can answer rate limits (:meth:`limit_next`).

Repository files are served by the contents API (:meth:`put_file`, :meth:`put_folder`) with
``Accept: application/vnd.github.raw+json`` only, at ``?ref=<sha>``; an operator's personal
token (``Bearer <token>``, :attr:`personal_tokens`) is accepted on repository routes too.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

MEDIA_TYPE = "application/vnd.github+json"
RAW_MEDIA_TYPE = "application/vnd.github.raw+json"
API_VERSION = "2022-11-28"
STATUSES = {"queued", "in_progress", "completed", "waiting", "requested", "pending"}
CONCLUSIONS = {
    "action_required",
    "cancelled",
    "failure",
    "neutral",
    "success",
    "skipped",
    "stale",
    "timed_out",
}
OUTPUT_CHARS = 65535
_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
_SHA = re.compile(r"[0-9a-f]{40}")


def new_private_key() -> tuple[str, Any]:
    """A fresh RSA key as the App's PEM text, and its public key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,  # GitHub's .pem is PKCS#1
        serialization.NoEncryption(),
    ).decode()
    return pem, key.public_key()


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class Raw:
    """An answer sent as it is (a file's bytes), not as JSON."""

    data: bytes
    content_type: str = "application/vnd.github.raw"


@dataclass
class CheckRun:
    id: int
    repo: str
    fields: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


class GitHubStandIn:
    def __init__(self, app_id: int = 4242, *, port: int = 0, token_seconds: int = 3600) -> None:
        self.app_id = app_id
        self.private_key_pem, self._public_key = new_private_key()
        self.token_seconds = token_seconds
        self.clock: Callable[[], float] = time.time  # GitHub's clock (a test may move it)
        self.installations: dict[str, int] = {}  # repo (lower) -> installation id
        self.permissions: dict[tuple[str, str], str] = {}  # (repo lower, login) -> permission
        self.tokens: dict[str, tuple[int, float]] = {}  # token -> (installation, expires)
        self.check_runs: dict[int, CheckRun] = {}
        self.seen: list[Seen] = []
        self.problems: list[str] = []
        self._limits: list[tuple[int, dict[str, str], str]] = []
        self.files: dict[tuple[str, str, str], bytes] = {}  # (repo lower, sha, path) -> bytes
        self.folders: set[tuple[str, str, str]] = set()
        self.personal_tokens: set[str] = set()  # accepted as "Bearer <token>" on repo routes
        self.delays: list[float] = []  # seconds the next answers wait before they are sent
        # Raw answers without Content-Length (the body ends when the connection closes).
        self.no_content_length = False
        self._spent: int | None = None  # the reset (epoch s) a success announces, once
        self._lock = threading.Lock()
        self._next_id = 1000
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # -- control -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> GitHubStandIn:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def install(self, repo: str, installation_id: int) -> None:
        self.installations[repo.lower()] = installation_id

    def grant(self, repo: str, login: str, permission: str) -> None:
        self.permissions[(repo.lower(), login)] = permission

    def limit_next(
        self,
        count: int,
        status: int = 403,
        headers: dict[str, str] | None = None,
        message: str = "You have exceeded a secondary rate limit.",
    ) -> None:
        """Answer the next ``count`` requests with a rate limit (then serve as usual)."""
        self._limits.extend([(status, headers or {}, message)] * count)

    def put_file(self, repo: str, sha: str, path: str, content: bytes) -> None:
        self.files[(repo.lower(), sha, path)] = content

    def put_folder(self, repo: str, sha: str, path: str) -> None:
        self.folders.add((repo.lower(), sha, path))

    def spend_window(self, reset_in_seconds: int) -> None:
        """The next successful answer says it was the window's last request."""
        self._spent = int(self.clock()) + reset_in_seconds

    def requests(self, method: str | None = None, prefix: str = "") -> list[Seen]:
        return [
            s
            for s in self.seen
            if (method is None or s.method == method) and s.path.startswith(prefix)
        ]

    def runs_of(self, repo: str) -> list[CheckRun]:
        return [run for run in self.check_runs.values() if run.repo == repo.lower()]

    # -- checks --------------------------------------------------------------------------------

    def _app_jwt_ok(self, authorization: str) -> str | None:
        if not authorization.startswith("Bearer "):
            return "an App route needs Authorization: Bearer <JWT>"
        try:
            claims = jwt.decode(
                authorization.removeprefix("Bearer "),
                self._public_key,
                algorithms=["RS256"],
                options={
                    "require": ["iat", "exp", "iss"],
                    "verify_exp": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError as exc:
            return f"bad JWT: {exc}"
        if str(claims["iss"]) != str(self.app_id):
            return f"JWT iss {claims['iss']!r} is not the App"
        if claims["exp"] - claims["iat"] > 600:
            return "JWT lives longer than ten minutes"
        now = self.clock()
        if claims["iat"] > now + 1:
            return "JWT issued in the future"
        if claims["exp"] <= now:
            return "JWT expired"
        return None

    def _token_ok(self, authorization: str, repo: str) -> str | None:
        if authorization.removeprefix("Bearer ") in self.personal_tokens:
            return None
        if not authorization.startswith("token "):
            return "a repository route needs Authorization: token <installation token>"
        found = self.tokens.get(authorization.removeprefix("token "))
        if found is None:
            return "unknown installation token"
        installation, expires = found
        if expires <= self.clock():
            return "installation token expired"
        if self.installations.get(repo.lower()) != installation:
            return f"token of installation {installation} may not act on {repo}"
        return None

    # -- the server ----------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw
                headers = {k.lower(): v for k, v in self.headers.items()}
                seen = Seen(self.command, parts.path, parse_qs(parts.query), headers, body)
                with stand_in._lock:
                    stand_in.seen.append(seen)
                    limit = stand_in._limits.pop(0) if stand_in._limits else None
                    delay = stand_in.delays.pop(0) if stand_in.delays else 0.0
                if delay:
                    time.sleep(delay)
                status, answer, extra = stand_in._answer(seen, limit)
                if status < 400 and stand_in._spent is not None:
                    extra = {
                        **extra,
                        "x-ratelimit-remaining": "0",
                        "x-ratelimit-reset": str(stand_in._spent),
                    }
                    stand_in._spent = None
                raw = isinstance(answer, Raw)
                if isinstance(answer, Raw):
                    data, content_type = answer.data, answer.content_type
                else:
                    data = json.dumps(answer).encode() if answer is not None else b""
                    content_type = "application/json; charset=utf-8"
                self.send_response(status)
                self.send_header("content-type", content_type)
                if not (raw and stand_in.no_content_length):
                    self.send_header("content-length", str(len(data)))
                for name, value in extra.items():
                    self.send_header(name, value)
                self.end_headers()
                # A client that gave up (its timeout, a body refused past a limit) is gone.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(data)

            do_GET = do_POST = do_PATCH = _serve

        return Handler

    def _answer(
        self, seen: Seen, limit: tuple[int, dict[str, str], str] | None
    ) -> tuple[int, Any, dict[str, str]]:
        media_type = (
            RAW_MEDIA_TYPE
            if re.fullmatch(r"/repos/[^/]+/[^/]+/contents/.+", seen.path)
            else MEDIA_TYPE
        )
        if seen.headers.get("accept") != media_type:
            return self._refuse(400, f"{seen.method} {seen.path}: Accept is not {media_type}")
        if seen.headers.get("x-github-api-version") != API_VERSION:
            return self._refuse(400, f"{seen.method} {seen.path}: no X-GitHub-Api-Version")
        if limit is not None:
            status, headers, message = limit
            return status, {"message": message}, headers
        authorization = seen.headers.get("authorization", "")
        path = seen.path
        if match := re.fullmatch(r"/app/installations/(\d+)/access_tokens", path):
            if problem := self._app_jwt_ok(authorization):
                return self._refuse(401, problem)
            if seen.method != "POST":
                return self._refuse(405, f"{seen.method} {path}")
            if problem := self._scope_problem(int(match.group(1)), seen.body):
                return self._refuse(422, problem)
            token = f"ghs_{self._new_id()}_{int(match.group(1))}"
            expires = self.clock() + self.token_seconds
            self.tokens[token] = (int(match.group(1)), expires)
            iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
            return 201, {"token": token, "expires_at": iso}, {}
        match = re.fullmatch(r"/repos/([^/]+/[^/]+)(/.*)", path)
        if match is None:
            return self._refuse(404, f"no route {seen.method} {path}")
        repo, rest = match.group(1), match.group(2)
        if rest == "/installation":
            if problem := self._app_jwt_ok(authorization):
                return self._refuse(401, problem)
            installation = self.installations.get(repo.lower())
            if installation is None:
                return 404, {"message": "Not Found"}, {}
            return 200, {"id": installation, "app_id": self.app_id}, {}
        if problem := self._token_ok(authorization, repo):
            return self._refuse(401, problem)
        return self._repo_route(seen, repo, rest)

    def _scope_problem(self, installation: int, body: Any) -> str | None:
        """What GitHub would refuse in a scoped token's request (repositories of the
        installation, by name; permissions ``read`` or ``write``), or None."""
        if body is None:
            return None
        if not isinstance(body, dict) or set(body) - {"repositories", "permissions"}:
            return f"access token body {body!r}"
        names = body.get("repositories", [])
        owned = {
            repo.split("/", 1)[1] for repo, i in self.installations.items() if i == installation
        }
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            return "repositories must be a list of names"
        if unknown := [n for n in names if n.lower() not in owned]:
            return f"repositories {unknown} are not of installation {installation}"
        permissions = body.get("permissions", {})
        if not isinstance(permissions, dict) or not all(
            v in ("read", "write") for v in permissions.values()
        ):
            return f"permissions {permissions!r}"
        return None

    def _repo_route(self, seen: Seen, repo: str, rest: str) -> tuple[int, Any, dict[str, str]]:
        if rest == "/check-runs" and seen.method == "POST":
            if problem := check_run_body(seen.body, creating=True):
                return self._refuse(422, problem)
            run = CheckRun(self._new_id(), repo.lower(), dict(seen.body))
            run.history.append(dict(seen.body))
            self.check_runs[run.id] = run
            return 201, {"id": run.id, **run.fields}, {}
        if match := re.fullmatch(r"/check-runs/(\d+)", rest):
            found = self.check_runs.get(int(match.group(1)))
            if found is None or found.repo != repo.lower():
                return 404, {"message": "Not Found"}, {}
            if seen.method != "PATCH":
                return 200, {"id": found.id, **found.fields}, {}
            if problem := check_run_body(seen.body, creating=False):
                return self._refuse(422, problem)
            found.fields.update(seen.body)
            if seen.body.get("status") in ("queued", "in_progress"):
                found.fields.pop("conclusion", None)
            found.history.append(dict(seen.body))
            return 200, {"id": found.id, **found.fields}, {}
        if match := re.fullmatch(r"/commits/([0-9a-f]{40})/check-runs", rest):
            name = (seen.query.get("check_name") or [None])[0]
            runs = [
                {"id": run.id, **run.fields}
                for run in self.runs_of(repo)
                if run.fields.get("head_sha") == match.group(1)
                and (name is None or run.fields.get("name") == name)
            ]
            return 200, {"total_count": len(runs), "check_runs": runs}, {}
        if match := re.fullmatch(r"/collaborators/([^/]+)/permission", rest):
            permission = self.permissions.get((repo.lower(), match.group(1)), "none")
            return 200, {"permission": permission, "user": {"login": match.group(1)}}, {}
        if rest.startswith("/contents/") and seen.method == "GET":
            return self._contents(seen, repo, rest.removeprefix("/contents/"))
        if re.fullmatch(r"/statuses/[0-9a-f]{40}", rest) and seen.method == "POST":
            return 201, {"state": (seen.body or {}).get("state")}, {}
        return self._refuse(404, f"no route {seen.method} /repos/{repo}{rest}")

    def _contents(self, seen: Seen, repo: str, path: str) -> tuple[int, Any, dict[str, str]]:
        refs = seen.query.get("ref", [])
        if len(refs) != 1 or not _SHA.fullmatch(refs[0]) or set(seen.query) != {"ref"}:
            return self._refuse(400, f"contents of {repo}: query {seen.query} is not ?ref=<sha>")
        key = (repo.lower(), refs[0], path)
        if key in self.folders:  # GitHub lists a folder as JSON whatever the media type
            return 200, [{"type": "file", "name": "x", "path": f"{path}/x"}], {}
        if key in self.files:
            return 200, Raw(self.files[key]), {}
        return 404, {"message": "Not Found"}, {}

    def _refuse(self, status: int, problem: str) -> tuple[int, Any, dict[str, str]]:
        self.problems.append(problem)
        return status, {"message": problem}, {}

    def _new_id(self) -> int:
        with self._lock:
            self._next_id += 1
            return self._next_id


def check_run_body(body: Any, *, creating: bool) -> str | None:
    """What GitHub would refuse in a check run's body (its REST reference), or None."""
    if not isinstance(body, dict):
        return "body is not a JSON object"
    for rule in (_fields_problem, _state_problem, _output_problem, _actions_problem):
        if problem := rule(body, creating):
            return problem
    return None


def _fields_problem(body: dict[str, Any], creating: bool) -> str | None:
    known = {
        "name", "head_sha", "details_url", "external_id", "status", "started_at",
        "conclusion", "completed_at", "output", "actions",
    }  # fmt: skip
    if unknown := set(body) - known:
        return f"unknown fields {sorted(unknown)}"
    if creating and not (isinstance(body.get("name"), str) and body["name"]):
        return "name is required"
    sha = body.get("head_sha")
    if creating and not (isinstance(sha, str) and _SHA.fullmatch(sha)):
        return "head_sha must be a 40-character sha"
    for name in ("started_at", "completed_at"):
        if name in body and not (isinstance(body[name], str) and _ISO.fullmatch(body[name])):
            return f"{name} must be ISO 8601 (YYYY-MM-DDTHH:MM:SSZ)"
    if "details_url" in body and not str(body["details_url"]).startswith(("http://", "https://")):
        return "details_url must be a URL"
    if "external_id" in body and not isinstance(body["external_id"], str):
        return "external_id must be a string"
    return None


def _state_problem(body: dict[str, Any], _creating: bool) -> str | None:
    status = body.get("status")
    conclusion = body.get("conclusion")
    if status is not None and status not in STATUSES:
        return f"status {status!r}"
    if conclusion is not None and conclusion not in CONCLUSIONS:
        return f"conclusion {conclusion!r}"
    if status == "completed" and conclusion is None:
        return "a completed check run needs a conclusion"
    if conclusion is not None and status not in (None, "completed"):
        return "a conclusion with a status other than completed"
    if conclusion == "action_required" and not body.get("details_url"):
        return "action_required needs a details_url"
    return None


def _output_problem(body: dict[str, Any], _creating: bool) -> str | None:
    output = body.get("output")
    if output is None:
        return None
    if not isinstance(output, dict) or not isinstance(output.get("title"), str):
        return "output needs a title"
    if not isinstance(output.get("summary"), str):
        return "output needs a summary"
    for name in ("summary", "text"):
        if len(output.get(name) or "") > OUTPUT_CHARS:
            return f"output.{name} is over {OUTPUT_CHARS} characters"
    return None


def _actions_problem(body: dict[str, Any], _creating: bool) -> str | None:
    actions = body.get("actions")
    if actions is None:
        return None
    if not isinstance(actions, list) or len(actions) > 3:
        return "at most 3 actions"
    for action in actions:
        if set(action) != {"label", "description", "identifier"}:
            return f"action fields {sorted(action)}"
        if len(action["label"]) > 20 or len(action["description"]) > 40:
            return "action label over 20 or description over 40 characters"
        if len(action["identifier"]) > 20:
            return "action identifier over 20 characters"
    return None
