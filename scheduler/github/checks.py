"""GitHub check runs for job transitions (a GitHub App's view of a job).

Today a job is one step, so a job has one chain of check runs: its ``external_id`` is the job's
id (a pipeline's step will put its own id there: :func:`external_id`), its ``details_url`` the
dashboard's page of the job. A check run moves ``queued -> in_progress -> completed``; a state
that begins again after a completed one (an operator's retry, GitHub's Re-run, an approval of a
fork's pull request) starts a *new* check run of the same name and external id, as GitHub asks
of Apps (a completed check run is not reopened). Conclusions: ``success``, ``failure``,
``timed_out``, ``cancelled``, ``skipped`` (superseded before it ran) and ``action_required``
(a fork's pull request waiting for approval, with an "Approve and run" button).

:func:`check_for` is pure: a transition in, the check run's desired state out. The observer
puts that state on a :class:`~scheduler.github.rate_limits.SendQueue` (the stream never waits
for GitHub); :class:`CheckRuns` sends it, filling the output's text with the masked tail of the
run's log when the run completed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from scheduler.github.api import GitHubApi, GitHubApiError
from scheduler.github.app_auth import AppAuth
from scheduler.github.app_events import external_id
from scheduler.github.rate_limits import SendQueue
from scheduler.github.statuses import context_of, masked_detail
from state_machines import STEPS_FAILED, TIMED_OUT, JobStatus

if TYPE_CHECKING:
    from scheduler.stream.decide import Transition

__all__ = [
    "APPROVE_ACTION",
    "CANCEL_ACTION",
    "OUTPUT_MAX_CHARS",
    "CheckRunObserver",
    "CheckRuns",
    "CheckState",
    "check_for",
    "merge",
    "text_within",
]

log = logging.getLogger(__name__)

Status = Literal["queued", "in_progress", "completed"]
# GitHub's limit on a check run's output.summary and output.text (characters).
OUTPUT_MAX_CHARS = 65535
APPROVE_ACTION = "approve"
CANCEL_ACTION = "cancel"
_STARTS_OVER = frozenset(
    {JobStatus.WAITING, JobStatus.PASSED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.SKIPPED}
)


@dataclass(frozen=True, slots=True)
class Action:
    """A button on the check run (GitHub: label <= 20, description <= 40, identifier <= 20)."""

    label: str
    description: str
    identifier: str

    def body(self) -> dict[str, str]:
        return {"label": self.label, "description": self.description, "identifier": self.identifier}


APPROVE = Action("Approve and run", "Run this fork's pull request", APPROVE_ACTION)
CANCEL = Action("Cancel", "Stop this run", CANCEL_ACTION)


@dataclass(frozen=True, slots=True)
class CheckState:
    """What one check run should say: sent as a POST (``new_run``) or a PATCH."""

    repo: str
    sha: str
    job_id: str
    attempt: int
    name: str
    status: Status
    title: str
    summary: str
    new_run: bool = False
    conclusion: str | None = None
    details_url: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    actions: tuple[Action, ...] = ()
    with_log: bool = False  # completed after a run: the output's text is the log's tail

    def body(self, text: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"status": self.status}
        if self.new_run:
            body["name"] = self.name
            body["head_sha"] = self.sha
        body["external_id"] = external_id(self.job_id)
        if self.details_url:
            body["details_url"] = self.details_url
        if self.conclusion is not None:
            body["conclusion"] = self.conclusion
        if self.started_at:
            body["started_at"] = self.started_at
        if self.completed_at:
            body["completed_at"] = self.completed_at
        output: dict[str, str] = {"title": self.title, "summary": _cut(self.summary)}
        if text:
            output["text"] = text
        body["output"] = output
        body["actions"] = [action.body() for action in self.actions]
        return body


def check_for(
    transition: Transition,
    *,
    name: str,
    details_url: str | None,
    detail: str | None = None,
) -> CheckState | None:
    """The check run state a transition asks for (pure); None for none."""
    image = transition.image
    source, dest = transition.source, transition.dest
    attempt = transition.job.attempt
    base = CheckState(
        repo=image.repo,
        sha=image.sha,
        job_id=image.job_id,
        attempt=attempt,
        name=name,
        status="queued",
        title="",
        summary="",
        new_run=source is None or source in _STARTS_OVER,
        details_url=details_url,
    )
    timing = _timing(image)
    if dest is JobStatus.WAITING:
        return replace(
            base,
            status="completed",
            conclusion="action_required",
            completed_at=_iso(image.updated_at or image.received_at),
            title="Waiting for approval",
            summary="A pull request from a fork: someone with write access to the repository"
            " approves it to run (the Approve and run button, or `scheduler approve`).",
            actions=(APPROVE,),
        )
    if dest is JobStatus.BLOCKED:
        return replace(base, title="Waiting for its needs", summary=timing)
    if dest is JobStatus.PENDING:
        title = "Queued" if attempt == 1 else f"Queued (attempt {attempt})"
        group = image.concurrency_group
        waits = f"concurrency group {group} (one of its jobs at a time)" if group else None
        summary = f"Waiting for a free slot{' and its ' + waits if waits else ''}. {timing}"
        return replace(base, title=title, summary=summary.strip())
    if dest is JobStatus.ACTIVE:
        return replace(
            base,
            status="in_progress",
            started_at=_iso(image.started_at or image.activated_at),
            title=f"Running (attempt {attempt})",
            summary=timing,
            actions=(CANCEL,),
        )
    conclusion, title = _conclusion(source, dest, image.reason)
    if conclusion is None:
        return None
    summary = timing
    if detail:
        summary = f"{' '.join(detail.split())}\n\n{timing}"
    return replace(
        base,
        status="completed",
        conclusion=conclusion,
        started_at=_iso(image.started_at) if image.started_at else None,
        completed_at=_iso(image.finished_at or image.updated_at),
        title=title,
        summary=summary,
        with_log=image.started_at is not None,
    )


def _conclusion(
    source: JobStatus | None, dest: JobStatus, reason: str | None
) -> tuple[str | None, str]:
    if dest is JobStatus.PASSED:
        return "success", "Passed"
    if dest is JobStatus.FAILED:
        if reason == TIMED_OUT:
            return "timed_out", "Timed out"
        own = reason in (None, "exit_code", STEPS_FAILED)  # its own failure (or its steps')
        return "failure", "Failed" if own else f"Failed: {reason}"
    if dest is JobStatus.SKIPPED:
        return "skipped", "Skipped"
    if dest is JobStatus.CANCELLED:
        if reason == "superseded" and source is not JobStatus.ACTIVE:
            return "skipped", "Skipped: a newer commit superseded it"
        return "cancelled", "Cancelled" if not reason else f"Cancelled: {reason}"
    return None, ""


def _timing(image: Any) -> str:
    """The step's timing from the job's timestamps (epoch milliseconds)."""
    parts = []
    if image.attempt and image.attempt > 1:
        parts.append(f"Attempt {image.attempt}.")
    if image.started_at and image.received_at:
        parts.append(f"Waited {_seconds(image.started_at - image.received_at)}.")
    if image.finished_at and image.started_at:
        parts.append(f"Ran {_seconds(image.finished_at - image.started_at)}.")
    return " ".join(parts)


def _seconds(ms: float) -> str:
    seconds = max(0.0, ms / 1000)
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} min {int(seconds % 60)} s"


def _iso(ms: float | None) -> str | None:
    if not ms:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cut(text: str, limit: int = OUTPUT_MAX_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def text_within(lines: list[str], limit: int = OUTPUT_MAX_CHARS) -> str:
    """The log's last lines as a Markdown code block of at most ``limit`` characters: the
    oldest lines go first (the end of a log says why it failed)."""
    fence_open, fence_close = "```text\n", "\n```"
    room = limit - len(fence_open) - len(fence_close)
    kept: list[str] = []
    used = 0
    for raw in reversed(lines):
        line = raw.replace("```", "` ` `")  # the block must not end early
        if used + len(line) + 1 > room:
            if not kept:  # one line longer than the room: its end
                kept.append(line[-room:])
            break
        kept.append(line)
        used += len(line) + 1
    return fence_open + "\n".join(reversed(kept)) + fence_close


def merge(old: CheckState, new: CheckState) -> CheckState | None:
    """One state saying both (sent as one request), or None: a new check run never swallows
    the last update of the one before it."""
    if new.new_run:
        return None
    if old.new_run:  # not created yet: create it straight in the newer state
        return replace(new, new_run=True, started_at=new.started_at or old.started_at)
    return replace(new, started_at=new.started_at or old.started_at)


class CheckRuns:
    """Sends check run states; knows each job's current check run (in this process, else
    asks GitHub for the newest of its name and external id)."""

    def __init__(
        self,
        api: GitHubApi,
        auth: AppAuth,
        *,
        log_tail: Callable[[str], list[str]] | None = None,
    ) -> None:
        self._api = api
        self._auth = auth
        self.log_tail = log_tail  # job id -> its log's last lines, masked
        self._ids: dict[str, int] = {}

    def current(self, key: str) -> int | None:
        return self._ids.get(key)

    def newest(self, repo: str, sha: str, name: str, job_id: str) -> int | None:
        """The job's newest check run as GitHub has it (this process may not have made it)."""
        probe = CheckState(repo, sha, job_id, 1, name, "queued", "", "")
        return self._find(probe, self._auth.authorization_for(repo))

    def send(self, key: str, state: CheckState) -> None:
        authorization = self._auth.authorization_for(state.repo)
        text = self._text(state) if state.with_log else None
        run_id = None if state.new_run else self._ids.get(key) or self._find(state, authorization)
        if run_id is None:
            created = self._api.request(
                "POST",
                f"/repos/{state.repo}/check-runs",
                authorization=authorization,
                json=replace(state, new_run=True).body(text),
            )
            if isinstance(created, dict) and isinstance(created.get("id"), int):
                self._ids[key] = created["id"]
            return
        self._api.request(
            "PATCH",
            f"/repos/{state.repo}/check-runs/{run_id}",
            authorization=authorization,
            json=state.body(text),
        )

    def update(self, repo: str, check_run_id: int, body: dict[str, Any]) -> None:
        """A direct PATCH (a refused button press says why on the check run)."""
        self._api.request(
            "PATCH",
            f"/repos/{repo}/check-runs/{check_run_id}",
            authorization=self._auth.authorization_for(repo),
            json=body,
        )

    def _text(self, state: CheckState) -> str | None:
        if self.log_tail is None:
            return None
        try:
            lines = self.log_tail(state.job_id)
        except Exception:  # no log is no reason to lose the conclusion
            log.warning("no log tail for the check run", extra={"job_id": state.job_id})
            return None
        return text_within(lines) if lines else None

    def _find(self, state: CheckState, authorization: str) -> int | None:
        """The newest check run of this job on GitHub (a process that did not create it)."""
        try:
            found = self._api.request(
                "GET",
                f"/repos/{state.repo}/commits/{state.sha}/check-runs",
                authorization=authorization,
                params={"check_name": state.name, "filter": "all"},
            )
        except GitHubApiError:
            return None
        runs = found.get("check_runs", []) if isinstance(found, dict) else []
        ids = [
            run["id"]
            for run in runs
            if isinstance(run, dict)
            and run.get("external_id") == external_id(state.job_id)
            and isinstance(run.get("id"), int)
        ]
        return max(ids) if ids else None


class CheckRunObserver:
    """A stream observer: each transition's check run state, queued for sending."""

    def __init__(
        self,
        queue: SendQueue[str, CheckState],
        name_for: Callable[[str], str],
        details_url: str | None,
        mask_for: Callable[[str], Callable[[str], str]] | None = None,
    ) -> None:
        self.queue = queue
        self._name_for = name_for
        self._details_url = details_url.rstrip("/") if details_url else None
        self._mask_for = mask_for

    def __call__(self, transition: Transition) -> None:
        image = transition.image
        detail = masked_detail(transition, self._mask_for)
        details_url = f"{self._details_url}/ui/jobs/{image.job_id}" if self._details_url else None
        # A pipeline's step has a check run of its own, named as its commit status.
        name = context_of(self._name_for(image.repo), image.step_key)
        state = check_for(transition, name=name, details_url=details_url, detail=detail)
        if state is not None:
            self.queue.submit(external_id(image.job_id), state)
