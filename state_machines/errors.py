"""The root of the typed error family, and the errors of the state machine itself.

Every error the product raises on purpose derives from :class:`DomainError` and knows how it
is shown: its HTTP status and its CLI exit code (0 ok, 1 refused, 2 usage/configuration).
"""

from __future__ import annotations


class DomainError(Exception):
    http_status: int = 500
    exit_code: int = 1


class InvalidTransition(DomainError):
    """The trigger is not legal from the job's current status; nothing was written."""

    http_status = 409

    def __init__(self, job_id: str, status: str, trigger: str) -> None:
        super().__init__(f"job {job_id}: cannot {trigger} a job that is {status}")
        self.job_id = job_id
        self.status = status
        self.trigger = trigger


class GuardRefused(DomainError):
    """A guarded (conditional) write found its condition false: nothing was written.

    The one convention for guarded writes: they return what they wrote, or raise a subclass of
    this error saying why not (and carrying what the caller needs, e.g. the job that holds a
    trigger). Callers that treat "someone else did it" as success catch this one family.
    """

    http_status = 409


class TransitionConflict(GuardRefused):
    """Another writer moved the job first (status or version differ from what we read).

    This is the normal outcome of a lost race: the stream processor treats it as "already done".
    """

    def __init__(self, job_id: str, trigger: str, detail: str = "") -> None:
        message = f"job {job_id}: {trigger} lost a race: the job changed since it was read"
        super().__init__(f"{message} ({detail})" if detail else message)
        self.job_id = job_id
        self.trigger = trigger
