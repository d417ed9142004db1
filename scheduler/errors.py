"""The typed error family of the scheduler.

All derive from :class:`DomainError` (defined with the state machine, which must stay free of
``scheduler`` imports), so HTTP and CLI layers map any of them the same way: ``http_status``
for the API, ``exit_code`` for the CLI (1 refused, 2 usage or configuration).
"""

from __future__ import annotations

from state_machines.errors import (
    DomainError,
    GuardRefused,
    InvalidTransition,
    TransitionConflict,
)

__all__ = [
    "BatchInterrupted",
    "ConfigurationError",
    "CsrfRejected",
    "DomainError",
    "GroupBusy",
    "GuardRefused",
    "HeadersTooLarge",
    "InvalidArgument",
    "InvalidCursor",
    "InvalidTransition",
    "JobExists",
    "JobNotFound",
    "LengthRequired",
    "LogNotFound",
    "MalformedStreamRecord",
    "MethodNotAllowed",
    "PayloadTooLarge",
    "PipelineFileError",
    "PipelineUnavailable",
    "RepoNotFound",
    "RepositoryFull",
    "RequestTimeout",
    "RerunRefused",
    "RouteNotFound",
    "RunAlreadyClaimed",
    "RunNotStoppable",
    "ServerBusy",
    "SignatureInvalid",
    "StackNotRunning",
    "StoreUnavailable",
    "TransitionConflict",
    "TriggerSeen",
    "Unauthorized",
    "UnsupportedMediaType",
    "WaitTimedOut",
    "WebhookRejected",
]


class ConfigurationError(DomainError):
    """Settings, template or repository configuration are unusable."""

    http_status = 500
    exit_code = 2


class StackNotRunning(ConfigurationError):
    """A stack file names a local stack whose process is gone (a crash or a kill left it)."""

    def __init__(self, data_dir: str, pid: int, stack_file: str) -> None:
        super().__init__(
            f"the local stack in {data_dir} (pid {pid}) is not running: start it with"
            f" `scheduler up` (or remove {stack_file} to stop using it)"
        )
        self.pid = pid


class WaitTimedOut(DomainError):
    """A command waited for a job to finish longer than it was allowed to."""

    http_status = 504


class JobNotFound(DomainError):
    http_status = 404

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id


class RerunRefused(DomainError):
    """A re-run of a pipeline's steps that cannot be made as asked (not a pipeline run, not
    failed, a step still running); nothing was written."""

    http_status = 409

    def __init__(self, job_id: str, why: str) -> None:
        super().__init__(f"job {job_id}: {why}")
        self.job_id = job_id


class LogNotFound(DomainError):
    """No output is known for this job's attempt (not started yet, removed with the job's
    retention, or not kept where this runtime reads logs)."""

    http_status = 404

    def __init__(self, job_id: str, attempt: int, why: str) -> None:
        super().__init__(f"no log for job {job_id} attempt {attempt}: {why}")
        self.job_id = job_id
        self.attempt = attempt


class JobExists(GuardRefused):
    """A job with this id already exists (the create was a duplicate; nothing was written)."""

    http_status = 200

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} already exists")
        self.job_id = job_id


class TriggerSeen(GuardRefused):
    """Another job already holds this trigger (repository, event, ref or PR, sha)."""

    http_status = 200

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} already builds this trigger")
        self.job_id = job_id


class RepositoryFull(GuardRefused):
    """Activation found no free slot: the job stays pending (queued)."""

    def __init__(self, repo: str, limit: int) -> None:
        super().__init__(f"repository {repo} has no free slot (limit {limit})")
        self.repo = repo
        self.limit = limit


class GroupBusy(GuardRefused):
    """Activation found the job's concurrency group held (another of its jobs holds a slot):
    the job stays pending (queued) until that job's end promotes the queue again."""

    def __init__(self, repo: str, group: str) -> None:
        super().__init__(f"concurrency group {group!r} of repository {repo} is busy")
        self.repo = repo
        self.group = group


class HandOffRefused(GuardRefused):
    """A finish could not hand its slot to the queued job it read: that job moved, or the
    repository's limit went down. Nothing was written; the finish is made on its own."""

    def __init__(self, job_id: str, next_job_id: str) -> None:
        super().__init__(f"job {job_id} could not hand its slot to job {next_job_id}")
        self.job_id = job_id
        self.next_job_id = next_job_id


class RunAlreadyClaimed(GuardRefused):
    """The run of this attempt was claimed by another starter (or the attempt moved on)."""

    def __init__(self, job_id: str, attempt: int) -> None:
        super().__init__(f"the run of job {job_id} attempt {attempt} is already claimed")
        self.job_id = job_id
        self.attempt = attempt


class RunNotStoppable(DomainError):
    """This process has no executor to stop a cancelled job's run with (a CLI replay)."""

    http_status = 503

    def __init__(self, job_id: str, run_id: str) -> None:
        super().__init__(f"job {job_id}: run {run_id} can only be stopped by the scheduler")
        self.job_id = job_id
        self.run_id = run_id


class StoreUnavailable(DomainError):
    """DynamoDB could not be reached or refused the request for a reason other than a race."""

    http_status = 503
    exit_code = 2


class BatchInterrupted(StoreUnavailable):
    """The database failed while a stream batch was processed (see :mod:`scheduler.db.outage`).

    The records before ``sequence_number`` are done; from it on nothing is known to be done.
    The local stream runner waits for the database and delivers the rest again, without counting
    a retry or dead-lettering anything: the records are not at fault.
    """

    def __init__(self, sequence_number: str, detail: str) -> None:
        super().__init__(f"store failed at stream record {sequence_number}: {detail}")
        self.sequence_number = sequence_number


class InvalidArgument(DomainError):
    """A request or command argument is malformed; nothing was read or written."""

    http_status = 400
    exit_code = 2


class InvalidCursor(InvalidArgument):
    """A pagination cursor this service did not issue for this query (tampered or foreign)."""


class RepoNotFound(DomainError):
    """No job of this repository was ever recorded (its counters item does not exist)."""

    http_status = 404

    def __init__(self, repo: str) -> None:
        super().__init__(f"repository {repo} not found (no job was ever recorded for it)")
        self.repo = repo


class WebhookRejected(DomainError):
    """A webhook delivery is malformed or not allowed; nothing was written."""

    http_status = 400
    exit_code = 2


class SignatureInvalid(WebhookRejected):
    """``X-Hub-Signature-256`` is missing, malformed or does not match the body."""

    http_status = 401


class LengthRequired(WebhookRejected):
    http_status = 411


class PayloadTooLarge(WebhookRejected):
    http_status = 413


class UnsupportedMediaType(WebhookRejected):
    http_status = 415


class HeadersTooLarge(DomainError):
    """The request line and headers are over the server's limit; nothing was handled."""

    http_status = 431


class RequestTimeout(DomainError):
    """A request (headers and body) did not arrive within the server's deadline."""

    http_status = 408


class ServerBusy(DomainError):
    """The server is at one of its capacity limits (connections, memory for bodies).

    Nothing was read or written; the same request can be sent again later.
    """

    http_status = 503
    retry_after_seconds = 1


class Unauthorized(DomainError):
    """A protected route was called without the API token (or the dashboard's session)."""

    http_status = 401
    exit_code = 2


class CsrfRejected(DomainError):
    """A mutating request without this site's form token, or from another origin."""

    http_status = 403
    exit_code = 2


class RouteNotFound(DomainError):
    http_status = 404

    def __init__(self, path: str) -> None:
        super().__init__(f"no route for {path}")
        self.path = path


class MethodNotAllowed(DomainError):
    http_status = 405

    def __init__(self, method: str, path: str, allowed: list[str]) -> None:
        super().__init__(f"method {method} not allowed on {path} (allowed: {', '.join(allowed)})")
        self.allowed = allowed


class MalformedStreamRecord(DomainError):
    """A stream record of a job item that cannot be read as a job (a poison record).

    The stream processor fails the record, so the event source mapping retries it and, once its
    retry policy is exhausted, sends it to the on-failure destination for an operator.
    """

    http_status = 422

    def __init__(self, sequence_number: str, detail: str) -> None:
        super().__init__(f"stream record {sequence_number}: {detail}")
        self.sequence_number = sequence_number


class PipelineFileError(DomainError):
    """A repository's pipeline file (``.scheduler/pipeline.yml``) breaks a rule.

    The pipeline fails at once with ``reason`` and the 1-based ``line`` it was found on (None
    when the file as a whole is at fault: too large, not UTF-8); no step is created for it.
    It is the repository's error, not the operator's, hence 422 rather than a configuration 500.
    """

    http_status = 422
    exit_code = 2

    def __init__(
        self, reason: str, line: int | None, source: str = ".scheduler/pipeline.yml"
    ) -> None:
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {reason}")
        self.reason = reason
        self.line = line
        self.source = source


class PipelineUnavailable(DomainError):
    """A commit's pipeline file could not be read now (GitHub or the remote unreachable, a 5xx,
    a timeout, a rate limit): not the file's fault, so the pipeline does not fail for it; the
    read is tried again later (after ``retry_after_seconds`` when GitHub said how long)."""

    http_status = 503

    def __init__(self, repo: str, sha: str, why: str, retry_after_seconds: float | None = None):
        super().__init__(f"cannot read the pipeline file of {repo} at {sha[:12]} now: {why}")
        self.repo = repo
        self.sha = sha
        self.retry_after_seconds = retry_after_seconds
