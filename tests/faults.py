"""Faults DynamoDB Local never produces, injected into a store's botocore client."""

from __future__ import annotations

import json
from typing import Any

from scheduler.db.store import JobStore


class _Http:
    status_code = 400
    headers: dict[str, str] = {}


def inject_conflicts(store: JobStore, times: int) -> list[dict[str, Any]]:
    """Cancel the next ``times`` transactions with a TransactionConflict on their last item.

    Returns the intercepted request bodies, so a test can check their shape.
    """
    seen: list[dict[str, Any]] = []

    def before_call(params: dict[str, Any], **_: Any) -> tuple[_Http, dict[str, Any]] | None:
        body = json.loads(params["body"])
        seen.append(body)
        if len(seen) > times:
            return None  # let the real request through
        reasons = [{"Code": "None"} for _ in body["TransactItems"]]
        reasons[-1] = {"Code": "TransactionConflict"}
        return _Http(), {
            "Error": {"Code": "TransactionCanceledException", "Message": "conflict"},
            "CancellationReasons": reasons,
        }

    store.connection.client.meta.events.register(
        "before-call.dynamodb.TransactWriteItems", before_call
    )
    return seen


def inject_throttling(store: JobStore, times: int, operation: str) -> list[dict[str, Any]]:
    """Throttle the next ``times`` requests of ``operation`` (DynamoDB Local never throttles).

    Returns the intercepted request bodies, so a test can check their shape.
    """
    seen: list[dict[str, Any]] = []

    def before_call(params: dict[str, Any], **_: Any) -> tuple[_Http, dict[str, Any]] | None:
        seen.append(json.loads(params["body"]))
        if len(seen) > times:
            return None
        return _Http(), {
            "Error": {"Code": "ThrottlingException", "Message": "Rate of requests exceeded"}
        }

    store.connection.client.meta.events.register(f"before-call.dynamodb.{operation}", before_call)
    return seen
