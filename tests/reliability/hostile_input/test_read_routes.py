"""Every read route sent raw with hostile paths, methods, versions and query strings
(cursors tampered with or forged with the built-in key)."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from hypothesis import given
from hypothesis import strategies as st

from hostile_input.payloads import HOSTILE_TEXT
from hostile_input.world import (
    READ_REPO,
    SIGNED_REPOS,
    VERSIONS,
    Answer,
    World,
    declares_http_0_9,
    hypothesis_settings,
    show,
)
from scheduler.db.queries import CursorCodec, JobFilter, Position
from state_machines import JobStatus

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
