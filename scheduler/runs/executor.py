"""What every executor offers: start a run under an idempotency key, cancel it.

Payload values (repository, ref, sha, PR number) reach a run only as data: environment
variables of a process started from an argv list, or build environment variables. What runs
comes from operator configuration, never from the payload.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from scheduler.db.models import JobModel


@dataclass(frozen=True, slots=True)
class RunRequest:
    job_id: str
    repo: str
    sha: str
    attempt: int
    command: tuple[str, ...]
    timeout_seconds: int
    event: str = "push"
    ref: str | None = None
    pr_number: int | None = None
    # An automatic retry's backoff: the run waits this long before it starts.
    delay_seconds: float = 0.0

    @property
    def idempotency_key(self) -> str:
        """``job_id#attempt``: one run per attempt, however often it is asked for."""
        return f"{self.job_id}#{self.attempt}"

    @classmethod
    def from_job(
        cls, job: JobModel, command: Sequence[str], delay_seconds: float = 0.0
    ) -> RunRequest:
        return cls(
            job_id=job.job_id,
            repo=job.repo,
            sha=job.sha,
            attempt=int(job.attempt),
            command=tuple(command),
            timeout_seconds=int(job.timeout_seconds),
            event=job.event,
            ref=job.ref,
            pr_number=int(job.pr_number) if job.pr_number is not None else None,
            delay_seconds=delay_seconds,
        )

    def environment(self) -> dict[str, str]:
        env = {
            "SCHEDULER_JOB_ID": self.job_id,
            "SCHEDULER_REPO": self.repo,
            "SCHEDULER_SHA": self.sha,
            "SCHEDULER_REF": self.ref or "",
            "SCHEDULER_EVENT": self.event,
            "SCHEDULER_ATTEMPT": str(self.attempt),
        }
        if self.pr_number is not None:
            env["SCHEDULER_PR_NUMBER"] = str(self.pr_number)
        return env


@dataclass(frozen=True, slots=True)
class RunResult:
    """How a run ended. ``exit_code`` is None when it was killed (timeout or cancel)."""

    job_id: str
    attempt: int
    exit_code: int | None
    timed_out: bool = False
    cancelled: bool = False
    summary: str = ""

    @property
    def passed(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.cancelled


OnFinished = Callable[[RunResult], None]


class RunStatus(StrEnum):
    """What an executor knows of a run, by its idempotency key (asked by the reaper)."""

    WAITING = "waiting"  # accepted, not started yet (no free runner, a retry's backoff)
    RUNNING = "running"  # its process (or build) runs
    FINISHING = "finishing"  # it ended; its outcome is being reported (the store was down)
    GONE = "gone"  # not here: it ended, or it was lost with a previous runner
    UNKNOWN = "unknown"  # this executor cannot tell (it keeps no record of runs)


Claim = Callable[[], bool]
"""Claims the run's idempotency key in DynamoDB; False means another starter has it."""


class Executor(Protocol):
    def start(self, request: RunRequest, claim: Claim) -> str | None:
        """Start the run for ``request.idempotency_key``; return its run id.

        ``claim`` is called right before anything starts; if it returns False nothing
        starts. A second start with the same key starts nothing and returns the first run's
        id. None means the run was not started (claimed elsewhere).
        """

    def cancel(self, run_id: str) -> None:
        """Stop the run (no-op if it already ended)."""

    def log_location(self, request: RunRequest) -> str | None:
        """Where the run's output can be read (a path or a URL), if known before it starts."""

    def status(self, key: str) -> RunStatus:
        """What this executor knows of the run of idempotency key ``key``."""
