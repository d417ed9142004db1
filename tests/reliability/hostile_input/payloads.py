"""Hostile webhook payloads: JSON that ``json.dumps`` cannot write, hostile values, the
generated deliveries (validly or badly signed) and what a delivery asked for."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode

from harness import SECRET
from hypothesis import strategies as st

from hostile_input.world import (
    BASES,
    BUILD_ACTIONS,
    MB,
    SHA_PATH,
    SHA_SLOT,
    SIGNED_REPOS,
    TEMPLATES,
    UNCHECKED,
    UNSIGNED_OWNER,
    Sent,
)
from scheduler.github.signature import sign

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
