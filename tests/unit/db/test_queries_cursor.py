"""The pagination cursor: opaque, tamper-evident, bound to its repository and filters."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from scheduler.db.queries import (
    CursorCodec,
    JobFilter,
    Position,
    _b64encode,
    parse_limit,
    parse_status,
    validate_repo,
)
from scheduler.errors import InvalidCursor
from state_machines import JobStatus

KEY = b"unit-test-key"
REPO = "octo-org/api"
POSITION = Position(job_id="0b1f8a3e-delivery", received_at=1_700_000_123_456)
NO_FILTER = JobFilter()


def codec() -> CursorCodec:
    return CursorCodec(KEY)


def signed(payload: bytes, key: bytes = KEY) -> str:
    """A cursor with a valid MAC over an arbitrary payload (what a key holder could make)."""
    mac = hmac.new(key, b"scheduler.queries.cursor\x00" + payload, hashlib.sha256).digest()[:16]
    return f"{_b64encode(payload)}.{_b64encode(mac)}"


def test_round_trip_and_start_key() -> None:
    cursor = codec().encode(REPO, NO_FILTER, POSITION)
    assert codec().decode(cursor, REPO, NO_FILTER) == POSITION
    assert POSITION.start_key(REPO) == {
        "job_id": {"S": "0b1f8a3e-delivery"},
        "repo": {"S": REPO},
        "received_at": {"N": "1700000123456"},
    }
    # Opaque: URL-safe characters only, no readable key material at a glance.
    assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


def test_filters_are_part_of_the_cursor() -> None:
    failed = JobFilter(status=JobStatus.FAILED, branch="main")
    cursor = codec().encode(REPO, failed, POSITION)
    assert codec().decode(cursor, REPO, JobFilter(status=JobStatus.FAILED, branch="main"))
    with pytest.raises(InvalidCursor, match="other filters"):
        codec().decode(cursor, REPO, JobFilter(status=JobStatus.FAILED))


def test_a_cursor_of_another_repository_is_refused() -> None:
    cursor = codec().encode("someone/else", NO_FILTER, POSITION)
    with pytest.raises(InvalidCursor, match="another repository"):
        codec().decode(cursor, REPO, NO_FILTER)


def test_every_single_character_change_is_detected() -> None:
    cursor = codec().encode(REPO, NO_FILTER, POSITION)
    for index in range(len(cursor)):
        if cursor[index] == ".":
            continue
        replacement = "A" if cursor[index] != "A" else "B"
        tampered = cursor[:index] + replacement + cursor[index + 1 :]
        with pytest.raises(InvalidCursor):
            codec().decode(tampered, REPO, NO_FILTER)


def test_a_cursor_of_another_key_is_refused() -> None:
    cursor = CursorCodec(b"other-deployment").encode(REPO, NO_FILTER, POSITION)
    with pytest.raises(InvalidCursor, match="altered or issued by another deployment"):
        codec().decode(cursor, REPO, NO_FILTER)


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "no-dot",
        "a.b.c",
        "has space.abc",
        "x" * 3000 + ".abc",
        base64.urlsafe_b64encode(b'{"v":1}').decode(),
        "!!!.???",
        "A.A",  # base64 of a lone character cannot decode
    ],
)
def test_garbage_is_refused(cursor: str) -> None:
    with pytest.raises(InvalidCursor):
        codec().decode(cursor, REPO, NO_FILTER)


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        json.dumps({"v": 2, "r": REPO, "f": [None] * 4, "k": ["j", 1]}).encode(),
        json.dumps({"v": 1, "r": REPO, "f": [None] * 4, "k": ["j", 1], "x": 1}).encode(),
        json.dumps({"v": 1, "r": REPO, "f": [None] * 4, "k": ["", 1]}).encode(),
        json.dumps({"v": 1, "r": REPO, "f": [None] * 4, "k": ["j", -1]}).encode(),
        json.dumps({"v": 1, "r": REPO, "f": [None] * 4, "k": ["j", 1.5]}).encode(),
        json.dumps({"v": 1, "r": REPO, "f": [None] * 4, "k": ["j", True]}).encode(),
        json.dumps({"v": 1, "r": REPO, "f": [None] * 4, "k": [1, 1]}).encode(),
        json.dumps({"v": 1, "r": REPO, "f": [None] * 4, "k": ["j" * 300, 1]}).encode(),
        json.dumps({"v": 1, "r": REPO, "f": [None] * 4, "k": {"job_id": "j"}}).encode(),
        json.dumps({"v": 1, "r": REPO, "f": None, "k": ["j", 1]}).encode(),
        json.dumps({"v": 1, "r": 7, "f": [None] * 4, "k": ["j", 1]}).encode(),
    ],
)
def test_a_well_signed_but_malformed_payload_is_refused(payload: bytes) -> None:
    with pytest.raises(InvalidCursor, match="malformed"):
        codec().decode(signed(payload), REPO, NO_FILTER)


def test_input_validation() -> None:
    assert parse_limit(None) == 20 and parse_limit("5") == 5
    assert parse_status("failed") is JobStatus.FAILED and parse_status("") is None
    assert validate_repo("octo-org/api.js") == "octo-org/api.js"
    for bad in ("octo-org", "/api", "a/b/c", "-x/y", "x/" + "y" * 101, "x y/z"):
        with pytest.raises(Exception, match="OWNER/NAME"):
            validate_repo(bad)


def test_only_the_canonical_spelling_is_accepted() -> None:
    payload, mac = codec().encode(REPO, NO_FILTER, POSITION).split(".")
    # 16 MAC bytes are 22 base64 characters; the last one carries 4 unused bits.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    sibling = alphabet[alphabet.index(mac[-1]) ^ 1]
    assert base64.urlsafe_b64decode(mac[:-1] + sibling + "==") == base64.urlsafe_b64decode(
        mac + "=="
    )
    with pytest.raises(InvalidCursor):
        codec().decode(f"{payload}.{mac[:-1]}{sibling}", REPO, NO_FILTER)
