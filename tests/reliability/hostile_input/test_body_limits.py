"""Bodies at the server's size limit: exactly it, a byte under and a byte over."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from harness import SECRET

from hostile_input.payloads import what_was_asked
from hostile_input.world import MAX_BODY, SIGNED_REPOS, World
from scheduler.github.signature import sign


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
