"""GitHub commit statuses for job transitions.

``POST /repos/{owner}/{repo}/statuses/{sha}`` with ``pending`` when a job waits for approval
(a fork's pull request), when it is queued and when it starts, ``success`` / ``failure`` /
``error`` when it finishes. Notifying is best effort: it runs on a small thread pool, retries
with backoff, and never blocks or fails a job.

A pipeline run posts under the repository's ``status_context``; each of its steps under
``<status_context>/<step key>`` (its own line on the commit, ``test[python=3.12]`` for a
matrix variant), so a step's status never overwrites the run's or another step's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from scheduler import tracing
from scheduler.errors import DomainError
from state_machines import STEPS_FAILED, TIMED_OUT, JobStatus

if TYPE_CHECKING:
    import httpx

    from scheduler.stream.decide import Transition

log = logging.getLogger(__name__)

State = Literal["pending", "success", "failure", "error"]
DESCRIPTION_CHARS = 140
RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}


MaskFor = Callable[[str], Callable[[str], str]]
"""Repository -> its secret masker (a failure's detail is run output)."""


def masked_detail(transition: Transition, mask_for: MaskFor | None) -> str | None:
    """The transition's detail as GitHub may show it: its repository's secrets masked."""
    detail = transition.image.detail
    if detail and mask_for is not None:
        return mask_for(transition.image.repo)(detail)
    return detail


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    repo: str
    sha: str
    state: State
    description: str
    context: str
    target_url: str | None = None
    trace_id: str | None = None  # the job's trace (never sent to GitHub)

    def body(self) -> dict[str, str]:
        body = {
            "state": self.state,
            "description": self.description[:DESCRIPTION_CHARS],
            "context": self.context,
        }
        if self.target_url:
            body["target_url"] = self.target_url
        return body


def context_of(base: str, step_key: str | None) -> str:
    """The status context of a job: the repository's, a pipeline step's under it."""
    return f"{base}/{step_key}" if step_key else base


def status_for(
    source: JobStatus | None,
    dest: JobStatus,
    *,
    attempt: int,
    reason: str | None,
    detail: str | None = None,
    group: str | None = None,
) -> tuple[State, str] | None:
    """The commit status a transition reports, as (state, description); None for none.

    A failure's description carries its ``detail`` (the run's summary: how it ended and its
    last line), cut to GitHub's 140 characters. A queued step of a concurrency ``group`` says
    so: it may wait for another of its group's jobs, not for a slot.
    """
    found = _status_for(source, dest, attempt=attempt, reason=reason)
    if found is not None and dest is JobStatus.PENDING and group is not None:
        return found[0], _shorten(f"{found[1]} in concurrency group {group}")
    if found is None or dest is not JobStatus.FAILED or not detail:
        return found
    state, description = found
    detail = " ".join(detail.split())  # one line
    if detail.lower().startswith(description.lower()):
        description = detail[:1].upper() + detail[1:]  # "timed out: ..." says it already
    else:
        description = f"{description}: {detail}"
    return state, _shorten(description)


def _shorten(text: str) -> str:
    return text if len(text) <= DESCRIPTION_CHARS else text[: DESCRIPTION_CHARS - 3] + "..."


def _status_for(
    source: JobStatus | None, dest: JobStatus, *, attempt: int, reason: str | None
) -> tuple[State, str] | None:
    if dest is JobStatus.WAITING:
        return "pending", "waiting for approval"
    if dest is JobStatus.BLOCKED:
        return "pending", "Waiting for its needs"
    if dest is JobStatus.SKIPPED:
        return "success", "Skipped"
    if dest is JobStatus.PENDING:
        return "pending", "Queued" if attempt == 1 else f"Queued (attempt {attempt})"
    if dest is JobStatus.ACTIVE:
        return "pending", f"Running (attempt {attempt})"
    if dest is JobStatus.PASSED:
        return "success", "Passed"
    if dest is JobStatus.FAILED:
        if reason == TIMED_OUT:
            return "error", "Timed out"
        if reason in (None, "exit_code", STEPS_FAILED):  # its own failure (or its steps')
            return "failure", "Failed"
        return "error", f"Failed: {reason}"
    if dest is JobStatus.CANCELLED:
        return "error", "Cancelled"
    return None


class GitHubNotifier:
    def __init__(
        self,
        token: str,
        *,
        api_url: str = "https://api.github.com",
        attempts: int = 4,
        backoff_seconds: float = 0.5,
        timeout_seconds: float = 10.0,
        max_workers: int = 2,
        sleep: Callable[[float], None] = time.sleep,
        client: httpx.Client | None = None,
        authorization_for: Callable[[str], str] | None = None,
    ) -> None:
        # httpx is imported once a notifier is made (a token is configured), not with this
        # module: a Lambda function that posts no status does not pay for it at cold start.
        from scheduler.github.api import MEDIA_TYPE, api_client

        # GitHub App mode: each repository's installation token (asked per post, renewed
        # before it expires) instead of one token for all.
        self._authorization_for = authorization_for
        if client is None:
            client = api_client(api_url, accept=MEDIA_TYPE, timeout_seconds=timeout_seconds)
            if authorization_for is None:
                client.headers["Authorization"] = f"Bearer {token}"
        self._client = client
        self._attempts = attempts
        self._backoff = backoff_seconds
        self._sleep = sleep
        # max_workers 0: post inline (Lambda), else in a pool the caller never waits for.
        self._pool = ThreadPoolExecutor(max_workers, "notify") if max_workers > 0 else None

    def submit(self, update: StatusUpdate) -> Future[bool]:
        """Post in the background (or inline, without a pool); never raises."""
        if self._pool is not None:
            return self._pool.submit(self.post, update)
        done: Future[bool] = Future()
        done.set_result(self.post(update))
        return done

    def post(self, update: StatusUpdate) -> bool:
        """Post one status with retries; True if GitHub accepted it. Never raises."""
        with tracing.work(
            "commit status", trace_id=update.trace_id, repo=update.repo, state=update.state
        ):
            return self._post(update)

    def _post(self, update: StatusUpdate) -> bool:
        import httpx  # loaded by __init__ already: a lookup

        path = f"/repos/{update.repo}/statuses/{update.sha}"
        for attempt in range(1, self._attempts + 1):
            try:
                headers = (
                    {"Authorization": self._authorization_for(update.repo)}
                    if self._authorization_for is not None
                    else None
                )
                response = self._client.post(path, json=update.body(), headers=headers)
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
            except DomainError as exc:  # no installation token (GitHub unreachable, not installed)
                problem = type(exc).__name__
            else:
                if response.is_success:
                    return True
                problem = f"HTTP {response.status_code}"
                if response.status_code not in RETRYABLE_STATUS:
                    break
            if attempt < self._attempts:
                self._sleep(self._backoff * 2 ** (attempt - 1))
        # The token never reaches logs: only the repository, sha and the problem do.
        log.warning(
            "commit status not posted",
            extra={"repo": update.repo, "sha": update.sha, "problem": problem},
        )
        return False

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._client.close()


class CommitStatusObserver:
    """A stream observer that posts the commit status of each transition in the background.

    It never blocks or fails a record: the notifier's pool does the HTTP work.
    """

    def __init__(
        self,
        notifier: GitHubNotifier,
        context_for: Callable[[str], str],
        target_url: str | None = None,
        mask_for: Callable[[str], Callable[[str], str]] | None = None,
    ) -> None:
        self.notifier = notifier
        self._context_for = context_for
        self._target_url = target_url
        # Repository -> its secret masker: a failure's detail is run output.
        self._mask_for = mask_for

    def __call__(self, transition: Transition) -> None:
        image = transition.image
        detail = masked_detail(transition, self._mask_for)
        found = status_for(
            transition.source,
            transition.dest,
            attempt=transition.job.attempt,
            reason=image.reason,
            detail=detail,
            group=image.concurrency_group,
        )
        if found is None:
            return
        state, description = found
        target = self._target_url.format(job_id=image.job_id) if self._target_url else None
        self.notifier.submit(
            StatusUpdate(
                repo=image.repo,
                sha=image.sha,
                state=state,
                description=description,
                context=context_of(self._context_for(image.repo), image.step_key),
                target_url=target,
                trace_id=image.trace_id,
            )
        )
