"""DynamoDB access: models, the store (the only writer), reads, and tables from the template."""

from scheduler.db.clients import client
from scheduler.db.models import HistoryEntry, JobModel, RepoModel, bind
from scheduler.db.store import (
    JobState,
    JobStore,
    NewJob,
    Outcome,
    StoreContended,
    TriggerGuard,
)

__all__ = [
    "HistoryEntry",
    "JobModel",
    "JobState",
    "JobStore",
    "NewJob",
    "Outcome",
    "RepoModel",
    "StoreContended",
    "TriggerGuard",
    "bind",
    "client",
]
