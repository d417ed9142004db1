"""The hostile-input suite's world: one ``scheduler up``, the raw and httpx senders,
the invariants every answer must hold, and the books of what validly signed deliveries made."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import select
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
from harness import SECRET, LocalStackProcess
from hypothesis import HealthCheck, settings

from scheduler.settings import DEFAULT_WEBHOOK_MAX_BODY_BYTES

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

EVENTS = Path(__file__).resolve().parents[2] / "events"
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


# -- request lines: the versions sent, and which the server answers HTTP/0.9 style ------

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
