"""``scheduler send-test-delivery``: a signed sample push, then its job followed to the end.

Everything goes through the scheduler's HTTP API (``POST /webhook``, ``GET /jobs/{id}``,
``GET /jobs/{id}/log``), the way GitHub and a browser reach it, so the command checks the same
path a real delivery takes and needs no database access of its own.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from scheduler.cli.render import duration
from scheduler.errors import ConfigurationError, JobNotFound, WaitTimedOut
from scheduler.github.signature import sign
from state_machines import TERMINAL_STATUSES, JobStatus

__all__ = ["answer_of", "deliver", "follow", "log_tail", "sample_push", "status_line"]

_TERMINAL = frozenset(status.value for status in TERMINAL_STATUSES)
# A failed job may be retried automatically (failed -> pending within milliseconds locally):
# it is final only once it stayed failed this long.
SETTLE_SECONDS = 3.0
# How long the API may stay unreachable (a restart, DynamoDB Local restarting: 503) before the
# wait gives up.
UNREACHABLE_SECONDS = 30.0


def sample_push(repo: str, branch: str, sha: str | None) -> bytes:
    return json.dumps(
        {
            "ref": f"refs/heads/{branch}",
            "after": sha or uuid.uuid4().hex + uuid.uuid4().hex[:8],
            "deleted": False,
            "repository": {"full_name": repo},
            "sender": {"login": "scheduler-demo"},
        }
    ).encode()


def deliver(client: httpx.Client, url: str, secret: str, body: bytes) -> httpx.Response:
    """POST ``body`` to the webhook as GitHub does (signature, fresh delivery id)."""
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": sign(secret.encode(), body),
    }
    try:
        return client.post(f"{url}/webhook", content=body, headers=headers)
    except httpx.HTTPError as exc:
        raise ConfigurationError(f"cannot reach the scheduler at {url}: {exc}") from exc


def answer_of(response: httpx.Response) -> dict[str, Any]:
    """The webhook's JSON answer; anything else means the URL is not a scheduler's."""
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise ConfigurationError(
            f"{response.request.url} answered HTTP {response.status_code} without a JSON"
            " object: is this the scheduler's URL?"
        )
    return answer


def _error_of(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error") or response.text)
    except ValueError:
        return response.text.strip() or f"HTTP {response.status_code}"


def _job(client: httpx.Client, url: str, job_id: str) -> dict[str, Any] | str:
    """The job, or why it could not be read this time (a failure worth another try)."""
    try:
        response = client.get(f"{url}/jobs/{job_id}")
    except httpx.HTTPError as exc:
        return str(exc) or type(exc).__name__
    if response.status_code == 404:
        raise JobNotFound(job_id)
    if response.status_code >= 500:
        return f"HTTP {response.status_code}: {_error_of(response)}"
    if response.status_code != 200:
        raise ConfigurationError(
            f"{url} refused to show job {job_id}: HTTP {response.status_code}: "
            + _error_of(response)
        )
    return dict(response.json())


def follow(
    client: httpx.Client,
    url: str,
    job_id: str,
    *,
    timeout: float,
    on_change: Callable[[dict[str, Any]], None],
    poll_seconds: float = 0.25,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll the job until it is terminal; ``on_change`` sees each new (status, attempt).

    Raises :class:`WaitTimedOut` after ``timeout`` seconds, :class:`ConfigurationError` when
    the API stays unreachable for ``UNREACHABLE_SECONDS``.
    """
    deadline = clock() + timeout
    seen: tuple[str, int] | None = None
    failed_since: float | None = None
    unreachable_since: float | None = None
    status = "unknown"
    while True:
        job = _job(client, url, job_id)
        now = clock()
        if isinstance(job, str):
            unreachable_since = unreachable_since or now
            if now - unreachable_since >= UNREACHABLE_SECONDS:
                raise ConfigurationError(f"lost the scheduler at {url} while waiting: {job}")
        else:
            unreachable_since = None
            status = str(job["status"])
            if (status, int(job["attempt"])) != seen:
                seen = (status, int(job["attempt"]))
                failed_since = None
                on_change(job)
            if status in _TERMINAL and status != JobStatus.FAILED.value:
                return job
            if status == JobStatus.FAILED.value:
                failed_since = failed_since or now
                if now - failed_since >= SETTLE_SECONDS or now >= deadline:
                    return job
        if now >= deadline:
            raise WaitTimedOut(
                f"job {job_id} is still {status} after {timeout:g} s"
                f" (see `scheduler show {job_id}`)"
            )
        sleep(poll_seconds)


def log_tail(
    client: httpx.Client, url: str, job_id: str, attempt: int, lines: int
) -> list[str] | None:
    """The last ``lines`` lines of the attempt's log, or None if the API has none to give."""
    try:
        response = client.get(f"{url}/jobs/{job_id}/log", params={"attempt": attempt})
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    return response.text.splitlines()[-lines:] if lines > 0 else []


def status_line(job: dict[str, Any]) -> str:
    """``job X: failed (attempt 1, exit_code 1, 2s)``: what a status change shows."""
    facts = [f"attempt {job['attempt']}"]
    if job.get("reason"):
        reason = str(job["reason"])
        if job.get("exit_code") is not None:
            reason += f" {job['exit_code']}"
        facts.append(reason)
    started, finished = job.get("activated_at"), job.get("finished_at")
    if job["status"] in _TERMINAL and started is not None and finished is not None:
        facts.append(duration(int(finished) - int(started)))
    return f"job {job['job_id']}: {job['status']} ({', '.join(facts)})"
