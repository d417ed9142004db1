"""GitHub's side: signatures and payloads (pure), a delivery made a job, commit statuses."""

from scheduler.github.delivery import WebhookAnswer, WebhookService, webhook_secret
from scheduler.github.payload import BuildRequest, Delivery, interpret, parse_delivery
from scheduler.github.signature import sign, verify_signature
from scheduler.github.statuses import GitHubNotifier, StatusUpdate, status_for

__all__ = [
    "BuildRequest",
    "Delivery",
    "GitHubNotifier",
    "StatusUpdate",
    "WebhookAnswer",
    "WebhookService",
    "interpret",
    "parse_delivery",
    "sign",
    "status_for",
    "verify_signature",
    "webhook_secret",
]
