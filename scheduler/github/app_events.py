"""A GitHub App's own deliveries, pure: ``installation``, ``installation_repositories``,
``check_suite`` and ``check_run`` payloads made typed requests (or :class:`Ignored`).

Like :mod:`scheduler.github.payload`, nothing here does I/O: a field of the wrong type is a
:class:`~scheduler.errors.WebhookRejected` (400), an action we do not act on an ``Ignored``
with its reason (202). What the requests *do* (re-run, approve, cancel, the set of installed
repositories) is :mod:`scheduler.github.app_mode`'s.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from scheduler.errors import WebhookRejected
from scheduler.github.clone_urls import DEFAULT_GITHUB_HOST
from scheduler.github.payload import (
    APP_EVENT_NAMES,
    BuildRequest,
    Delivery,
    Ignored,
    _clone_url,
    _field,
    _optional,
    _ref,
    _repo,
    _sender,
    _sha,
    _text,
)
from scheduler.repo_name import canonical_repo

__all__ = [
    "APP_EVENTS",
    "CheckRunRequest",
    "CheckSuiteRequest",
    "InstallationChange",
    "change_time",
    "external_id",
    "interpret_app_event",
    "job_of",
]

APP_EVENTS = APP_EVENT_NAMES
_IDENTIFIER_MAX = 20  # GitHub's limit on an action's identifier
_EXTERNAL_ID_MAX = 200
# 100 ns ticks from the UUID epoch (1582-10-15) to the Unix epoch.
_UUID_EPOCH_TICKS = 0x01B21DD213814000


def external_id(job_id: str, step: str | None = None) -> str:
    """A check run's ``external_id`` (GitHub sends it back with its events): the job's id,
    or a pipeline step's (``job#step``)."""
    return job_id if step is None else f"{job_id}#{step}"


def job_of(external: str) -> str:
    """The job id an ``external_id`` names."""
    return external.split("#", 1)[0]


@dataclass(frozen=True, slots=True)
class CheckRunRequest:
    """``check_run`` ``rerequested`` (GitHub's Re-run) or ``requested_action`` (a button)."""

    delivery_id: str
    repo: str
    action: str  # "rerequested" | "requested_action"
    check_run_id: int
    job_id: str
    sender: str | None
    installation_id: int | None
    identifier: str | None = None  # the button pressed (requested_action)
    head_sha: str | None = None
    name: str | None = None  # the check run's name (the job's status context)


@dataclass(frozen=True, slots=True)
class CheckSuiteRequest:
    """``check_suite`` ``rerequested``: re-run the failed jobs of the suite's commit.

    ``asked_at_ms``: when GitHub made the delivery (epoch ms, from its time-based delivery
    id; the same on a redelivery), or None when the id does not say. A job whose failure
    came after it was re-run since: the click is answered already.
    """

    delivery_id: str
    repo: str
    head_sha: str
    sender: str | None
    installation_id: int | None
    asked_at_ms: int | None = None


@dataclass(frozen=True, slots=True)
class InstallationChange:
    """Repositories the App was given (``added``) or lost (``removed``) on an installation."""

    delivery_id: str
    installation_id: int
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    # When the change happened (epoch microseconds; see change_time): what orders changes that
    # arrive late or again. None when the delivery says nothing of it.
    order_at: int | None = None


AppRequest = CheckRunRequest | CheckSuiteRequest | InstallationChange


def interpret_app_event(
    delivery: Delivery, *, github_host: str = DEFAULT_GITHUB_HOST
) -> AppRequest | BuildRequest | Ignored:
    payload = delivery.payload
    action = _field(payload, "action", str)
    if delivery.event == "check_run":
        return _check_run(delivery, action)
    if delivery.event == "check_suite":
        return _check_suite(delivery, action, github_host)
    return _installation_change(delivery, action)


def _check_suite(
    delivery: Delivery, action: str, github_host: str
) -> CheckSuiteRequest | BuildRequest | Ignored:
    """``requested`` asks to build a push (GitHub sends it beside the ``push`` delivery): the
    same build the push asks for, so the same trigger guard (repository, ``push``, ref, sha)
    gives both one job, whichever comes first. ``rerequested`` re-runs its failed jobs."""
    payload = delivery.payload
    if action not in ("requested", "rerequested"):
        return Ignored(f"check_suite action {action!r} asks nothing of the scheduler")
    suite = _field(payload, "check_suite", dict)
    head_sha = _sha(_field(suite, "head_sha", str, "check_suite.head_sha"), "head_sha")
    repo = _repo(payload)
    if action == "rerequested":
        asked_at = change_time(delivery.delivery_id, None)
        return CheckSuiteRequest(
            delivery_id=delivery.delivery_id,
            repo=repo,
            head_sha=head_sha,
            sender=_sender(payload),
            installation_id=_installation(payload),
            asked_at_ms=asked_at // 1000 if asked_at is not None else None,
        )
    branch = _optional(suite, "head_branch", str, "check_suite.head_branch")
    if not branch:
        return Ignored("check_suite of no branch: its push delivery builds it")
    ref = _ref(f"refs/heads/{branch}", "check_suite.head_branch")
    return BuildRequest(
        delivery_id=delivery.delivery_id,
        repo=repo,
        event="push",
        sha=head_sha,
        ref=ref,
        branch=branch,
        trigger=ref,
        sender=_sender(payload),
        clone_url=_clone_url(payload, repo, github_host),
    )


def _check_run(delivery: Delivery, action: str) -> CheckRunRequest | Ignored:
    payload = delivery.payload
    if action not in ("rerequested", "requested_action"):
        return Ignored(f"check_run action {action!r} asks nothing of the scheduler")
    run = _field(payload, "check_run", dict)
    check_run_id = _field(run, "id", int, "check_run.id")
    external = _optional(run, "external_id", str, "check_run.external_id") or ""
    if not external:
        return Ignored("check_run is not one of the scheduler's (no external_id)")
    _text(external, "check_run.external_id", _EXTERNAL_ID_MAX)
    identifier = None
    if action == "requested_action":
        requested = _field(payload, "requested_action", dict)
        identifier = _text(
            _field(requested, "identifier", str, "requested_action.identifier"),
            "requested_action.identifier",
            _IDENTIFIER_MAX,
        )
    head_sha = _optional(run, "head_sha", str, "check_run.head_sha")
    name = _optional(run, "name", str, "check_run.name")
    return CheckRunRequest(
        delivery_id=delivery.delivery_id,
        repo=_repo(payload),
        action=action,
        check_run_id=check_run_id,
        job_id=job_of(external),
        sender=_sender(payload),
        installation_id=_installation(payload),
        identifier=identifier,
        head_sha=_sha(head_sha, "check_run.head_sha") if head_sha else None,
        name=_text(name, "check_run.name", _EXTERNAL_ID_MAX) if name else None,
    )


def _installation_change(delivery: Delivery, action: str) -> InstallationChange | Ignored:
    payload = delivery.payload
    installation = _field(payload, "installation", dict)
    installation_id = _field(installation, "id", int, "installation.id")
    at = change_time(delivery.delivery_id, installation.get("updated_at"))
    if delivery.event == "installation":
        listed = _repos(payload, "repositories")
        if action in ("created", "unsuspend", "new_permissions_accepted"):
            return InstallationChange(
                delivery.delivery_id, installation_id, added=listed, order_at=at
            )
        if action in ("deleted", "suspend"):
            return InstallationChange(
                delivery.delivery_id, installation_id, removed=listed, order_at=at
            )
        return Ignored(f"installation action {action!r} changes nothing here")
    return InstallationChange(
        delivery.delivery_id,
        installation_id,
        added=_repos(payload, "repositories_added"),
        removed=_repos(payload, "repositories_removed"),
        order_at=at,
    )


def change_time(delivery_id: str, updated_at: object) -> int | None:
    """When an installation changed, in epoch microseconds (None if the delivery cannot say).

    GitHub's delivery ids are time-based UUIDs (version 1): the time GitHub made the delivery,
    to a tenth of a microsecond, the same on every redelivery. Else ``installation.updated_at``
    (epoch seconds or an ISO date in GitHub's samples): whole seconds only.
    """
    try:
        parsed = uuid.UUID(delivery_id)
    except ValueError:
        parsed = None
    if parsed is not None and parsed.version == 1:
        return (parsed.time - _UUID_EPOCH_TICKS) // 10
    if isinstance(updated_at, int) and not isinstance(updated_at, bool) and updated_at > 0:
        return updated_at * 1_000_000
    if isinstance(updated_at, str):
        try:
            when = datetime.fromisoformat(updated_at.replace("Z", "+00:00"))
        except ValueError:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return int(when.timestamp() * 1_000_000)
    return None


def _repos(payload: Mapping[str, Any], key: str) -> tuple[str, ...]:
    listed = payload.get(key) or []
    if not isinstance(listed, list):
        raise WebhookRejected(f"field '{key}' must be an array")
    names = []
    for entry in listed:
        if not isinstance(entry, dict) or not isinstance(entry.get("full_name"), str):
            raise WebhookRejected(f"every entry of '{key}' needs a full_name")
        name = canonical_repo(entry["full_name"])
        if name is None:
            raise WebhookRejected(f"'{key}' names {entry['full_name'][:60]!r}, not OWNER/NAME")
        names.append(name)
    return tuple(names)


def _installation(payload: Mapping[str, Any]) -> int | None:
    installation = _optional(payload, "installation", dict)
    if installation is None:
        return None
    return _optional(installation, "id", int, "installation.id")
