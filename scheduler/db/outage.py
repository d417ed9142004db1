"""Is a failure the database's? (unreachable, throttled, a 5xx, transactions contended)

The stream processor must tell the database's failures from its own: a record that failed
because DynamoDB was gone for a minute is not a bad record. It waits and is tried again until
the database is back, and never counts toward the retry limit or lands in the dead-letter table.
Only a request DynamoDB *rejects* (it would fail again just the same) is the caller's failure.
"""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError
from pynamodb.exceptions import PynamoDBException

from scheduler.errors import DomainError, StoreUnavailable

__all__ = ["REJECTIONS", "error_code", "is_outage"]

REJECTIONS = frozenset(
    {
        "ValidationException",
        "SerializationException",
        "ItemCollectionSizeLimitExceededException",
        "ConditionalCheckFailedException",
    }
)
"""Error codes that say the request itself is wrong: retrying it cannot help."""


def is_outage(exc: BaseException) -> bool:
    """True if ``exc`` (or what caused it) says the database could not do the work now."""
    seen: set[int] = set()
    current: BaseException | None = exc
    outage = False
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ClientError):
            return error_code(current) not in REJECTIONS
        if isinstance(current, BotoCoreError):
            return True  # connection refused or reset, timeouts: nothing reached the table
        if isinstance(current, PynamoDBException):
            code = current.cause_response_code
            if code is not None:
                return code not in REJECTIONS
            # No response: a connection failure carries its cause; DoesNotExist and the
            # attribute errors carry none and are not the database's failure.
            current = current.cause
        elif isinstance(current, StoreUnavailable):
            outage = True  # ours: no finer cause known (a contended transaction)
            current = current.__cause__ or current.__context__
        elif isinstance(current, DomainError):
            return False  # a decision (refused, not found, malformed), not an outage
        else:
            current = current.__cause__  # only what it says caused it, not what it replaced
    return outage


def error_code(exc: ClientError) -> str:
    """The AWS error code of a botocore ``ClientError`` ("" if it has none)."""
    return str(exc.response.get("Error", {}).get("Code", ""))
