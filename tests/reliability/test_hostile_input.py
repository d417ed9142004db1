"""Issue 11, hostile input: hypothesis-generated requests to every route of the real local stack.

One ``scheduler up`` (its own process, DynamoDB Local on disk) serves the whole module. The tests
send it generated requests over real HTTP: well-formed ones with httpx, malformed ones as raw bytes
on a socket (a request is sent whole, then the socket is half-closed, so the server never waits on
us). What they send:

- ``POST /webhook`` with hostile payloads that are *validly signed* (the signature is over the
  mutated body): wrong types, lone surrogates (``\\ud800`` escapes and raw CESU bytes), NUL and
  control characters, oversized fields, deep nesting, duplicate keys, huge numbers, other text
  encodings, form bodies, truncated and non-JSON bytes, bodies of megabytes;
- the same with missing, malformed or wrong signatures;
- deliveries with hostile headers (missing, duplicated, huge, odd bytes and names, folded lines,
  ``Content-Length`` that lies, chunked bodies, ``Expect``);
- every read route (``/repos/{owner}/{repo}/jobs`` with its query parameters, ``.../stats``,
  ``/jobs/{job_id}``, ``/healthz``) with traversal, percent-encoding, overlong segments, odd and
  garbage methods, odd HTTP versions and hostile query strings, cursors included: tampered ones,
  and ones forged with the built-in cursor key (public in the source) naming any position;
- malformed HTTP: garbage request lines and header blocks, pipelining, random bytes;
- bodies at the server's size limit (25 MB), one byte under and over it.

What every answer must show: no 5xx (a 503 only when the server says it is busy; more than a
handful fails), every 4xx a JSON body with a readable ``error``, a status line (but to a request
that declares HTTP/0.9), never the webhook secret; no 2xx to a delivery without a valid signature
or whose ``Content-Length`` is not its length in plain digits. What the books must show at the end
(a scan of the stack's own tables and its access log): the only jobs are those of validly signed
deliveries that the server answered 202 with their job id, each whole (its fields are what was
sent; counters and trigger guards match); no 5xx logged; the stack's resident memory stayed under
twice its size after warm-up plus 100 MB; and a plain signed push still makes a job that runs to
``passed``.

Sizes: CI-sized by default; ``SCHEDULER_RELIABILITY=full`` (``make reliability``) sends over
10,000 requests. Generation is derandomized (hypothesis also draws on constants of the project's
source), so a run is reproducible on the same tree. ``pytest -s`` prints one line of figures per
test: requests sent and a histogram of what came back (``bare``: a body without a status line,
``none``: the connection closed without an answer).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import hmac
import html
import itertools
import json
import os
import re
import select
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import httpx
import pytest
from harness import SECRET, LocalStackProcess, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.db.clients import client as dynamodb_client
from scheduler.db.queries import CursorCodec, JobFilter, Position
from scheduler.github.signature import sign
from scheduler.local.http_server import MAX_HEADER_BYTES
from scheduler.settings import DEFAULT_WEBHOOK_MAX_BODY_BYTES, Settings
from state_machines import JobStatus

FULL = os.environ.get("SCHEDULER_RELIABILITY") == "full"
# Examples per test (one request each, a few of them pipeline two): (CI size, full size).
SIZES: dict[str, tuple[int, int]] = {
    "signed_payloads": (400, 3000),
    "bad_signatures": (150, 1200),
    "webhook_headers": (300, 2000),
    "read_routes": (600, 2600),
    "malformed_http": (250, 1500),
}
FULL_TOTAL = 10_000  # requests the full size sends at least
MB = 1024 * 1024
MAX_BODY = DEFAULT_WEBHOOK_MAX_BODY_BYTES
# A 503 is allowed only when the server says it is busy, and only this often.
MAX_BUSY = 5
# The stack's resident memory must stay under RSS_FACTOR x its size after warm-up + RSS_SLACK.
RSS_FACTOR, RSS_SLACK = 2, 100 * MB

EVENTS = Path(__file__).resolve().parents[1] / "events"
CONFIG = (
    '[defaults]\ncheckout = false\ncommand = ["true"]\nbranches = ["*"]\ntags = ["*"]\n'
    "concurrency = 4\ntimeout_seconds = 60\n"
    # The sample pull requests are renamed onto these repositories while their head stays
    # Codertocat's: forks, built at once here (the approval gate has tests of its own).
    'fork_pull_requests = "run"\n'
)
SIGNED_REPOS = ("hostile/signed-a", "hostile/signed-b", "Hostile/Signed-C")
HEADERS_REPO = "hostile/headers"
READ_REPO = "hostile/reads"
AFTER_REPO = "hostile/after"
UNSIGNED_OWNER = "unsigned"
SHA_SLOT = "@@sha@@"  # replaced by a fresh commit sha when a generated delivery is sent
UNCHECKED = "<not compared>"

TEMPLATES = {
    "push.branch": "push",
    "push.tag": "push",
    "push.deleted": "push",
    "pull_request.opened": "pull_request",
    "pull_request.synchronize": "pull_request",
    "pull_request.reopened": "pull_request",
    "pull_request.closed": "pull_request",
    "ping": "ping",
    "issues.opened": "issues",
}
BASES: dict[str, dict[str, Any]] = {
    name: json.loads((EVENTS / f"{name}.json").read_text()) for name in TEMPLATES
}
SHA_PATH = {"push": "after", "pull_request": "pull_request.head.sha"}
BUILD_ACTIONS = ("opened", "synchronize", "reopened")


def hypothesis_settings(name: str) -> settings:
    return settings(
        max_examples=SIZES[name][1 if FULL else 0],
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
            HealthCheck.filter_too_much,
        ],
    )


def show(data: bytes, limit: int = 700) -> str:
    """Request bytes for a failure message (cut, with the full length)."""
    more = f" ... ({len(data)} bytes)" if len(data) > limit else ""
    return repr(data[:limit]) + more


# -- answers ----------------------------------------------------------------------------------


@dataclass
class Answer:
    """One HTTP answer. ``status`` None: no status line (the standard library's HTTP/0.9 style,
    for a request line without a usable HTTP version)."""

    status: int | None
    headers: dict[str, str]
    body: bytes

    def document(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def is_page(self) -> bool:
        """A dashboard page (GET / and /ui/...), HTML rather than JSON."""
        return self.headers.get("content-type", "").startswith("text/html")

    @property
    def message(self) -> str | None:
        if self.is_page:  # a refused page says why in an alert (or is the token form)
            found = re.search(rb'role="alert">([^<]+)<', self.body)
            return found.group(1).decode() if found else None
        document = self.document()
        if isinstance(document, dict):
            error = document.get("error")
            if isinstance(error, str) and error.strip():
                return error
        return None

    def __str__(self) -> str:
        return f"{self.status} {self.body[:300]!r}"


def parse_answers(data: bytes, *, head: bool) -> list[Answer]:
    """The answers in what a connection received (pipelined answers included; interim 1xx
    answers skipped). ``head``: the first request was a HEAD (its answer has no body)."""
    answers: list[Answer] = []
    while data:
        if not data.startswith(b"HTTP/"):
            if answers and head and len(answers) == 1:
                answers[0].body += data  # an error answer to a HEAD may carry a body anyway
            else:
                answers.append(Answer(None, {}, data))
            break
        top, separator, rest = data.partition(b"\r\n\r\n")
        lines = top.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:])
        }
        if not separator:
            answers.append(Answer(status, headers, b""))
            break
        length = int(headers.get("content-length", "0"))
        if status < 200 or status in (204, 304) or (head and not answers):
            length = 0
        if status >= 200:
            answers.append(Answer(status, headers, rest[:length]))
        data = rest[length:]
    return answers


# -- the world: one stack, and the books of what it was sent -----------------------------------


@dataclass(frozen=True)
class Sent:
    """What a validly signed delivery that made a job asked for (as the test parsed it)."""

    event: str
    repo: str
    sha: str
    request: str
    ref: str | None = UNCHECKED
    sender: str | None = UNCHECKED


@dataclass
class World:
    stack: LocalStackProcess
    client: httpx.Client
    address: tuple[str, int] = ("", 0)
    accepted: dict[str, Sent] = field(default_factory=dict)  # job id -> the delivery
    unsigned_repos: set[str] = field(default_factory=set)
    busy: list[str] = field(default_factory=list)
    tally: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    total_requests: int = 0
    rss_baseline: int = 0
    rss_peak: int = 0
    read_cursor: str = ""
    tests_run: set[str] = field(default_factory=set)
    numbers: Iterator[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        host, port = self.stack.url.removeprefix("http://").rsplit(":", 1)
        self.address = (host, int(port))

    @property
    def url(self) -> str:
        return self.stack.url

    def fresh(self) -> tuple[str, str]:
        """A fresh delivery id and commit sha."""
        number = next(self.numbers)
        return f"hostile-{number}", f"{number + 1:040x}"

    # -- memory -------------------------------------------------------------------------------

    def rss(self) -> int:
        assert self.stack.process is not None
        pid = self.stack.process.pid
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                value = int(line.split()[1]) * 1024
                self.rss_peak = max(self.rss_peak, value)
                return value
        raise AssertionError(f"no VmRSS for pid {pid}")

    def assert_memory_bounded(self) -> None:
        self.rss()
        limit = RSS_FACTOR * self.rss_baseline + RSS_SLACK
        assert self.rss_peak < limit, (
            f"PRODUCT BUG: the stack's resident memory reached {self.rss_peak / MB:.0f} MB,"
            f" over {limit / MB:.0f} MB ({RSS_FACTOR} x {self.rss_baseline / MB:.0f} MB after"
            f" warm-up + {RSS_SLACK // MB} MB)"
        )

    # -- sending ------------------------------------------------------------------------------

    def post(self, path: str, body: bytes, headers: list[tuple[str, str | bytes]]) -> Answer:
        try:
            response = self.client.post(self.url + path, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise AssertionError(f"PRODUCT BUG: no answer (hang) to POST {path}: {exc}") from exc
        answer = Answer(
            response.status_code,
            {name.lower(): value for name, value in response.headers.items()},
            response.content,
        )
        self.count([answer])
        return answer

    def exchange(self, data: bytes, *, head: bool = False, seconds: float = 30) -> list[Answer]:
        """Send ``data`` on a new connection, half-close it and read every answer to its end."""
        received = b""
        with socket.create_connection(self.address, timeout=seconds) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with contextlib.suppress(OSError):  # the server may refuse and close early
                for start in range(0, len(data), 256 * 1024):
                    sock.sendall(data[start : start + 256 * 1024])
                    if start and select.select([sock], [], [], 0)[0]:
                        break  # answered before the whole request was sent: a refusal
                sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + seconds
            while True:
                try:
                    chunk = sock.recv(256 * 1024)
                except TimeoutError:
                    chunk = None
                except ConnectionResetError:
                    break
                assert chunk is not None and time.monotonic() < deadline, (
                    f"PRODUCT BUG: the answer did not end within {seconds} s (a hang): "
                    f"{show(data)} -> {received[:300]!r}"
                )
                if not chunk:
                    break
                received += chunk
        answers = parse_answers(received, head=head)
        self.count(answers)
        return answers

    def count(self, answers: list[Answer]) -> None:
        self.requests += 1
        if not answers:
            self.tally["none"] += 1
        for answer in answers:
            self.tally["bare" if answer.status is None else str(answer.status)] += 1
        self.rss()

    # -- invariants ---------------------------------------------------------------------------

    def check(
        self,
        request: bytes,
        answers: list[Answer],
        *,
        head: bool = False,
        must_answer: bool = True,
        status_line: bool = True,
    ) -> None:
        """No 5xx (but a busy 503), a readable message on every 4xx, JSON bodies throughout."""
        if not answers:
            assert not must_answer, f"PRODUCT BUG: no answer at all to {show(request)}"
            return
        for index, answer in enumerate(answers):
            shown = f"{show(request)} -> {answer}"
            assert SECRET.encode() not in answer.body, f"PRODUCT BUG: the secret in {shown}"
            if answer.status is None:
                assert not (status_line and index == 0), f"no status line in the answer: {shown}"
                assert answer.document() is not None, f"answer is not JSON: {shown}"
                continue
            if answer.status >= 500:
                if answer.status == 503 and "busy" in (answer.message or ""):
                    self.busy.append(shown)
                    continue
                raise AssertionError(f"PRODUCT BUG: a {answer.status}: {shown}")
            no_body = head and index == 0
            if 400 <= answer.status < 500 and not no_body:
                assert answer.message, f"a {answer.status} without a readable message: {shown}"
            if answer.body and not no_body:
                if answer.headers.get("content-type", "").startswith("text/plain"):
                    assert answer.status == 200, f"an error as plain text: {shown}"  # a run log
                    continue
                if answer.is_page:
                    assert b"<script>alert" not in answer.body, f"unescaped input: {shown}"
                    continue
                assert answer.headers.get("content-type", "").startswith("application/json"), shown
                assert isinstance(answer.document(), dict), f"answer is not a JSON object: {shown}"

    def book(self, request: bytes, answers: list[Answer], signed: Sent | None) -> None:
        """The books of a webhook request: ``signed`` is what it asked for if it bore a valid
        signature of its body (None: it did not). Only such a delivery may make a job."""
        for index, answer in enumerate(answers):
            document = answer.document()
            job_id = document.get("job_id") if isinstance(document, dict) else None
            if job_id is None or answer.status is None:
                continue
            shown = f"{show(request)} -> {answer}"
            assert 200 <= answer.status < 300, shown
            if signed is None or index > 0:
                raise AssertionError(
                    f"PRODUCT BUG: a job id for a request without a valid signature: {shown}"
                )
            if answer.status == 202:
                assert job_id not in self.accepted, f"a job made twice: {shown}"
                self.accepted[job_id] = replace(signed, request=show(request, 300))
            else:
                assert job_id in self.accepted, f"an answer names an unknown job: {shown}"

    @contextlib.contextmanager
    def measured(self, name: str) -> Iterator[None]:
        self.tests_run.add(name)
        self.tally.clear()
        self.requests = 0
        busy_before = len(self.busy)
        started = time.monotonic()
        try:
            yield
        finally:
            elapsed = time.monotonic() - started
            self.total_requests += self.requests
            histogram = ", ".join(f"{k}: {v}" for k, v in sorted(self.tally.items()))
            print(
                f"\n[hostile] {name}: {self.requests} requests in {elapsed:.1f} s;"
                f" statuses {{{histogram}}}; busy 503s {len(self.busy) - busy_before};"
                f" jobs made so far {len(self.accepted)}; rss {self.rss() / MB:.0f} MB"
                f" (after warm-up {self.rss_baseline / MB:.0f}, peak {self.rss_peak / MB:.0f})"
            )
        self.after_each_test()

    def after_each_test(self) -> None:
        assert self.stack.process is not None and self.stack.process.poll() is None, (
            "PRODUCT BUG: the stack process died\n" + self.stack.log_tail()
        )
        healthz = self.client.get(f"{self.url}/healthz")
        assert healthz.status_code == 200, healthz.text
        self.assert_memory_bounded()
        assert len(self.busy) <= MAX_BUSY, "too many busy 503s:\n" + "\n".join(self.busy)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    stack = LocalStackProcess(tmp_path_factory.mktemp("hostile"), config=CONFIG, max_runs=4)
    stack.start()
    try:
        with httpx.Client(timeout=60) as client:
            world = World(stack, client)
            warm_up(world)
            yield world
    finally:
        stack.stop()


def warm_up(world: World) -> None:
    """Jobs for the read routes to find, every route once, then the memory baseline."""
    for _ in range(5):
        delivery, sha = world.fresh()
        response = world.stack.deliver(world.client, READ_REPO, delivery, sha)
        assert response.status_code == 202, response.text
        world.accepted[response.json()["job_id"]] = Sent("push", READ_REPO, sha, "warm-up")
    page = world.client.get(f"{world.url}/repos/{READ_REPO}/jobs", params={"limit": 2})
    assert page.status_code == 200, page.text
    world.read_cursor = page.json()["next_cursor"]
    assert world.read_cursor
    for _ in range(20):
        for path in ("/healthz", f"/repos/{READ_REPO}/stats", "/jobs/gh-hostile-0", "/nowhere"):
            world.client.get(world.url + path)
        world.client.post(f"{world.url}/webhook", content=b"{}")
    time.sleep(1)
    world.rss_baseline = world.rss()
    world.rss_peak = world.rss_baseline


# -- JSON with what json.dumps cannot write -----------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """JSON text written as is (deep nesting, huge numbers, NaN, invalid tokens)."""

    text: str


def serialize(value: Any, *, ascii_only: bool = True) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        items = (
            f"{json.dumps(str(k), ensure_ascii=ascii_only)}:{serialize(v, ascii_only=ascii_only)}"
            for k, v in value.items()
        )
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(serialize(v, ascii_only=ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


DELETE = object()


def set_path(document: dict[str, Any], path: str, value: Any) -> None:
    """Set (or with DELETE remove) ``path``; missing parents are made, non-object ones skip."""
    *parents, last = path.split(".")
    target: Any = document
    for key in parents:
        if not isinstance(target, dict):
            return
        target = target.setdefault(key, {})
    if not isinstance(target, dict):
        return
    if value is DELETE:
        target.pop(last, None)
    else:
        target[last] = value


def get_path(document: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(document, dict):
            return None
        document = document.get(key)
    return document


def fill_sha(value: Any, sha: str) -> Any:
    if value == SHA_SLOT:
        return sha
    if isinstance(value, dict):
        return {k: fill_sha(v, sha) for k, v in value.items()}
    if isinstance(value, list):
        return [fill_sha(v, sha) for v in value]
    return value


# -- strategies: values -----------------------------------------------------------------------

LONE_SURROGATES = ["\ud800", "\udfff", "a\udc00b", "main\ud83d", "\udbff\udbff"]
SPECIAL_TEXT = [
    "",
    " ",
    "\x00",
    "ma\x00in",
    "\x1b[31mred",
    "\x7f",
    "\t",
    "line\nX-Injected: 1",
    "\r\n\r\n",
    "\u202egnp.exe",
    "\ufeff",
    "\uffff",
    "\U0010ffff",
    "😀",
    "é",
    "../../etc/passwd",
    "..",
    "%2e%2e%2f",
    "refs/heads/main",
    "refs/heads/",
    "refs/tags/v1.0",
    "refs/pull/1/head",
    "${HOME}",
    "$(id)",
    "`id`",
    "'; DROP TABLE jobs; --",
    "<script>alert(1)</script>",
    "null",
    "0" * 40,
    "F" * 40,
    *LONE_SURROGATES,
]
REPEATED = st.builds(
    lambda unit, times: unit * times,
    st.sampled_from(["a", "é", "😀", "/", "\x00", "\ud800", "a/"]),
    st.sampled_from([39, 40, 41, 100, 101, 255, 256, 1024, 1025, 20_000]),
)
HOSTILE_TEXT = st.one_of(
    st.sampled_from(SPECIAL_TEXT),
    st.text(st.characters(exclude_categories=()), max_size=30),
    REPEATED,
    st.builds(
        lambda prefix, rest: prefix + rest,
        st.sampled_from(["refs/heads/", "refs/tags/", "refs/", "octo/"]),
        st.one_of(st.sampled_from(SPECIAL_TEXT), st.text(max_size=20)),
    ),
)
RAW_NUMBERS = st.sampled_from(
    [
        Raw("9" * 5000),  # over Python's 4,300-digit limit for int()
        Raw("-" + "9" * 100),
        Raw("1e999"),
        Raw("-0"),
        Raw("2.0"),
        Raw("1E2"),
        Raw("NaN"),
        Raw("Infinity"),
        Raw("-Infinity"),
        Raw("0x10"),  # invalid JSON from here on
        Raw("01"),
        Raw("+1"),
        Raw(".5"),
        Raw("tru"),
        Raw("nul"),
        Raw("'single'"),
        Raw('"unterminated'),
        Raw('"bad escape \\x41"'),
        Raw('"\\ud800\\ud800"'),
    ]
)
NUMBERS = st.one_of(
    st.integers(),
    st.sampled_from([0, -1, 1, 2**31 - 1, 2**31, 2**63, 10**38, 10**39]),
    st.floats(allow_nan=False, allow_infinity=False),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, HOSTILE_TEXT, RAW_NUMBERS)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(HOSTILE_TEXT, children, max_size=4),
    ),
    max_leaves=8,
)
DEEP = st.builds(
    lambda opener, depth, closed: Raw(
        opener[0] * depth + ("1" + opener[1] * depth if closed else "")
    ),
    st.sampled_from([("[", "]"), ('{"a":', "}")]),
    st.sampled_from([50, 900, 1000, 3000, 100_000]),
    st.booleans(),
)
# Text that would pass every check but one: a lone surrogate, a NUL or a control character.
ALMOST_TEXT = st.sampled_from([*LONE_SURROGATES, "\x00", "\x1b", "\x7f", "\n"])
REF_VALUES = st.one_of(
    HOSTILE_TEXT,
    st.builds(lambda bad: "refs/heads/main" + bad, ALMOST_TEXT),
    st.builds(lambda rest: "refs/heads/" + rest, HOSTILE_TEXT),
    st.builds(lambda n: "refs/heads/" + "/".join(["a" * 255] * n), st.sampled_from([1, 4, 5])),
    st.just("refs/heads/" + "b" * 256),
)
SHA_VALUES = st.one_of(
    st.sampled_from(
        ["0" * 40, "A" * 40, "g" * 40, "a" * 39, "a" * 41, "", " " + "a" * 40, "a" * 40 + "\n"]
    ),
    HOSTILE_TEXT,
)
REPO_VALUES = st.one_of(
    st.sampled_from(
        [
            *SIGNED_REPOS,
            "HOSTILE/SIGNED-A",
            "a/b/c",
            "../etc",
            "hostile/..",
            "hostile/.",
            "hostile",
            "/",
            "hostile/",
            "/signed-a",
            "-hostile/x",
            "a" * 39 + "/x",
            "a" * 40 + "/x",
            "hostile/" + "b" * 100,
            "hostile/" + "b" * 101,
            "host\x00ile/x",
            "hôstile/x",
            "hostile/x\n",
            "hostile/signed-a\ud800",
        ]
    ),
    HOSTILE_TEXT,
)
PR_NUMBERS = st.one_of(
    st.sampled_from([0, -1, 1, 2**31 - 1, 2**31, 10**40, True, False, 1.5, "1", None, [], {}]),
    RAW_NUMBERS,
)
ACTIONS = st.one_of(
    st.sampled_from(
        ["opened", "synchronize", "reopened", "closed", "edited", "OPENED", "", "opened\x00"]
    ),
    HOSTILE_TEXT,
)
VALUES_BY_KEY: dict[str, st.SearchStrategy[Any]] = {
    "ref": REF_VALUES,
    "after": SHA_VALUES,
    "before": SHA_VALUES,
    "sha": SHA_VALUES,
    "full_name": REPO_VALUES,
    "number": PR_NUMBERS,
    "action": ACTIONS,
    "login": st.one_of(HOSTILE_TEXT, st.builds(lambda bad: "octo" + bad, ALMOST_TEXT), SCALARS),
    "deleted": st.one_of(st.booleans(), JSON_VALUES),
}
PATHS = {
    "push": ["ref", "after", "before", "deleted", "created", "head_commit", "commits"],
    "pull_request": [
        "action",
        "number",
        "pull_request",
        "pull_request.number",
        "pull_request.head",
        "pull_request.head.sha",
        "pull_request.head.ref",
        "pull_request.base",
        "pull_request.base.ref",
    ],
    "ping": ["zen", "hook_id", "hook"],
    "issues": ["action", "issue"],
}
COMMON_PATHS = ["repository", "repository.full_name", "sender", "sender.login", "extra", "ref"]


# -- strategies: webhook deliveries -----------------------------------------------------------


@dataclass(frozen=True)
class BodySpec:
    """A delivery's body before its sha is filled in: a document and how to mangle it."""

    document: dict[str, Any]
    shape: str
    extra: Any = None  # the shape's own drawn data
    content_type: str = "application/json"

    def render(self, sha: str) -> bytes:
        if self.shape == "garbage":
            return bytes(self.extra)
        document = fill_sha(self.document, sha)
        if self.shape == "pad":
            document["padding"] = "x" * self.extra
        elif self.shape == "deep":
            key, value = self.extra
            document[key] = value
        text = serialize(document, ascii_only=self.shape not in ("utf8", "utf16", "utf32"))
        if self.shape in ("dup-first", "dup-last"):
            key, value = self.extra
            text = with_duplicate(text, key, value, first=self.shape == "dup-first")
        return encode_body(text, self.shape, self.extra)


def with_duplicate(text: str, key: str, value: Any, *, first: bool) -> str:
    """``text`` (a JSON object) with one more ``key``: before its own (``first``: the
    document's value comes later and wins) or after it (the duplicate wins)."""
    pair = f"{json.dumps(key)}:{serialize(value)}"
    if text == "{}":
        return "{" + pair + "}"
    return "{" + pair + "," + text[1:] if first else text[:-1] + "," + pair + "}"


FORM_BODIES: dict[str, Callable[[str, bytes], bytes]] = {
    "payload": lambda text, body: urlencode({"payload": text}).encode(),
    "twice": lambda text, body: urlencode([("payload", text), ("payload", text)]).encode(),
    "raw": lambda text, body: b"payload=" + body,
    "other": lambda text, body: urlencode({"other": text}).encode(),
}


def encode_body(text: str, shape: str, extra: Any) -> bytes:
    body = text.encode("utf-8", "surrogatepass")
    if shape in ("utf16", "utf32"):
        return text.encode(shape.replace("utf", "utf-"), "surrogatepass")
    if shape == "utf8-sig":
        return b"\xef\xbb\xbf" + body
    if shape == "truncate":
        return body[: int(len(body) * extra)]
    if shape == "form":
        return FORM_BODIES[extra](text, body)
    return body


SHAPES = [*["json"] * 8, "utf8", "utf16", "utf32", "utf8-sig", "dup-first", "dup-last"]
SHAPES += ["truncate", "garbage", "deep", "pad", "form"]
CONTENT_TYPES = [
    "application/json; charset=utf-8",
    "Application/JSON",
    "application/json;",
    "text/plain",
    "",
    "application/jsonx",
    "multipart/form-data; boundary=x",
    "application/x-www-form-urlencoded",
    "*/*",
]
EVENT_NAMES = [
    "push",
    "pull_request",
    "ping",
    "issues",
    "Push",
    "PUSH",
    "pull-request",
    "unknown",
    "x" * 300,
    "push,push",
]


@st.composite
def bodies(draw: st.DrawFn, repos: st.SearchStrategy[str]) -> tuple[str, BodySpec]:
    """(the event it is, a body): a GitHub payload with up to 3 hostile fields, then mangled."""
    template = draw(st.sampled_from(sorted(TEMPLATES)))
    event = TEMPLATES[template]
    document = copy.deepcopy(BASES[template])
    set_path(document, "repository.full_name", draw(repos))
    if event in SHA_PATH and template != "push.deleted":
        set_path(document, SHA_PATH[event], SHA_SLOT)
    for _ in range(draw(st.integers(0, 3))):
        path = draw(st.sampled_from(PATHS[event] + COMMON_PATHS))
        if draw(st.integers(0, 5)) == 0:
            set_path(document, path, DELETE)
            continue
        key = path.rsplit(".", 1)[-1]
        set_path(document, path, draw(VALUES_BY_KEY.get(key, JSON_VALUES)))
    shape = draw(st.sampled_from(SHAPES))
    extra: Any = None
    content_type = "application/json"
    if shape == "garbage":
        extra = draw(st.binary(max_size=400))
    elif shape == "pad":
        extra = draw(st.sampled_from([10_000, 100_000, 1 * MB, 4 * MB]))
    elif shape == "deep":
        extra = (draw(st.sampled_from(["ref", "repository", "pull_request", "zen"])), draw(DEEP))
    elif shape in ("dup-first", "dup-last"):
        key = draw(st.sampled_from(["ref", "after", "repository", "action", "number", "zen"]))
        extra = (key, draw(VALUES_BY_KEY.get(key, JSON_VALUES)))
    elif shape == "truncate":
        extra = draw(st.floats(0, 0.999))
    elif shape == "form":
        extra = draw(st.sampled_from(["payload", "payload", "twice", "raw", "other"]))
        content_type = "application/x-www-form-urlencoded"
    if draw(st.integers(0, 9)) == 0:
        content_type = draw(st.sampled_from(CONTENT_TYPES))
    return event, BodySpec(document, shape, extra, content_type)


@dataclass(frozen=True)
class WebhookSpec:
    event: str  # the X-GitHub-Event header
    body: BodySpec
    delivery: str | bytes | None  # None: a fresh one


DELIVERY_IDS: list[str | bytes] = [
    "",
    "-",
    "a" * 64,
    "a" * 65,
    "../x",
    "a b",
    "a/b",
    "0",
    "DEADBEEF-0000-0000-0000-000000000000",
    "gh-hostile-0",
    "é".encode(),
    b"\xff\xfe",
]


@st.composite
def mangled_deliveries(draw: st.DrawFn) -> WebhookSpec:
    event, body = draw(bodies(st.sampled_from(SIGNED_REPOS)))
    if draw(st.integers(0, 7)) == 0:
        event = draw(st.sampled_from(EVENT_NAMES))
    delivery = draw(st.sampled_from(DELIVERY_IDS)) if draw(st.integers(0, 9)) == 0 else None
    return WebhookSpec(event, body, delivery)


# Values at the edge of what a stored field takes: one character too many, or one that text
# cannot hold (a lone surrogate, a NUL, a control character) in an otherwise good value.
EDGE_TEXT = st.one_of(
    st.builds(lambda bad: "main" + bad, ALMOST_TEXT),
    st.builds(lambda bad: bad + "main", ALMOST_TEXT),
    st.builds(
        lambda unit, times: unit * times,
        st.sampled_from(["a", "é", "😀"]),
        st.sampled_from([1, 25, 63, 64, 100, 101, 255, 256]),
    ),
    st.sampled_from(SPECIAL_TEXT),
)
EDGE_REFS = st.one_of(
    st.builds(
        lambda prefix, text: prefix + text,
        st.sampled_from(["refs/heads/", "refs/tags/"]),
        EDGE_TEXT,
    ),
    REF_VALUES,
)
FOCUSED: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "push.branch": {
        "ref": EDGE_REFS,
        "sender.login": EDGE_TEXT,
        "repository.full_name": REPO_VALUES,
        "after": SHA_VALUES,
    },
    "pull_request.opened": {
        "pull_request.head.ref": EDGE_TEXT,
        "pull_request.base.ref": EDGE_TEXT,
        "number": PR_NUMBERS,
        "sender.login": EDGE_TEXT,
        "pull_request.head.sha": SHA_VALUES,
        "repository.full_name": REPO_VALUES,
    },
}


@st.composite
def focused_deliveries(draw: st.DrawFn) -> WebhookSpec:
    """A good push or pull request but for one stored field at the edge of what it takes."""
    template = draw(st.sampled_from(sorted(FOCUSED)))
    event = TEMPLATES[template]
    document = copy.deepcopy(BASES[template])
    set_path(document, "repository.full_name", draw(st.sampled_from(SIGNED_REPOS)))
    set_path(document, SHA_PATH[event], SHA_SLOT)
    path = draw(st.sampled_from(sorted(FOCUSED[template])))
    set_path(document, path, draw(FOCUSED[template][path]))
    if event == "pull_request":
        set_path(document, "action", draw(st.sampled_from(sorted(BUILD_ACTIONS))))
    shape = draw(st.sampled_from(["json", "json", "utf8"]))
    return WebhookSpec(event, BodySpec(document, shape), None)


def signed_deliveries() -> st.SearchStrategy[WebhookSpec]:
    return st.one_of(focused_deliveries(), mangled_deliveries())


def hmac_hex(secret: bytes, body: bytes, digest: Any = hashlib.sha256) -> str:
    return hmac.new(secret, body, digest).hexdigest()


BAD_SIGNATURES: dict[str, Callable[[bytes], list[str]]] = {
    "missing": lambda body: [],
    "empty": lambda body: [""],
    "prefix only": lambda body: ["sha256="],
    "wrong secret": lambda body: [sign(b"not-the-secret", body)],
    "another body": lambda body: [sign(SECRET.encode(), body + b" ")],
    "empty body's": lambda body: [sign(SECRET.encode(), b"")],
    "one hex short": lambda body: [sign(SECRET.encode(), body)[:-1]],
    "one hex more": lambda body: [sign(SECRET.encode(), body) + "0"],
    "last hex flipped": lambda body: [_flip(sign(SECRET.encode(), body))],
    "no prefix": lambda body: [sign(SECRET.encode(), body).removeprefix("sha256=")],
    "sha1": lambda body: ["sha1=" + hmac_hex(SECRET.encode(), body, hashlib.sha1)],
    "sha512": lambda body: ["sha512=" + hmac_hex(SECRET.encode(), body, hashlib.sha512)],
    "secret as digest": lambda body: ["sha256=" + hashlib.sha256(SECRET.encode()).hexdigest()],
    "plain sha256": lambda body: ["sha256=" + hashlib.sha256(body).hexdigest()],
    "zeros": lambda body: ["sha256=" + "0" * 64],
}


def _flip(signature: str) -> str:
    return signature[:-1] + ("0" if signature[-1] != "0" else "1")


@st.composite
def badly_signed_deliveries(draw: st.DrawFn) -> tuple[WebhookSpec, str, str | None]:
    unsigned_repos = st.sampled_from([f"{UNSIGNED_OWNER}/a", f"{UNSIGNED_OWNER}/B"])
    event, body = draw(bodies(unsigned_repos))
    mode = draw(st.sampled_from([*sorted(BAD_SIGNATURES), "garbage"]))
    garbage = draw(st.from_regex(r"[!-~]{1,100}", fullmatch=True)) if mode == "garbage" else None
    return WebhookSpec(event, body, None), mode, garbage


def delivered_document(content_type: str, body: bytes) -> Any:
    """The payload as the server reads it (None if it is not one)."""
    try:
        if content_type.split(";", 1)[0].strip().lower() == "application/x-www-form-urlencoded":
            return json.loads(parse_qs(body.decode("ascii"), strict_parsing=True)["payload"][0])
        return json.loads(body)
    except (ValueError, KeyError, RecursionError):
        return None


def what_was_asked(event: str, content_type: str, body: bytes) -> Sent | None:
    document = delivered_document(content_type, body)
    if not isinstance(document, dict):
        return Sent(event.strip(), "", "", "")
    event = event.strip()
    repo = get_path(document, "repository.full_name")
    sha = get_path(document, SHA_PATH.get(event, "after"))
    login = get_path(document, "sender.login")
    return Sent(
        event,
        repo if isinstance(repo, str) else "",
        str(sha),
        "",
        ref=get_path(document, "ref") if event == "push" else UNCHECKED,
        sender=login if isinstance(login, str) and login else None,
    )


# -- the tests: webhook payloads --------------------------------------------------------------


def test_validly_signed_deliveries_with_hostile_payloads_get_2xx_or_4xx_and_no_stray_job(
    world: World,
) -> None:
    @hypothesis_settings("signed_payloads")
    @given(spec=signed_deliveries())
    def deliver(spec: WebhookSpec) -> None:
        delivery, sha = world.fresh()
        body = spec.body.render(sha)
        delivery_header = spec.delivery if spec.delivery is not None else delivery
        headers: list[tuple[str, str | bytes]] = [
            ("Content-Type", spec.body.content_type),
            ("X-GitHub-Event", spec.event),
            ("X-GitHub-Delivery", delivery_header),
            ("X-Hub-Signature-256", sign(SECRET.encode(), body)),
        ]
        answer = world.post("/webhook", body, headers)
        request = f"headers {headers!r} body ".encode() + body
        world.check(request, [answer])
        world.book(request, [answer], what_was_asked(spec.event, spec.body.content_type, body))

    with world.measured("signed_payloads"):
        deliver()


def test_deliveries_without_a_valid_signature_are_401_and_make_nothing(world: World) -> None:
    @hypothesis_settings("bad_signatures")
    @given(case=badly_signed_deliveries())
    def deliver(case: tuple[WebhookSpec, str, str | None]) -> None:
        spec, mode, garbage = case
        delivery, sha = world.fresh()
        body = spec.body.render(sha)
        signatures = [garbage] if garbage is not None else BAD_SIGNATURES[mode](body)
        headers: list[tuple[str, str | bytes]] = [
            ("Content-Type", spec.body.content_type),
            ("X-GitHub-Event", spec.event),
            ("X-GitHub-Delivery", delivery),
            *(("X-Hub-Signature-256", value) for value in signatures),
        ]
        request = f"signature {mode}: headers {headers!r} body ".encode() + body
        repo = get_path(delivered_document(spec.body.content_type, body), "repository.full_name")
        if isinstance(repo, str) and repo.startswith(f"{UNSIGNED_OWNER}/"):
            world.unsigned_repos.add(repo)
        answer = world.post("/webhook", body, headers)
        world.check(request, [answer])
        world.book(request, [answer], None)
        # The signature is checked first: whatever else is wrong, the answer is about it.
        assert answer.status == 401, f"PRODUCT BUG: not refused 401: {show(request)} -> {answer}"
        assert "X-Hub-Signature-256" in (answer.message or ""), f"{show(request)} -> {answer}"

    with world.measured("bad_signatures"):
        deliver()


# -- the tests: webhook headers (raw) ---------------------------------------------------------

HEADER_NAMES = ["X-GitHub-Event", "X-GitHub-Delivery", "X-Hub-Signature-256", "Content-Type"]
HEADER_MODES = [
    "missing",
    "duplicate",
    "duplicate other",
    "empty",
    "huge value",
    "huge padding",
    "lower-case name",
    "upper-case name",
    "space before colon",
    "no space after colon",
    "latin-1 byte",
    "utf-8 bytes",
    "NUL",
    "control byte",
    "tabs around",
    "folded",
    "upper-case value",
]
LENGTH_MODES = [
    "missing",
    "shorter",
    "longer",
    "plus sign",
    "spaces",
    "hex",
    "negative",
    "huge",
    "decimal point",
    "underscore",
    "empty",
    "duplicate",
    "duplicate other",
    "over the limit",
]
EXTRA_LINES = [
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: identity",
    b"Expect: 100-continue",
    b"Connection: close",
    b"Connection: keep-alive, Upgrade",
    b"Upgrade: h2c",
    b"Host: evil.example",
    b"X-Forwarded-For: 127.0.0.1",
    b": no name",
    b"no colon at all",
    b"X-Empty:",
    b" X-Leading-Space: 1",
    b"X-Nul\x00Name: 1",
    b"\xff\xfe: \xff",
    b"Authorization: Bearer " + b"t" * 5000,
]


@dataclass(frozen=True)
class HeaderAttack:
    modes: tuple[tuple[str, str], ...]  # (header name, mode); "Content-Length" included
    extra: tuple[bytes, ...]
    many: int  # that many more header lines
    newline: bytes
    size: int  # huge values: bytes of padding
    event: str


@st.composite
def header_attacks(draw: st.DrawFn) -> HeaderAttack:
    names = draw(
        st.lists(st.sampled_from([*HEADER_NAMES, "Content-Length"]), max_size=3, unique=True)
    )
    modes = tuple(
        (name, draw(st.sampled_from(LENGTH_MODES if name == "Content-Length" else HEADER_MODES)))
        for name in names
    )
    extra = draw(
        st.lists(
            st.one_of(
                st.sampled_from(EXTRA_LINES),
                st.binary(max_size=60).filter(lambda b: b"\r" not in b and b"\n" not in b),
            ),
            max_size=2,
        )
    )
    return HeaderAttack(
        modes=modes,
        extra=tuple(extra),
        many=draw(st.sampled_from([0] * 8 + [50, 99, 100, 150])),
        newline=draw(st.sampled_from([b"\r\n"] * 5 + [b"\n"])),
        size=draw(st.sampled_from([1000, 8000, 40_000, 70_000])),
        event=draw(st.sampled_from(["push"] * 3 + ["pull_request", "ping"])),
    )


def header_lines(name: str, value: bytes, mode: str, size: int) -> list[bytes]:
    """The header lines of ``name`` under ``mode`` (``value`` is its right value)."""
    raw = name.encode()
    simple: dict[str, bytes] = {
        "empty": b"",
        "huge value": value + b"x" * size,
        "huge padding": b" " * size + value,
        "latin-1 byte": value + b"\xe9",
        "utf-8 bytes": value + "é".encode(),
        "NUL": value + b"\x00",
        "control byte": b"\x01" + value,
        "tabs around": b"\t" + value + b"\t",
        "upper-case value": value.upper(),
        "shorter": str(max(int(value) - 7, 0)).encode() if value.isdigit() else value,
        "longer": str(int(value) + 7).encode() if value.isdigit() else value,
        "plus sign": b"+" + value,
        "spaces": b"  " + value + b"  ",
        "hex": hex(int(value)).encode() if value.isdigit() else value,
        "negative": b"-" + value,
        "huge": b"9" * 30,
        "decimal point": value + b".0",
        "underscore": value[:1] + b"_" + value[1:],
        "over the limit": str(MAX_BODY + 1).encode(),
    }
    if mode == "missing":
        return []
    if mode == "keep":
        return [raw + b": " + value]
    if mode in simple:
        return [raw + b": " + simple[mode]]
    if mode == "duplicate":
        return [raw + b": " + value, raw + b": " + value]
    if mode == "duplicate other":
        return [raw + b": " + value, raw + b": " + value[: len(value) // 2] + b"0"]
    if mode == "lower-case name":
        return [raw.lower() + b": " + value]
    if mode == "upper-case name":
        return [raw.upper() + b": " + value]
    if mode == "space before colon":
        return [raw + b" : " + value]
    if mode == "no space after colon":
        return [raw + b":" + value]
    if mode == "folded":
        half = len(value) // 2
        return [raw + b": " + value[:half], b" " + value[half:]]
    raise AssertionError(mode)


def length_is_plain_and_true(lines: list[bytes], body: bytes) -> bool:
    """Every Content-Length line says the body's true length in plain digits (RFC 9110's
    ``1*DIGIT``: no sign, no underscore, no hex)."""
    values = [
        line.split(b":", 1)[1].strip()
        for line in lines
        if line.lower().startswith(b"content-length")
    ]
    if not values:
        return not body
    return all(value.isdigit() and int(value) == len(body) for value in values)


def test_deliveries_with_hostile_headers_get_4xx_or_a_job_only_when_validly_signed(
    world: World,
) -> None:
    template = {"push": "push.branch", "pull_request": "pull_request.opened", "ping": "ping"}

    @hypothesis_settings("webhook_headers")
    @given(attack=header_attacks())
    def deliver(attack: HeaderAttack) -> None:
        delivery, sha = world.fresh()
        document = copy.deepcopy(BASES[template[attack.event]])
        set_path(document, "repository.full_name", HEADERS_REPO)
        if attack.event in SHA_PATH:
            set_path(document, SHA_PATH[attack.event], sha)
        body = json.dumps(document).encode()
        right = {
            "X-GitHub-Event": attack.event.encode(),
            "X-GitHub-Delivery": delivery.encode(),
            "X-Hub-Signature-256": sign(SECRET.encode(), body).encode(),
            "Content-Type": b"application/json",
            "Content-Length": str(len(body)).encode(),
        }
        modes = dict(attack.modes)
        lines = [b"POST /webhook HTTP/1.1", b"Host: " + f"{world.address[0]}".encode()]
        for name, value in right.items():
            lines += header_lines(name, value, modes.get(name, "keep"), attack.size)
        lines += list(attack.extra)
        lines += [f"X-Many-{n}: {n}".encode() for n in range(attack.many)]
        nl = attack.newline
        request = nl.join(lines) + nl + nl + body
        # A valid signature: the HMAC of the body the server reads is in the request. Only a
        # Content-Length in plain digits that tells the truth makes the server read that body
        # (one it might read otherwise, a proxy in front might not: request smuggling).
        signed = right["X-Hub-Signature-256"].lower() in request.lower()
        plain_length = length_is_plain_and_true(lines, body)
        answers = world.exchange(request)
        # Over the header cap the server may answer and close before it has read the rest,
        # and the kernel's reset can destroy the answer.
        must_answer = len(request) - len(body) < MAX_HEADER_BYTES
        world.check(request, answers, must_answer=must_answer)
        asked = what_was_asked(attack.event, "application/json", body)
        world.book(request, answers, asked if signed else None)
        # The framing is checked before anything else too: no 2xx without a plain length.
        if answers and answers[0].status is not None and 200 <= answers[0].status < 300:
            assert plain_length, (
                "PRODUCT BUG: a 2xx for a request whose Content-Length is not its length in"
                f" plain digits: {show(request)} -> {answers[0]}"
            )

    with world.measured("webhook_headers"):
        deliver()


# -- the tests: read routes (raw) -------------------------------------------------------------

SEGMENTS = [
    "hostile",
    "reads",
    "signed-a",
    "gh-hostile-0",
    "",
    ".",
    "..",
    "%2e%2e",
    "%2E%2e",
    ".%2e",
    "%2f",
    "..%2f..%2f",
    "%2F",
    "%00",
    "%ff",
    "%e2%82",
    "%c0%af",
    "%",
    "%zz",
    "%25",
    "%252e%252e",
    "a%20b",
    "~",
    "*",
    ";",
    "a;b",
    "%u002e",
    "\\..\\",
    "..\\..\\",
    "etc",
    "passwd",
    "healthz",
    "jobs",
    "stats",
    "repos",
    "webhook",
    "%0d%0aX-Injected:%201",
    "%ed%a0%80",
    "\u00e9",
    "😀",
]
LONG_SEGMENTS = st.builds(
    lambda unit, times: unit * times,
    st.sampled_from(["a", "%2e", "..", "%ff"]),
    st.sampled_from([39, 40, 100, 101, 256, 257, 1000, 20_000, 70_000]),
)
SEGMENT = st.one_of(
    st.sampled_from(SEGMENTS),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=12),
    st.text(max_size=8).map(lambda text: quote(text, safe="", errors="surrogatepass")),
    LONG_SEGMENTS,
)
FIXED_PATHS = [
    "/healthz",
    "/healthz/",
    "//healthz",
    "/./healthz",
    "/HEALTHZ",
    "/healthz%00",
    "/healthz/..",
    "/healthz#fragment",
    "/%68ealthz",
    f"/repos/{READ_REPO}/jobs/../../../healthz",
    f"/repos/{READ_REPO}/jobs",
    f"/repos/{READ_REPO}/stats",
    f"/repos/{READ_REPO.upper()}/stats",
    f"/repos/{quote(READ_REPO, safe='')}/stats",
    "/repos/hostile%2freads/jobs",
    "/jobs/gh-hostile-0",
    "/jobs/gh-hostile-0/log",
    "/jobs/",
    "/jobs",
    "/repos//jobs",
    "/repos///stats",
    "/webhook",
    "/",
    "",
    "*",
    "http://evil.example/healthz",
    "https://127.0.0.1/jobs/gh-hostile-0",
    "//evil.example/healthz",
    "/../../../../etc/passwd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/..%2f..%2fetc%2fpasswd",
]
ROUTES = [
    lambda a, b: f"/repos/{a}/{b}/jobs",
    lambda a, b: f"/repos/{a}/{b}/stats",
    lambda a, b: f"/jobs/{a}",
    lambda a, b: f"/jobs/{a}/{b}",
    lambda a, b: f"/repos/{a}/{b}",
    lambda a, b: f"/{a}/{b}",
    lambda a, b: f"/repos/{READ_REPO}/jobs/{a}",
    lambda a, b: f"/healthz/{a}",
]
PATHS_STRATEGY = st.one_of(
    st.sampled_from(FIXED_PATHS),
    st.sampled_from([f"/repos/{READ_REPO}/jobs", f"/repos/{SIGNED_REPOS[2]}/jobs"]),
    st.builds(lambda route, a, b: route(a, b), st.sampled_from(ROUTES), SEGMENT, SEGMENT),
    st.lists(SEGMENT, min_size=1, max_size=6).map(lambda parts: "/" + "/".join(parts)),
)
PARAMETER_NAMES = ["limit", "cursor", "status", "branch", "event"]
QUERY_NAMES = st.one_of(
    st.sampled_from(PARAMETER_NAMES * 3 + ["LIMIT", "", "limit[]", "x", "%00", "limit%00", "?"]),
    st.text(max_size=6),
)
QUERY_VALUES = st.one_of(
    st.sampled_from(
        [
            "",
            "0",
            "1",
            "2",
            "100",
            "101",
            "-1",
            "1e3",
            "0x10",
            " 5",
            "5 ",
            "%205",
            "NaN",
            "inf",
            "9" * 50,
            "9" * 5000,
            "%ff",
            "%00",
            "%ed%a0%80",
            "\u0663",
            "pending",
            "passed",
            "PASSED",
            "active",
            "failed",
            "cancelled",
            "queued",
            "main",
            "refs/heads/main",
            "push",
            "pull_request",
            "PUSH",
            "push%00",
            "../..",
            "a.b",
            ".",
            "a" * 256,
            "a" * 3000,
            "x" * 60_000,
            "\u00e9",
        ]
    ),
    st.just("@cursor"),
    st.builds(lambda n: f"@cursor:{n}", st.integers(0, 200)),
    st.text(max_size=10),
)
# Without SCHEDULER_CURSOR_SECRET the cursor key is the built-in one, public in the source: a
# caller can forge a cursor whose MAC holds, naming any position (and the payload's shape is
# checked field by field, MAC or not).
CODEC = CursorCodec()
FORGED_CURSORS = st.builds(
    lambda job_filter, position: CODEC.encode(READ_REPO, job_filter, position),
    st.sampled_from([JobFilter(), JobFilter(JobStatus.PASSED), JobFilter(branch="main")]),
    st.builds(
        Position,
        st.one_of(
            st.sampled_from(["gh-hostile-0", "\ud800", "\x00", "z" * 256, "😀" * 100]),
            HOSTILE_TEXT.map(lambda text: text[:256] or "x"),
        ),
        st.one_of(st.sampled_from([0, 1, 2**53 - 1, 2**53, -1]), st.integers(0, 2**53 - 1)),
    ),
)


def mac_only(payload: bytes) -> str:
    """A cursor with a valid MAC over ``payload`` (the codec's own MAC function)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    return f"{b64(payload)}.{b64(CODEC._mac(payload))}"


MALFORMED_CURSORS = st.sampled_from(
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b"null",
        b'{"v":1}',
        b'{"v":2,"r":"hostile/reads","f":[null,null,null,null],"k":["gh-hostile-0",1]}',
        b'{"v":1,"r":["hostile/reads"],"f":[null,null,null,null],"k":["gh-hostile-0",1]}',
        b'{"v":1,"r":"hostile/reads","f":[null,null,null],"k":["gh-hostile-0",1]}',
        b'{"v":1,"r":"hostile/reads","f":[null,null,null,null],"k":["gh-hostile-0",1.5]}',
        b'{"v":1,"r":"hostile/reads","f":[null,null,null,null],"k":["gh-hostile-0",true]}',
        b'{"v":1,"r":"hostile/reads","f":[null,null,null,null],"k":["",1]}',
        b'{"v":1,"r":"hostile/reads","f":[null,null,null,null],"k":[1,1]}',
        b'{"v":1,"r":"hostile/reads","f":[null,null,null,null],"k":["a",1,2]}',
        b'{"v":1,"r":"hostile/reads","f":{},"k":{}}',
        b'{"v":1,"r":"hostile/reads","f":[null,null,null,null],"k":["a",1],"x":0}',
        b'{"v":1,"r":"hostile/reads","f":[null,null,null,null],"k":["a",' + b"9" * 5000 + b"]}",
    ]
).map(mac_only)
QUERY_PAIRS = st.one_of(
    st.tuples(QUERY_NAMES, QUERY_VALUES),
    st.tuples(st.just("cursor"), st.one_of(FORGED_CURSORS, MALFORMED_CURSORS)),
)


@dataclass(frozen=True)
class ReadRequest:
    method: bytes
    path: str
    query: tuple[tuple[str, str], ...]
    encode_query: bool
    version: bytes
    headers: tuple[bytes, ...]
    body: bytes
    newline: bytes


METHODS = [b"GET"] * 10 + [
    b"HEAD",
    b"HEAD",
    b"POST",
    b"PUT",
    b"DELETE",
    b"PATCH",
    b"OPTIONS",
    b"TRACE",
    b"CONNECT",
    b"get",
    b"Get",
    b"PROPFIND",
    b"M-SEARCH",
    b"BREW",
    b"GET\x00",
    b"\xff\xfe",
    b"G" * 300,
]
VERSIONS = [b"HTTP/1.1"] * 12 + [
    b"HTTP/1.0",
    b"",
    b"HTTP/0.9",
    b"HTTP/2.0",
    b"HTTP/1.10",
    b"HTTP/1.1.1",
    b"http/1.1",
    b"HTTP/01.1",
    b"HTTP/3",
    b"HTTP/1.1 extra",
    b"HTTP/\xff",
]
READ_HEADERS = [
    b"Host: localhost",
    b"Authorization: Bearer not-a-token",
    b"Authorization: Basic %%%",
    b"Cookie: session=../../etc/passwd",
    b"Accept: text/html",
    b"Accept-Encoding: gzip, br",
    b"Range: bytes=0-1",
    b"If-None-Match: *",
    b"X-HTTP-Method-Override: DELETE",
    b"X-Original-URL: /webhook",
    b"Content-Type: application/json",
    b"Transfer-Encoding: chunked",
    b"Content-Length: -1",
    b"Content-Length: abc",
    b"Expect: 100-continue",
    b"Connection: close",
]


QUERIED_PATHS = [
    f"/repos/{READ_REPO}/jobs",
    f"/repos/{READ_REPO.upper()}/jobs",
    "/repos/%68ostile/%72eads/jobs",
    f"/repos/{SIGNED_REPOS[2]}/jobs",
    "/repos/nobody/nothing/jobs",
    f"/repos/{READ_REPO}/stats",
    "/jobs/gh-hostile-0",
]


@st.composite
def queries(draw: st.DrawFn) -> ReadRequest:
    """A well-formed GET of a read route whose query parameters are hostile."""
    names = st.sampled_from(PARAMETER_NAMES)
    pairs = st.one_of(st.tuples(names, QUERY_VALUES), st.tuples(st.just("cursor"), FORGED_CURSORS))
    return ReadRequest(
        method=draw(st.sampled_from([b"GET"] * 7 + [b"HEAD"])),
        path=draw(st.sampled_from(QUERIED_PATHS)),
        query=tuple(draw(st.lists(pairs, min_size=1, max_size=3))),
        encode_query=draw(st.sampled_from([True] * 3 + [False])),
        version=b"HTTP/1.1",
        headers=(b"Host: localhost",),
        body=b"",
        newline=b"\r\n",
    )


@st.composite
def any_reads(draw: st.DrawFn) -> ReadRequest:
    method = draw(
        st.one_of(
            st.just(b"GET"),
            st.sampled_from(METHODS),
            st.text(
                st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=8
            ).map(str.encode),
        )
    )
    query = tuple(draw(st.lists(QUERY_PAIRS, max_size=4)))
    body = b""
    headers = draw(st.lists(st.sampled_from(READ_HEADERS), max_size=3, unique=True))
    if draw(st.integers(0, 9)) == 0:
        body = draw(st.binary(max_size=64))
        headers.append(f"Content-Length: {len(body)}".encode())
    return ReadRequest(
        method=method,
        path=draw(PATHS_STRATEGY),
        query=query,
        encode_query=draw(st.booleans()),
        version=draw(st.sampled_from(VERSIONS)),
        headers=tuple(headers),
        body=body,
        newline=draw(st.sampled_from([b"\r\n"] * 5 + [b"\n"])),
    )


def read_requests() -> st.SearchStrategy[ReadRequest]:
    return st.one_of(queries(), any_reads())


def query_value(world: World, value: str) -> str:
    """``@cursor`` is a real cursor of READ_REPO's listing; ``@cursor:N`` one with byte N
    changed (a tampered cursor)."""
    if not value.startswith("@cursor"):
        return value
    cursor = world.read_cursor
    if value == "@cursor":
        return cursor
    index = int(value.split(":")[1]) % len(cursor)
    changed = "A" if cursor[index] != "A" else "B"
    return cursor[:index] + changed + cursor[index + 1 :]


def render_read(world: World, spec: ReadRequest) -> bytes:
    pairs = [(name, query_value(world, value)) for name, value in spec.query]
    if spec.encode_query:
        query = urlencode(pairs, errors="surrogatepass")
    else:
        query = "&".join(f"{name}={value}" for name, value in pairs)
    target = spec.path + ("?" + query if pairs else "")
    line = spec.method + b" " + target.encode("utf-8", "surrogatepass")
    if spec.version:
        line += b" " + spec.version
    nl = spec.newline
    return nl.join([line, *spec.headers]) + nl + nl + spec.body


def declares_http_0_9(request: bytes) -> bool:
    """Whether the request line ends in a version below HTTP/1.0 (as the standard library
    reads it), which is answered in HTTP/0.9 style: the body without a status line."""
    line = request.split(b"\n", 1)[0].decode("latin-1").rstrip("\r\n")
    words = line.split()
    if len(words) < 3 or not words[-1].startswith("HTTP/"):
        return False
    try:
        major, minor = (int(part) for part in words[-1].removeprefix("HTTP/").split("."))
    except ValueError:
        return False
    return (major, minor) < (1, 0)


def check_read(world: World, spec: ReadRequest, request: bytes, answers: list[Answer]) -> None:
    """What a successful read shows: only jobs the books know (no job nobody asked for)."""
    head = spec.method == b"HEAD"
    for answer in answers[:1]:
        if answer.status != 200 or head:
            continue
        if answer.headers.get("content-type", "").startswith("text/plain"):
            continue  # a run's log (GET /jobs/{job_id}/log)
        if answer.is_page:  # the dashboard: the jobs it lists
            shown = [m.decode() for m in re.findall(rb'data-job-id="([^"]+)"', answer.body)]
            stray = [job_id for job_id in shown if html.unescape(job_id) not in world.accepted]
            assert not stray, f"PRODUCT BUG: jobs nobody made: {stray}: {show(request)}"
            continue
        document = answer.document()
        assert isinstance(document, dict), f"{show(request)} -> {answer}"
        job_ids = [job["job_id"] for job in document.get("jobs", [])]
        if "job_id" in document:
            job_ids.append(document["job_id"])
        stray = [job_id for job_id in job_ids if job_id not in world.accepted]
        assert not stray, f"PRODUCT BUG: jobs nobody made: {stray}: {show(request)}"


def test_read_routes_answer_hostile_paths_methods_and_queries_with_4xx_never_5xx(
    world: World,
) -> None:
    @hypothesis_settings("read_routes")
    @given(spec=read_requests())
    def read(spec: ReadRequest) -> None:
        request = render_read(world, spec)
        head = spec.method.upper() == b"HEAD"
        answers = world.exchange(request, head=head)
        # Every answer has a status line, but to a request that says it speaks HTTP/0.9: that
        # one is the body alone (and to a HEAD, nothing).
        simple = declares_http_0_9(request)
        world.check(
            request, answers, head=head, must_answer=not (simple and head), status_line=not simple
        )
        check_read(world, spec, request, answers)

    with world.measured("read_routes"):
        read()


# -- the tests: malformed HTTP (raw) ----------------------------------------------------------

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
MALFORMED_FIXED = [
    b"",
    b"\r\n",
    b"\r\n\r\n",
    b"\r\nGET /healthz HTTP/1.1\r\n\r\n",
    b"GET /healthz\r\n",
    b"GET\r\n\r\n",
    b"GET /healthz HTTP/1.1",
    b"GET /healthz HTTP/1.1\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
    b" GET /healthz HTTP/1.1\r\n\r\n",
    b"GET  /healthz  HTTP/1.1\r\n\r\n",
    b"GET\t/healthz\tHTTP/1.1\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\n continued: line\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n",
    b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % n for n in range(101)) + b"\r\n",
    b"GET /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"POST /webhook HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST /webhook HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    b"POST /webhook HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
    b"POST /webhook HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}",
    b"POST /webhook HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
    b"POST /webhook HTTP/1.1\r\nContent-Length: " + str(MAX_BODY + 1).encode() + b"\r\n\r\n",
    b"POST /webhook HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    HEALTHZ + HEALTHZ,
    HEALTHZ + b"GARBAGE\r\n\r\n",
    HEALTHZ + b"\x00\x01\x02\xff",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)),  # a TLS hello
    b"CONNECT 127.0.0.1:22 HTTP/1.1\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\n\x00: \x00\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nX-\xff: \xff\xfe\r\n\r\n",
    b"GET /healthz HTTP/1.1\n\n",
    b"GET /healthz HTTP/1.1\r\r\r\r",
]
HEADER_LINE = st.binary(max_size=80).filter(lambda b: b"\n" not in b)


@st.composite
def malformed(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return draw(st.sampled_from(MALFORMED_FIXED))
    if kind == 1:
        return draw(st.binary(max_size=600))
    method = draw(st.one_of(st.sampled_from([b"GET", b"POST", b"HEAD"]), st.binary(max_size=10)))
    target = draw(st.one_of(st.sampled_from([b"/healthz", b"/webhook"]), st.binary(max_size=40)))
    version = draw(st.one_of(st.sampled_from(VERSIONS), st.binary(max_size=10)))
    lines = draw(st.lists(HEADER_LINE, max_size=6))
    ending = draw(st.sampled_from([b"\r\n\r\n", b"\n\n", b"\r\n", b""]))
    body = draw(st.binary(max_size=100))
    return b" ".join([method, target, version]) + b"\r\n" + b"\r\n".join(lines) + ending + body


def test_malformed_http_gets_4xx_or_nothing_never_5xx_or_a_hang(world: World) -> None:
    @hypothesis_settings("malformed_http")
    @given(request=malformed())
    def send(request: bytes) -> None:
        head = request.upper().startswith(b"HEAD ")
        answers = world.exchange(request, head=head)
        simple = declares_http_0_9(request)
        world.check(request, answers, head=head, must_answer=False, status_line=not simple)
        world.book(request, answers, None)

    with world.measured("malformed_http"):
        send()


# -- HTTP versions the server does not speak --------------------------------------------------
# Found by the tests above: these were answered with a bare JSON body (no status line, no
# headers), logged as a 505 for HTTP/2 and later; fixed in a493116.

BAD_VERSIONS = [b"HTTP/2.0", b"HTTP/3", b"HTTP/1.1.1", b"HTTP/1.x", b"HTTP/\xff"]


@pytest.mark.parametrize("version", BAD_VERSIONS, ids=lambda v: v.decode("latin-1"))
def test_a_request_line_with_a_bad_http_version_gets_a_status_line_and_a_4xx(
    world: World, version: bytes
) -> None:
    request = b"GET /healthz " + version + b"\r\nHost: x\r\n\r\n"
    answers = world.exchange(request)
    world.check(request, answers, status_line=False)  # the status line is asserted below
    assert answers, f"no answer to {show(request)}"
    assert answers[0].status is not None, (
        "PRODUCT BUG: a request line with a bad or unsupported HTTP version is answered with a"
        " bare JSON body, without a status line or headers (the standard library answers in"
        " HTTP/0.9 style because the version was never accepted; for HTTP/2 and later the"
        f" stack logs the answer as a 505): {show(request)} -> {answers[0].body!r}"
    )
    assert 400 <= answers[0].status < 500, f"{show(request)} -> {answers[0]}"


# -- the tests: bodies at the limit -----------------------------------------------------------


def padded_push(sha: str, size: int, *, filler: str = "x", key: str = "padding") -> bytes:
    """A valid push of exactly ``size`` bytes: its padding field fills it up."""
    document = {
        "ref": "refs/heads/main",
        "after": sha,
        "repository": {"full_name": SIGNED_REPOS[0]},
        "sender": {"login": "hostile"},
        key: "",
    }
    empty = len(json.dumps(document).encode())
    units = (size - empty) // len(json.dumps(filler)[1:-1])
    document[key] = filler * units
    body = json.dumps(document).encode()
    return body + b" " * (size - len(body))


BIG_BODIES: dict[str, tuple[Callable[[str], bytes], bool, int | tuple[int, ...]]] = {
    # name: (body of a sha, signed, the status(es) it must get)
    "a signed push of exactly the limit": (lambda sha: padded_push(sha, MAX_BODY), True, 202),
    "a signed push a byte under the limit": (
        lambda sha: padded_push(sha, MAX_BODY - 1),
        True,
        202,
    ),
    "a signed push a byte over the limit": (lambda sha: padded_push(sha, MAX_BODY + 1), True, 413),
    "an unsigned push of the limit": (lambda sha: padded_push(sha, MAX_BODY), False, 401),
    "a signed body of the limit of lone surrogates": (
        lambda sha: padded_push(sha, MAX_BODY, filler="\ud800", key="zen"),
        True,
        202,
    ),
    "a signed body of the limit of open brackets": (lambda sha: b"[" * MAX_BODY, True, 400),
    "a signed body of the limit of one number": (
        lambda sha: b'{"number":' + b"9" * (MAX_BODY - 11) + b"}",
        True,
        400,
    ),
    "a signed body of the limit of duplicate keys": (
        lambda sha: b'{"a":1' + b',"a":1' * ((MAX_BODY - 7) // 6) + b"}",
        True,
        400,
    ),
}


@pytest.mark.parametrize("case", BIG_BODIES)
def test_bodies_at_the_size_limit_are_served_or_refused_with_4xx(world: World, case: str) -> None:
    make, signed, expected = BIG_BODIES[case]
    delivery, sha = world.fresh()
    body = make(sha)
    signature = sign(SECRET.encode() if signed else b"wrong", body)
    head = (
        f"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"X-GitHub-Event: push\r\nX-GitHub-Delivery: {delivery}\r\n"
        f"X-Hub-Signature-256: {signature}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with world.measured(f"big body: {case}"):
        answers = world.exchange(head + body, seconds=60)
        world.check(head + body, answers, must_answer=len(body) <= MAX_BODY)
        asked = what_was_asked("push", "application/json", body) if signed else None
        world.book(head + body, answers, asked)
    statuses = (expected,) if isinstance(expected, int) else expected
    if answers or len(body) <= MAX_BODY:
        assert answers[0].status in statuses, f"{case}: {answers[0]}"
    del body, answers


# -- the books --------------------------------------------------------------------------------


def scan(world: World, table: str) -> list[dict[str, Any]]:
    settings_ = Settings.from_env(world.stack.env_for_cli())
    ddb = dynamodb_client("dynamodb", settings_)
    name = getattr(settings_.tables, table)
    items: list[dict[str, Any]] = []
    for page in ddb.get_paginator("scan").paginate(TableName=name, ConsistentRead=True):
        items.extend(page["Items"])
    return items


def test_afterwards_the_books_balance_memory_is_bounded_and_a_push_still_runs(
    world: World,
) -> None:
    client = world.client
    # The server answers normally: a plain signed push makes a job that runs to the end.
    delivery, sha = world.fresh()
    response = world.stack.deliver(client, AFTER_REPO, delivery, sha)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    world.accepted[job_id] = Sent("push", AFTER_REPO, sha, "after the attack")
    wait_for(
        "the push after the attack to pass",
        lambda: world.stack.job(client, job_id)["status"] == "passed",
        180,
        0.5,
    )

    # Every job in the table is one the server answered 202 to a validly signed delivery,
    # with what that delivery asked for; and every such answer has its job.
    jobs = {item["job_id"]["S"]: item for item in scan(world, "jobs")}
    stray = sorted(set(jobs) - set(world.accepted))
    assert not stray, f"PRODUCT BUG: jobs nobody was told about: {stray[:20]}"
    missing = sorted(set(world.accepted) - set(jobs))
    assert not missing, f"PRODUCT BUG: jobs answered 202 but not stored: {missing[:20]}"
    # Every job runs to the end and passes (its command is `true`): whatever an accepted
    # payload held reached the run as data (environment variables) without breaking it.
    per_repo = Counter(sent.repo.lower() for sent in world.accepted.values())

    def all_finished() -> bool:
        for repo in per_repo:
            counts = world.stack.stats(client, repo)["counts"]
            if counts.get("pending", 0) or counts.get("active", 0):
                return False
        return True

    wait_for("every job to finish", all_finished, 300, 1.0)
    for job_id, sent in world.accepted.items():
        job = world.stack.job(client, job_id)  # whole and readable through the API
        held = (job["event"], job["repo"], job["sha"], job["ref"], job["sender"])
        wanted = (sent.event, sent.repo.lower(), sent.sha, sent.ref, sent.sender)
        assert all(w in (UNCHECKED, h) for h, w in zip(held, wanted, strict=True)), (
            f"PRODUCT BUG: the job does not hold what was sent: {held} vs {sent}"
        )
        assert job["status"] == "passed" and job["history"], (
            f"PRODUCT BUG: an accepted job did not pass: {job} from {sent.request}"
        )

    # The counters count exactly the jobs; one trigger guard per job; nothing else written.
    repos = scan(world, "repos")
    guards = [item for item in repos if item["repo"]["S"].startswith("trigger#")]
    counters = {item["repo"]["S"]: item for item in repos if item not in guards}
    assert len(guards) == len(jobs), (len(guards), len(jobs))
    assert set(counters) == set(per_repo), (sorted(counters), sorted(per_repo))
    assert sum(per_repo.values()) == len(jobs)
    for repo, count in per_repo.items():
        stats = world.stack.stats(client, repo)
        assert stats["total"] == count, (repo, stats, count)
        listed = client.get(f"{world.url}/repos/{repo}/jobs", params={"limit": 100})
        assert listed.status_code == 200, listed.text
    # The repositories named only by unsigned deliveries have nothing at all.
    for repo in sorted(world.unsigned_repos):
        answer = client.get(f"{world.url}/repos/{quote(repo, safe='/')}/stats")
        assert answer.status_code in (400, 404), (repo, answer.status_code, answer.text)

    world.assert_memory_bounded()
    assert len(world.busy) <= MAX_BUSY, world.busy
    # The stack's own access log (it sees what no client can: an answer sent without a status
    # line, as the 505s of bad HTTP versions were before a493116): no 5xx but the busy 503s
    # the client saw.
    log = (world.stack.workdir / "stack.log").read_text(errors="replace")
    served = Counter(
        line.rsplit(" ", 1)[-1]
        for line in log.split("\n")
        if " scheduler.local.http_server " in line
    )
    server_errors = {
        code: count for code, count in served.items() if code.isdigit() and int(code) >= 500
    }
    assert server_errors.pop("503", 0) <= len(world.busy), served
    assert not server_errors, f"PRODUCT BUG: 5xx in the stack's access log: {server_errors}"
    if FULL and set(SIZES) <= world.tests_run:
        assert world.total_requests >= FULL_TOTAL, world.total_requests
    for sign_of_a_crash in ("Traceback", "unexpected error", "request handling failed"):
        assert sign_of_a_crash not in log, (
            f"PRODUCT BUG: {sign_of_a_crash!r} in the stack's log:\n"
            + log[log.index(sign_of_a_crash) - 2000 :][:6000]
        )
    print(
        f"\n[hostile] total: {world.total_requests} requests; {len(jobs)} jobs, all from"
        f" validly signed deliveries answered 202; busy 503s {len(world.busy)};"
        f" rss after warm-up {world.rss_baseline / MB:.0f} MB, peak {world.rss_peak / MB:.0f} MB"
    )
