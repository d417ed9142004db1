"""``POST /webhook`` sent raw with hostile headers: missing, duplicated, huge, odd bytes
and names, folded lines, a ``Content-Length`` that lies, chunked bodies, ``Expect``."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass

from harness import SECRET
from hypothesis import given
from hypothesis import strategies as st

from hostile_input.payloads import set_path, what_was_asked
from hostile_input.world import (
    BASES,
    HEADERS_REPO,
    MAX_BODY,
    SHA_PATH,
    World,
    hypothesis_settings,
    show,
)
from scheduler.github.signature import sign
from scheduler.local.http_server import MAX_HEADER_BYTES

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
