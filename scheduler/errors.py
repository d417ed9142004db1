"""The typed error family of the scheduler.

All derive from :class:`DomainError` (defined with the state machine, which must stay free of
``scheduler`` imports), so HTTP and CLI layers map any of them the same way: ``http_status``
for the API, ``exit_code`` for the CLI (1 refused, 2 usage or configuration).
"""

from __future__ import annotations

from state_machines.errors import DomainError, InvalidTransition, TransitionConflict

__all__ = [
    "ConfigurationError",
    "DomainError",
    "InvalidTransition",
    "JobExists",
    "JobNotFound",
    "StoreUnavailable",
    "TransitionConflict",
]


class ConfigurationError(DomainError):
    """Settings, template or repository configuration are unusable."""

    http_status = 500
    exit_code = 2


class JobNotFound(DomainError):
    http_status = 404

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id


class JobExists(DomainError):
    """A job with this id already exists (the create was a duplicate; nothing was written)."""

    http_status = 200

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} already exists")
        self.job_id = job_id


class StoreUnavailable(DomainError):
    """DynamoDB could not be reached or refused the request for a reason other than a race."""

    http_status = 503
    exit_code = 2
