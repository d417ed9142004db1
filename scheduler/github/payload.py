"""GitHub deliveries, pure: header and body checks, payload parsing.

Nothing here does I/O or knows about jobs tables: a delivery (headers + raw body) goes in, and
out comes either a typed rejection (:class:`~scheduler.errors.WebhookRejected` and its
subclasses), or a value saying what the delivery asks for: a :class:`BuildRequest` (a commit to
build), a :class:`Ping` or an :class:`Ignored` with its reason. What a job *runs* never comes
from here: payload values are data only.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs

from scheduler.errors import UnsupportedMediaType, WebhookRejected
from scheduler.github.clone_urls import DEFAULT_GITHUB_HOST, allowed_clone_url
from scheduler.repo_name import canonical_repo

if TYPE_CHECKING:
    from scheduler.github.app_events import AppRequest

__all__ = [
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "KNOWN_EVENTS",
    "BuildRequest",
    "ClosedPullRequest",
    "Delivery",
    "Ignored",
    "Ping",
    "interpret",
    "job_id_for",
    "parse_delivery",
]

EVENT_HEADER = "x-github-event"
DELIVERY_HEADER = "x-github-delivery"
JOB_ID_PREFIX = "gh-"
ZERO_SHA = "0" * 40
BUILD_ACTIONS = frozenset({"opened", "synchronize", "reopened"})
# A GitHub App's own events (read only in App mode: scheduler.github.app_events).
APP_EVENT_NAMES = frozenset(
    {"installation", "installation_repositories", "check_suite", "check_run"}
)

# Webhook events GitHub documents. A delivery naming one we do not build is answered 202 with
# a reason; a name outside this list is not a GitHub event at all and is refused (400).
KNOWN_EVENTS = frozenset(
    {
        "branch_protection_configuration",
        "branch_protection_rule",
        "check_run",
        "check_suite",
        "code_scanning_alert",
        "commit_comment",
        "create",
        "custom_property",
        "custom_property_values",
        "delete",
        "dependabot_alert",
        "deploy_key",
        "deployment",
        "deployment_protection_rule",
        "deployment_review",
        "deployment_status",
        "discussion",
        "discussion_comment",
        "fork",
        "github_app_authorization",
        "gollum",
        "installation",
        "installation_repositories",
        "installation_target",
        "issue_comment",
        "issue_dependencies",
        "issues",
        "label",
        "marketplace_purchase",
        "member",
        "membership",
        "merge_group",
        "meta",
        "milestone",
        "org_block",
        "organization",
        "package",
        "page_build",
        "personal_access_token_request",
        "ping",
        "project",
        "project_card",
        "project_column",
        "projects_v2",
        "projects_v2_item",
        "projects_v2_status_update",
        "public",
        "pull_request",
        "pull_request_review",
        "pull_request_review_comment",
        "pull_request_review_thread",
        "push",
        "registry_package",
        "release",
        "repository",
        "repository_advisory",
        "repository_dispatch",
        "repository_import",
        "repository_ruleset",
        "repository_vulnerability_alert",
        "secret_scanning_alert",
        "secret_scanning_alert_location",
        "secret_scanning_scan",
        "security_advisory",
        "security_and_analysis",
        "sponsorship",
        "star",
        "status",
        "sub_issues",
        "team",
        "team_add",
        "watch",
        "workflow_dispatch",
        "workflow_job",
        "workflow_run",
    }
)

# GitHub's delivery ids are GUIDs; accept that shape (any case) and nothing longer, because
# the id becomes part of a DynamoDB key and of log lines.
_DELIVERY_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z-]{0,63}")
_SHA = re.compile(r"[0-9a-f]{40}")

# Caps on the payload's text that reaches a job item (and from there log lines, the CLI and a
# run's environment). A job item must stay far below DynamoDB's 400 KB item limit whatever a
# signed payload holds, and a value over a cap is refused (400), never cut: a shortened ref
# would name another branch.
# - Git keeps refs as files (loose refs), so one component of a ref is a file name of at most
#   255 bytes (NAME_MAX on every common file system); GitHub refuses longer components too.
# - A whole ref gets 1024 bytes: four maximal components, far beyond any real branch, and
#   DynamoDB's limit for a sort key, should a ref or branch ever become one.
# - GitHub logins are at most 39 characters (an app's bot login adds "[bot]"); 100 is generous
#   (and was already the length kept).
# - Pull request numbers count a repository's issues and PRs, nowhere near 2**31; without a cap
#   a JSON integer of any size would reach a DynamoDB number (at most 38 digits) and fail there.
REF_MAX_BYTES = 1024
REF_COMPONENT_MAX_BYTES = 255
LOGIN_MAX_BYTES = 100
PR_NUMBER_MAX = 2**31 - 1
# A timestamp ("2019-05-15T15:20:33Z"); it only reaches a hash, but stays bounded text anyway.
UPDATED_AT_MAX_BYTES = 64
# C0 controls (NUL included) and DEL: never in a git ref or a GitHub login, and a NUL cannot be
# passed to a run as an environment variable.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_T = TypeVar("_T")
_JSON_TYPES = frozenset({"application/json"})
_FORM_TYPES = frozenset({"application/x-www-form-urlencoded"})


# -- results ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    """A delivery whose headers and body are well formed (its signature already checked)."""

    event: str
    delivery_id: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class BuildRequest:
    """A commit GitHub asks us to build; everything a job needs from the payload, as data.

    ``trigger`` names what caused the build: ``ref`` for a push, ``pr#N`` for a pull request.
    Two deliveries with the same repository, event, trigger and sha ask for the same build,
    unless one is a ``rebuild``: a request to build that commit again (a reopened pull request),
    named by fields of the signed body, so only another such event asks again. Never by the
    ``X-GitHub-Delivery`` header: it is not signed, and a replay of one signed body under fresh
    delivery ids would otherwise make a job each time.
    """

    delivery_id: str
    repo: str
    event: str
    sha: str
    ref: str
    branch: str | None
    trigger: str
    pr_number: int | None = None
    sender: str | None = None
    tag: str | None = None
    base_branch: str | None = None
    # What asks to build the commit again, from the signed body: ``reopened@<updated_at>``
    # for a reopened pull request (each close and reopen moves ``pull_request.updated_at``).
    rebuild: str | None = None
    # The repository's https clone URL on the GitHub host (the base repository's for a pull
    # request, where GitHub keeps refs/pull/N/head); None when the payload names no such URL.
    clone_url: str | None = None
    # A pull request from a fork: its head repository is not the base repository (or was
    # deleted). Someone else's code: it waits for approval by default, never gets secrets.
    fork: bool = False

    @property
    def job_id(self) -> str:
        return job_id_for(self.delivery_id)

    @property
    def trigger_key(self) -> str:
        """A fixed-size key naming (repository, event, trigger, sha), for the second guard.

        A rebuild's key names the rebuild too (the action and the pull request's
        ``updated_at``), so no earlier job of the commit holds it, while a replay of the same
        body under any delivery id finds the job it made; a redelivery (same delivery id)
        finds its job by the job id first.
        """
        parts = [self.repo.lower(), self.event, self.trigger, self.sha]
        if self.rebuild is not None:
            parts.append(f"rebuild:{self.rebuild}")
        identity = "\n".join(parts)
        return hashlib.sha256(identity.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Ping:
    zen: str | None = None


@dataclass(frozen=True, slots=True)
class Ignored:
    """A well-formed delivery that makes no job; ``reason`` says why (answered 202)."""

    reason: str


@dataclass(frozen=True, slots=True)
class ClosedPullRequest(Ignored):
    """A pull request was closed: it makes no job, and its jobs waiting for an approval
    nobody will give now are withdrawn."""

    repo: str = ""
    pr_number: int = 0


def job_id_for(delivery_id: str) -> str:
    """The job id of a delivery: a redelivery (same ``X-GitHub-Delivery``) finds its job."""
    return JOB_ID_PREFIX + delivery_id


# -- headers and body -------------------------------------------------------------------------


def parse_delivery(headers: Mapping[str, str], body: bytes) -> Delivery:
    """Check the event and delivery headers, the content type and the body; no signature.

    ``headers`` must have lower-case names (HTTP header names are case-insensitive; both the
    Lambda event and the local server give them lower-cased).
    """
    event = _header(headers, EVENT_HEADER, "X-GitHub-Event")
    if event not in KNOWN_EVENTS:
        raise WebhookRejected(f"unknown event {_quote(event)} in X-GitHub-Event")
    delivery_id = _header(headers, DELIVERY_HEADER, "X-GitHub-Delivery")
    if _DELIVERY_ID.fullmatch(delivery_id) is None:
        raise WebhookRejected(
            "malformed X-GitHub-Delivery header: expected a GUID (letters, digits, '-', <= 64)"
        )
    payload = _payload(headers.get("content-type", ""), body)
    return Delivery(event=event, delivery_id=delivery_id, payload=payload)


def _header(headers: Mapping[str, str], name: str, shown: str) -> str:
    value = headers.get(name, "").strip()
    if not value:
        raise WebhookRejected(f"missing {shown} header")
    return value


def _payload(content_type: str, body: bytes) -> dict[str, Any]:
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type in _FORM_TYPES:
        # GitHub's form option: the JSON document is the `payload` field, url-encoded.
        try:
            fields = parse_qs(body.decode("ascii"), strict_parsing=True, max_num_fields=8)
        except (UnicodeDecodeError, ValueError) as exc:
            raise WebhookRejected(f"malformed form body: {exc}") from exc
        values = fields.get("payload")
        if not values or len(values) != 1:
            raise WebhookRejected("form body must have exactly one 'payload' field")
        text: str | bytes = values[0]
    elif media_type in _JSON_TYPES:
        text = body
    else:
        shown = _quote(media_type) if media_type else "none"
        raise UnsupportedMediaType(
            f"unsupported content type {shown}: use application/json"
            " (or application/x-www-form-urlencoded)"
        )
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and bad UTF-8 are ValueErrors
        raise WebhookRejected(f"malformed JSON body: {_short(exc)}") from exc
    if not isinstance(document, dict):
        raise WebhookRejected(f"JSON body must be an object, not {_json_type(document)}")
    return document


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# -- payloads ---------------------------------------------------------------------------------


def interpret(
    delivery: Delivery, *, github_host: str = DEFAULT_GITHUB_HOST, app_events: bool = False
) -> BuildRequest | Ping | Ignored | AppRequest:
    """What ``delivery`` asks for. Raises :class:`WebhookRejected` for fields of wrong types.

    ``github_host`` is the only host a payload's clone URL may name (see
    :func:`scheduler.github.clone_urls.github_host`). ``app_events``: a GitHub App is
    configured, so its own events (check runs, check suites, installations) are read too;
    without one they make nothing, as before.
    """
    if app_events and delivery.event in APP_EVENT_NAMES:
        from scheduler.github.app_events import interpret_app_event  # it builds on this module

        return interpret_app_event(delivery, github_host=github_host)
    if delivery.event == "ping":
        zen = delivery.payload.get("zen")
        return Ping(zen if isinstance(zen, str) else None)
    if delivery.event == "push":
        return _push(delivery, github_host)
    if delivery.event == "pull_request":
        return _pull_request(delivery, github_host)
    return Ignored(f"event {delivery.event} makes no job")


def _push(delivery: Delivery, github_host: str) -> BuildRequest | Ignored:
    payload = delivery.payload
    repo = _repo(payload)
    ref = _ref(_field(payload, "ref", str), "ref")
    after = _field(payload, "after", str)
    deleted = _optional(payload, "deleted", bool)
    if deleted or after == ZERO_SHA:
        return Ignored(f"push deletes {ref}: nothing to build")
    sha = _sha(after, "after")
    branch = tag = None
    if ref.startswith("refs/heads/"):
        branch = ref.removeprefix("refs/heads/")
    elif ref.startswith("refs/tags/"):
        tag = ref.removeprefix("refs/tags/")
    else:
        return Ignored(f"push to {ref} is neither a branch nor a tag")
    return BuildRequest(
        delivery_id=delivery.delivery_id,
        repo=repo,
        event="push",
        sha=sha,
        ref=ref,
        branch=branch,
        tag=tag,
        trigger=ref,
        sender=_sender(payload),
        clone_url=_clone_url(payload, repo, github_host),
    )


def _pull_request(delivery: Delivery, github_host: str) -> BuildRequest | Ignored:
    payload = delivery.payload
    action = _field(payload, "action", str)
    repo = _repo(payload)
    pull = _field(payload, "pull_request", dict)
    number = _optional(payload, "number", int)
    if number is None:
        number = _field(pull, "number", int, "pull_request.number")
    if not 0 < number <= PR_NUMBER_MAX:
        raise WebhookRejected(
            f"field 'number' must be a positive integer (at most {PR_NUMBER_MAX})"
        )
    if action == "closed":
        return ClosedPullRequest("pull_request action 'closed' makes no job", repo, number)
    if action not in BUILD_ACTIONS:
        return Ignored(f"pull_request action {_quote(action)} makes no job")
    head = _field(pull, "head", dict, "pull_request.head")
    base = _field(pull, "base", dict, "pull_request.base")
    sha = _sha(_field(head, "sha", str, "pull_request.head.sha"), "pull_request.head.sha")
    return BuildRequest(
        delivery_id=delivery.delivery_id,
        repo=repo,
        event="pull_request",
        sha=sha,
        # GitHub keeps this ref on the base repository for every PR, forks included.
        ref=f"refs/pull/{number}/head",
        branch=_ref(_field(head, "ref", str, "pull_request.head.ref"), "pull_request.head.ref"),
        base_branch=_ref(
            _field(base, "ref", str, "pull_request.base.ref"), "pull_request.base.ref"
        ),
        trigger=f"pr#{number}",
        pr_number=number,
        sender=_sender(payload),
        # Reopening a pull request asks for a build even if its head did not move (the commit
        # built when it was opened is otherwise held by the trigger guard for the window).
        rebuild=_reopening(pull) if action == "reopened" else None,
        clone_url=_clone_url(payload, repo, github_host),
        fork=_from_fork(head, repo),
    )


def _from_fork(head: Mapping[str, Any], repo: str) -> bool:
    """Whether the pull request's head lives in another repository than its base.

    GitHub compares names case-insensitively. ``pull_request.head.repo`` is null once the fork
    is deleted, and a head repository without a name cannot be shown to be the base: both
    count as a fork, the side that never runs unapproved code.
    """
    head_repo = _optional(head, "repo", dict, "pull_request.head.repo")
    if head_repo is None:
        return True
    name = _optional(head_repo, "full_name", str, "pull_request.head.repo.full_name")
    return name is None or name.casefold() != repo.casefold()


def _reopening(pull: Mapping[str, Any]) -> str | None:
    """What names one reopening of a pull request in its signed body: ``pull_request.updated_at``
    (GitHub moves it at every close and reopen). Without it (never so from GitHub) the reopen
    is no rebuild: it is held by the guard like any other delivery of the same head."""
    updated_at = _optional(pull, "updated_at", str, "pull_request.updated_at")
    if not updated_at:
        return None
    return "reopened@" + _text(updated_at, "pull_request.updated_at", UPDATED_AT_MAX_BYTES)


def _repo(payload: Mapping[str, Any]) -> str:
    repository = _field(payload, "repository", dict)
    full_name = _field(repository, "full_name", str, "repository.full_name")
    repo = canonical_repo(full_name)
    if repo is None:
        raise WebhookRejected("field 'repository.full_name' must be OWNER/NAME")
    return repo


def _clone_url(payload: Mapping[str, Any], repo: str, github_host: str) -> str | None:
    """``repository.clone_url`` if it is ``https://<github_host>/<repo>(.git)``, else None.

    Even a signed payload never names where to fetch from: not another host (which would be
    sent the git token when it asks for one), a local path, a ``file://`` or ``ext::`` URL, or
    one carrying credentials. Anything but the repository's own GitHub URL needs the
    operator's ``clone_url``; without one, its runs fail saying so.
    """
    repository = _field(payload, "repository", dict)
    url = _optional(repository, "clone_url", str, "repository.clone_url")
    if url is None or not allowed_clone_url(url, repo, github_host):
        return None
    return url


def _sender(payload: Mapping[str, Any]) -> str | None:
    sender = _optional(payload, "sender", dict)
    if sender is None:
        return None
    login = _optional(sender, "login", str, "sender.login")
    return _text(login, "sender.login", LOGIN_MAX_BYTES) if login else None


def _ref(value: str, path: str) -> str:
    """``value`` if it can be a git ref (or branch name) within the caps above."""
    _text(value, path, REF_MAX_BYTES)
    if any(len(part.encode()) > REF_COMPONENT_MAX_BYTES for part in value.split("/")):
        raise WebhookRejected(
            f"field '{path}' has a component over {REF_COMPONENT_MAX_BYTES} bytes"
        )
    return value


def _text(value: str, path: str, max_bytes: int) -> str:
    """``value`` if it is storable text of at most ``max_bytes`` UTF-8 bytes.

    JSON's escapes can spell a lone surrogate (``"\\ud800"``), which is a Python string but no
    UTF-8 text: DynamoDB (and any log or environment) could not take it.
    """
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise WebhookRejected(
            f"field '{path}' is not valid Unicode text (it holds a lone surrogate)"
        ) from None
    if size > max_bytes:
        raise WebhookRejected(f"field '{path}' is {size} bytes long: at most {max_bytes} bytes")
    if _CONTROL.search(value) is not None:
        raise WebhookRejected(f"field '{path}' must not hold control characters (NUL included)")
    return value


def _sha(value: str, path: str) -> str:
    if _SHA.fullmatch(value) is None:
        raise WebhookRejected(f"field '{path}' must be a 40-character hex commit sha")
    return value


def _field(payload: Mapping[str, Any], key: str, kind: type[_T], path: str | None = None) -> _T:
    value = _optional(payload, key, kind, path)
    if value is None:
        raise WebhookRejected(f"missing field '{path or key}'")
    return value


def _optional(
    payload: Mapping[str, Any], key: str, kind: type[_T], path: str | None = None
) -> _T | None:
    value = payload.get(key)
    # bool is an int in Python, never in JSON: `"number": true` is the wrong type.
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise WebhookRejected(
            f"field '{path or key}' must be {_json_name(kind)}, not {_json_type(value)}"
        )
    return value


_JSON_NAMES: dict[type, str] = {
    dict: "an object",
    str: "a string",
    int: "an integer",
    bool: "a boolean",
}


def _json_name(kind: type) -> str:
    return _JSON_NAMES.get(kind, kind.__name__)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _quote(text: str, limit: int = 40) -> str:
    """``text`` for an error message: repr-quoted and cut, so no header floods a response."""
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


def _short(exc: Exception) -> str:
    return str(exc)[:200]
