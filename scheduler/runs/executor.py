"""What every executor offers: start a run under an idempotency key, cancel it, say how it ended.

Payload values (repository, ref, sha, PR number) reach a run only as data: environment
variables of a process started from an argv list, or build environment variables. What runs
comes from operator configuration, never from the payload.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Protocol

from scheduler.db.models import JobModel


@dataclass(frozen=True, slots=True)
class Source:
    """Where a repository's runs get their code: the configuration's ``checkout`` and
    ``clone_url`` keys."""

    checkout: bool = True
    clone_url: str | None = None
    # The configuration's ``sandbox`` and ``network`` keys: how isolated its runs are.
    sandbox: bool = True
    network: bool = True
    sandbox_paths: tuple[str, ...] = ()
    secrets: tuple[str, ...] = ()


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
    # Run in a fresh checkout of ``sha`` fetched from ``clone_url`` (False: an empty folder).
    checkout: bool = False
    clone_url: str | None = None
    # Executed in a sandbox of its own (local runtime); with ``network`` False, offline.
    sandbox: bool = False
    network: bool = True
    # Host folders shared read-write with the sandbox (the configuration's build caches).
    sandbox_paths: tuple[str, ...] = ()
    # Names of the secrets the run gets as environment variables (none for a fork's run).
    secrets: tuple[str, ...] = ()
    # A fork's pull request (the job's ``fork``): someone else's code, approved or not.
    fork: bool = False
    # A pipeline step's own variables (its ``env``, then its matrix values), under the
    # scheduler's own (which a step cannot override).
    step_env: tuple[tuple[str, str], ...] = ()

    @property
    def idempotency_key(self) -> str:
        """``job_id#attempt``: one run per attempt, however often it is asked for."""
        return f"{self.job_id}#{self.attempt}"

    @classmethod
    def from_job(
        cls,
        job: JobModel,
        command: Sequence[str],
        delay_seconds: float = 0.0,
        source: Source | None = None,
    ) -> RunRequest:
        """The run of ``job``'s current attempt; ``source`` says whether and where from its
        commit is checked out (the configured URL wins over the payload's)."""
        source = source or Source(checkout=False)
        step_env: tuple[tuple[str, str], ...] = ()
        if job.step is not None:  # a pipeline's step runs its own command
            record = json.loads(job.step)
            command = record["command"]
            step_env = tuple({**record["env"], **record["matrix"]}.items())
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
            checkout=source.checkout,
            clone_url=(source.clone_url or job.clone_url) if source.checkout else None,
            sandbox=source.sandbox,
            network=source.network,
            sandbox_paths=source.sandbox_paths,
            fork=bool(job.fork),
            # A fork's pull request is someone else's code: it never gets the secrets.
            secrets=() if job.fork else source.secrets,
            step_env=step_env,
        )

    def environment(self) -> dict[str, str]:
        env = {
            **dict(self.step_env),
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
    # A failure reason the executor knows better than the exit code (``start_failed`` for a
    # checkout the infrastructure failed); None: decided from the fields above.
    reason: str | None = None
    # The job's repository when the executor knows it: the report then needs no read first.
    repo: str | None = None
    # When a runner took the run (epoch ms), for a run claimed by its activation.
    started_at: int | None = None
    # When it ended (epoch ms), if the executor keeps that (see RunStarter.start_claimed).
    ended_at: int | None = None

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
    # Never started by this runtime's runner, now or before a restart (its records say so):
    # the start was lost before the run began, so starting it now runs it once.
    UNSTARTED = "unstarted"
    UNKNOWN = "unknown"  # this executor cannot tell (it keeps no record of runs)


Claim = Callable[[], bool]
"""Claims the run's idempotency key in DynamoDB; False means another starter has it."""


class ClaimResult(Enum):
    """What claiming a run's idempotency key found."""

    CLAIMED = "claimed"
    """This starter holds the claim now: start the run."""
    CLAIMED_BEFORE_NOT_STARTED = "claimed_before_not_started"
    """An earlier start claimed the key but recorded no run id of its own (it failed between
    the claim and the executor's answer, e.g. a throttled ``StartBuild``). Only an executor
    whose start is idempotent by the key itself may start again; the others must not."""
    TAKEN = "taken"
    """Another run holds the attempt, or the attempt moved on: start nothing."""


class RunClaim:
    """The claim a starter hands to :meth:`Executor.start`.

    Called as a plain :data:`Claim` it answers "may I start?" (an earlier, unfinished start
    counts as taken: the safe answer for an executor that cannot start idempotently).
    :meth:`take` tells the three cases apart, for an executor that can resume such a start.
    """

    __slots__ = ("_take",)

    def __init__(self, take: Callable[[int], ClaimResult]) -> None:
        self._take = take

    def __call__(self) -> bool:
        return self._take(0) is ClaimResult.CLAIMED

    def take(self, resumable_for_ms: int = 0) -> ClaimResult:
        """Claim the key. A claim left by an earlier start without a run id, made less than
        ``resumable_for_ms`` ago, is :attr:`ClaimResult.CLAIMED_BEFORE_NOT_STARTED` (the
        executor's own idempotency covers that long); an older one is taken."""
        return self._take(resumable_for_ms)


UNCLAIMED = RunClaim(lambda _resumable_for_ms: ClaimResult.CLAIMED)
"""No claim to take (a single starter, tests): always :attr:`ClaimResult.CLAIMED`."""


class StartRefused(Exception):
    """The executor refused to start the run for good (a bad request, a missing project, an
    account limit): asking again cannot help, so the attempt fails as ``start_failed``.

    Failures that may pass (throttling, 5xx, a lost connection) are raised as they are, so
    that the stream record is tried again.
    """


class Executor(Protocol):
    def start(self, request: RunRequest, claim: RunClaim) -> str | None:
        """Start the run for ``request.idempotency_key``; return its run id.

        ``claim`` is called right before anything starts; if it returns False nothing
        starts. A second start with the same key starts nothing and returns the first run's
        id. None means the run was not started (claimed elsewhere). Raises
        :class:`StartRefused` if the run can never start.
        """

    def cancel(self, run_id: str) -> None:
        """Stop the run (no-op if it already ended)."""

    def stopped(self, run_id: str) -> bool:
        """Whether run ``run_id`` is known to have ended (or never to have begun), so that its
        slot may move on; False while it may still run (or when that cannot be told now).
        Errors that may pass are raised (the caller asks again later)."""

    def log_location(self, request: RunRequest) -> str | None:
        """Where the run's output can be read (a path or a URL), if known before it starts."""

    def status(self, key: str) -> RunStatus:
        """What this executor knows of the run of idempotency key ``key``."""

    def started_at(self, key: str) -> int | None:
        """When a runner took the run of ``key`` (epoch ms) while it runs here; None when
        unknown. A run claimed by its activation has its timeout counted from there."""

    def result_of(self, run_id: str) -> RunResult | None:
        """How run ``run_id`` ended, if it did and this executor can tell (its own report may
        have been lost); None while it runs, or when the executor keeps no such record."""
