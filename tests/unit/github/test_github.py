"""Signature check and payload parsing, on GitHub's own test vector and example payloads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from scheduler.errors import SignatureInvalid, UnsupportedMediaType, WebhookRejected
from scheduler.github.clone_urls import github_host
from scheduler.github.payload import (
    BuildRequest,
    Delivery,
    Ignored,
    Ping,
    interpret,
    job_id_for,
    parse_delivery,
)
from scheduler.github.signature import sign, verify_signature

EVENTS = Path(__file__).resolve().parents[2] / "events"
DELIVERY = "72d3162e-cc78-11e3-81ab-4c9367dc0958"

# https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
VECTOR_SECRET = b"It's a Secret to Everybody"
VECTOR_BODY = b"Hello, World!"
VECTOR_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def payload(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((EVENTS / f"{name}.json").read_text())
    return document


def headers(event: str, content_type: str = "application/json") -> dict[str, str]:
    return {"x-github-event": event, "x-github-delivery": DELIVERY, "content-type": content_type}


def delivery(event: str, body: dict[str, Any]) -> Delivery:
    return Delivery(event=event, delivery_id=DELIVERY, payload=body)


# -- signature ---------------------------------------------------------------------------------


def test_githubs_published_test_vector() -> None:
    assert sign(VECTOR_SECRET, VECTOR_BODY) == VECTOR_SIGNATURE
    verify_signature(VECTOR_SECRET, VECTOR_BODY, VECTOR_SIGNATURE)
    verify_signature(VECTOR_SECRET, VECTOR_BODY, VECTOR_SIGNATURE.upper().replace("SHA", "sha"))


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "missing"),
        ("", "missing"),
        ("757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17", "malformed"),
        ("sha1=757107ea0eb2509fc211221cce984b8a37570b6d", "malformed"),
        ("sha256=757107ea", "malformed"),
        ("sha256=" + "z" * 64, "malformed"),
        ("sha256=" + "0" * 64, "does not match"),
        (sign(VECTOR_SECRET, b"Hello, World?"), "does not match"),
        (sign(b"another secret", VECTOR_BODY), "does not match"),
    ],
)
def test_bad_signatures_are_refused(header: str | None, message: str) -> None:
    with pytest.raises(SignatureInvalid, match=message) as caught:
        verify_signature(VECTOR_SECRET, VECTOR_BODY, header)
    assert caught.value.http_status == 401
    assert "Secret" not in str(caught.value)


# -- headers and body --------------------------------------------------------------------------


def test_a_json_delivery_is_parsed() -> None:
    body = (EVENTS / "push.branch.json").read_bytes()
    parsed = parse_delivery(headers("push", "application/json; charset=utf-8"), body)
    assert (parsed.event, parsed.delivery_id) == ("push", DELIVERY)
    assert parsed.payload == payload("push.branch")


def test_a_form_encoded_delivery_is_parsed() -> None:
    body = urlencode({"payload": (EVENTS / "ping.json").read_text()}).encode()
    parsed = parse_delivery(headers("ping", "application/x-www-form-urlencoded"), body)
    assert parsed.payload == payload("ping")


@pytest.mark.parametrize(
    ("changes", "body", "error", "message"),
    [
        ({"x-github-event": None}, b"{}", WebhookRejected, "missing X-GitHub-Event"),
        ({"x-github-delivery": None}, b"{}", WebhookRejected, "missing X-GitHub-Delivery"),
        ({"x-github-delivery": "a b"}, b"{}", WebhookRejected, "malformed X-GitHub-Delivery"),
        ({"x-github-delivery": "a" * 65}, b"{}", WebhookRejected, "malformed X-GitHub-Delivery"),
        ({"x-github-event": "launch_missiles"}, b"{}", WebhookRejected, "unknown event"),
        ({}, b"{not json", WebhookRejected, "malformed JSON"),
        ({}, b"\xff\xfe{}", WebhookRejected, "malformed JSON"),
        ({}, b'{"a": NaN}', WebhookRejected, "malformed JSON"),
        ({}, b"[" * 100_000 + b"]" * 100_000, WebhookRejected, "malformed JSON"),
        ({}, b"[1, 2]", WebhookRejected, "must be an object, not an array"),
        ({}, b'"text"', WebhookRejected, "must be an object, not a string"),
        ({"content-type": "text/plain"}, b"{}", UnsupportedMediaType, "text/plain"),
        ({"content-type": None}, b"{}", UnsupportedMediaType, "none"),
        (
            {"content-type": "application/x-www-form-urlencoded"},
            b"other=1",
            WebhookRejected,
            "'payload' field",
        ),
    ],
)
def test_malformed_deliveries_are_refused(
    changes: dict[str, str | None], body: bytes, error: type[Exception], message: str
) -> None:
    given = {**headers("ping"), **changes}
    with pytest.raises(error, match=message):
        parse_delivery({k: v for k, v in given.items() if v is not None}, body)


# -- payloads ----------------------------------------------------------------------------------


def test_ping() -> None:
    assert interpret(delivery("ping", payload("ping"))) == Ping(payload("ping")["zen"])


def test_push_to_a_branch_builds_after() -> None:
    body = payload("push.branch")
    assert interpret(delivery("push", body)) == BuildRequest(
        delivery_id=DELIVERY,
        repo="codertocat/hello-world",  # canonical: GitHub names are case-insensitive,
        event="push",
        sha=body["after"],
        ref="refs/heads/master",
        branch="master",
        trigger="refs/heads/master",
        sender="Codertocat",
        clone_url="https://github.com/Codertocat/Hello-World.git",
    )


def test_push_of_a_tag_is_a_tag_build_request() -> None:
    result = interpret(delivery("push", payload("push.tag")))
    assert isinstance(result, BuildRequest)
    assert (result.tag, result.branch) == ("simple-tag", None)


def test_deletions_make_no_job() -> None:
    result = interpret(delivery("push", payload("push.deleted")))
    assert isinstance(result, Ignored) and "deletes" in result.reason
    branch_deleted = {**payload("push.deleted"), "ref": "refs/heads/gone", "deleted": None}
    assert isinstance(interpret(delivery("push", branch_deleted)), Ignored)


@pytest.mark.parametrize("action", ["opened", "synchronize", "reopened"])
def test_pull_request_actions_that_build(action: str) -> None:
    body = payload(f"pull_request.{action}")
    result = interpret(delivery("pull_request", body))
    assert isinstance(result, BuildRequest)
    assert result.sha == body["pull_request"]["head"]["sha"]
    assert (result.pr_number, result.ref, result.trigger) == (2, "refs/pull/2/head", "pr#2")
    assert (result.branch, result.base_branch) == ("changes", "master")


@pytest.mark.parametrize(
    ("url", "kept"),
    [
        ("https://github.com/Codertocat/Hello-World.git", True),
        ("https://github.com/Codertocat/Hello-World", True),
        ("https://GitHub.com/codertocat/hello-world.git", True),  # both are case-insensitive
        # A signed payload naming another host would have the checkout log in there.
        ("https://attacker.example/x.git", False),
        ("https://attacker.example/Codertocat/Hello-World.git", False),
        ("https://github.com.attacker.example/Codertocat/Hello-World.git", False),
        ("https://github.com:8443/Codertocat/Hello-World.git", False),
        ("https://ghe.example.com:8443/org/repo.git", False),  # not the configured host
        ("https://github.com/Codertocat/Other.git", False),  # not the payload's repository
        ("https://github.com/Codertocat/Hello-World/../../o/r.git", False),
        ("http://github.com/Codertocat/Hello-World.git", False),
        ("/srv/git/app.git", False),  # a local path: only an operator may name one
        ("file:///etc", False),
        ("ext::sh -c touch% /tmp/pwned", False),
        ("ssh://git@github.com/Codertocat/Hello-World.git", False),
        ("https://user:token@github.com/Codertocat/Hello-World.git", False),
        ("https://github.com/Codertocat/Hello-World.git?x=1", False),
        ("https://github.com/Codertocat/Hello-World.git\n", False),
        ("https://github.com/" + "a" * 600, False),
    ],
)
def test_only_the_repositorys_own_github_url_is_taken_from_a_payload(url: str, kept: bool) -> None:
    body = payload("push.branch")
    body["repository"] = {**body["repository"], "clone_url": url}
    result = interpret(delivery("push", body))
    assert isinstance(result, BuildRequest)
    assert result.clone_url == (url if kept else None)


def test_a_pull_requests_clone_url_is_its_base_repositorys_on_github() -> None:
    body = payload("pull_request.opened")
    result = interpret(delivery("pull_request", body))
    assert isinstance(result, BuildRequest)
    assert result.clone_url == "https://github.com/Codertocat/Hello-World.git"
    body["repository"] = {**body["repository"], "clone_url": "https://attacker.example/x.git"}
    result = interpret(delivery("pull_request", body))
    assert isinstance(result, BuildRequest) and result.clone_url is None


def test_an_enterprise_payloads_clone_url_is_taken_on_the_configured_host() -> None:
    body = payload("push.branch")
    body["repository"] = {
        **body["repository"],
        "clone_url": "https://ghe.example/Codertocat/Hello-World.git",
    }
    on_ghe = interpret(delivery("push", body), github_host="ghe.example")
    on_github = interpret(delivery("push", body))
    assert isinstance(on_ghe, BuildRequest) and isinstance(on_github, BuildRequest)
    assert on_ghe.clone_url == "https://ghe.example/Codertocat/Hello-World.git"
    assert on_github.clone_url is None


@pytest.mark.parametrize(
    ("api_url", "host"),
    [
        ("https://api.github.com", "github.com"),
        ("https://api.github.com/", "github.com"),
        ("https://ghe.example/api/v3", "ghe.example"),
        ("https://GHE.example:8443/api/v3/", "ghe.example:8443"),
        ("https://api.acme.ghe.com", "acme.ghe.com"),
        ("http://127.0.0.1:9999", "127.0.0.1:9999"),
    ],
)
def test_the_github_host_is_derived_from_the_api_url(api_url: str, host: str) -> None:
    assert github_host(api_url) == host


def test_a_clone_url_of_the_wrong_type_is_refused() -> None:
    body = payload("push.branch")
    body["repository"] = {**body["repository"], "clone_url": ["https://github.com/o/r"]}
    with pytest.raises(WebhookRejected, match=r"repository\.clone_url"):
        interpret(delivery("push", body))


def test_other_pull_request_actions_and_events_make_no_job() -> None:
    closed = interpret(delivery("pull_request", payload("pull_request.closed")))
    assert isinstance(closed, Ignored) and "closed" in closed.reason
    issues = interpret(delivery("issues", payload("issues.opened")))
    assert issues == Ignored("event issues makes no job")


@pytest.mark.parametrize(
    ("event", "name", "change", "message"),
    [
        ("push", "push.branch", {"repository": "Codertocat/Hello-World"}, "must be an object"),
        ("push", "push.branch", {"repository": None}, "missing field 'repository'"),
        ("push", "push.branch", {"after": 42}, "'after' must be a string"),
        ("push", "push.branch", {"after": "abc"}, "40-character hex"),
        ("push", "push.branch", {"ref": ["refs/heads/x"]}, "'ref' must be a string"),
        ("push", "push.branch", {"deleted": "no"}, "'deleted' must be a boolean"),
        ("push", "push.branch", {"sender": "octocat"}, "'sender' must be an object"),
        ("pull_request", "pull_request.opened", {"number": "2"}, "'number' must be an integer"),
        ("pull_request", "pull_request.opened", {"number": True}, "'number' must be an integer"),
        ("pull_request", "pull_request.opened", {"number": -1}, "positive"),
        ("pull_request", "pull_request.opened", {"pull_request": []}, "must be an object"),
        ("pull_request", "pull_request.opened", {"action": 1}, "'action' must be a string"),
    ],
)
def test_fields_of_the_wrong_type_are_refused(
    event: str, name: str, change: dict[str, Any], message: str
) -> None:
    with pytest.raises(WebhookRejected, match=message):
        interpret(delivery(event, {**payload(name), **change}))


def test_repository_name_must_be_owner_slash_name() -> None:
    body = payload("push.branch")
    body["repository"]["full_name"] = "../etc"
    with pytest.raises(WebhookRejected, match="OWNER/NAME"):
        interpret(delivery("push", body))


def test_head_sha_of_wrong_type_is_refused() -> None:
    body = payload("pull_request.opened")
    body["pull_request"]["head"]["sha"] = None
    with pytest.raises(WebhookRejected, match=r"pull_request\.head\.sha"):
        interpret(delivery("pull_request", body))


def test_job_id_and_trigger_key_are_deterministic() -> None:
    first = interpret(delivery("push", payload("push.branch")))
    again = interpret(
        Delivery(event="push", delivery_id="another-delivery", payload=payload("push.branch"))
    )
    assert isinstance(first, BuildRequest) and isinstance(again, BuildRequest)
    assert first.job_id == job_id_for(DELIVERY) != again.job_id
    assert first.trigger_key == again.trigger_key  # same repo, event, ref and sha
    other_ref = interpret(delivery("push", {**payload("push.branch"), "ref": "refs/heads/other"}))
    assert isinstance(other_ref, BuildRequest) and other_ref.trigger_key != first.trigger_key


def test_a_reopen_is_named_by_its_signed_updated_at_never_by_its_delivery_id() -> None:
    body = payload("pull_request.reopened")
    first = interpret(delivery("pull_request", body))
    replayed = interpret(Delivery(event="pull_request", delivery_id="fresh-id", payload=body))
    assert isinstance(first, BuildRequest) and isinstance(replayed, BuildRequest)
    assert first.rebuild == "reopened@" + body["pull_request"]["updated_at"]
    assert replayed.trigger_key == first.trigger_key
    body["pull_request"]["updated_at"] = 5
    with pytest.raises(WebhookRejected, match=r"pull_request\.updated_at"):
        interpret(delivery("pull_request", body))


# -- pull requests from forks ------------------------------------------------------------------


def from_fork(body: dict[str, Any], head_repo: Any) -> dict[str, Any]:
    """``body`` with its pull request's head repository replaced by ``head_repo``."""
    pull = body["pull_request"]
    return {**body, "pull_request": {**pull, "head": {**pull["head"], "repo": head_repo}}}


@pytest.mark.parametrize("action", ["opened", "synchronize", "reopened"])
def test_a_pull_request_from_its_own_repository_is_no_fork(action: str) -> None:
    result = interpret(delivery("pull_request", payload(f"pull_request.{action}")))
    assert isinstance(result, BuildRequest) and result.fork is False


@pytest.mark.parametrize(
    ("head_repo", "fork"),
    [
        ({"full_name": "Codertocat/Hello-World"}, False),
        ({"full_name": "codertocat/HELLO-world"}, False),  # GitHub's names ignore case
        ({"full_name": "Mallory/Hello-World"}, True),
        ({"full_name": "Codertocat/Hello-World-fork"}, True),
        (None, True),  # the fork was deleted: GitHub sends head.repo null
        ({"id": 1}, True),  # a head repository without a name is not shown to be the base
    ],
)
def test_a_pull_request_is_from_a_fork_when_its_head_repository_is_another(
    head_repo: Any, fork: bool
) -> None:
    body = from_fork(payload("pull_request.opened"), head_repo)
    result = interpret(delivery("pull_request", body))
    assert isinstance(result, BuildRequest) and result.fork is fork
    # The fork changes nothing else: the same build of the base repository's PR ref.
    assert (result.repo, result.ref, result.pr_number) == (
        "codertocat/hello-world",
        "refs/pull/2/head",
        2,
    )


def test_a_push_is_never_a_fork_and_a_head_repository_of_the_wrong_type_is_refused() -> None:
    pushed = interpret(delivery("push", payload("push.branch")))
    assert isinstance(pushed, BuildRequest) and pushed.fork is False
    with pytest.raises(WebhookRejected, match=r"pull_request\.head\.repo\b"):
        interpret(delivery("pull_request", from_fork(payload("pull_request.opened"), "x/y")))
    named = from_fork(payload("pull_request.opened"), {"full_name": 7})
    with pytest.raises(WebhookRejected, match=r"pull_request\.head\.repo\.full_name"):
        interpret(delivery("pull_request", named))
