"""Which failures are the database's (wait and retry) and which are the caller's (fail)."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from pynamodb.exceptions import DoesNotExist, PutError, QueryError

from scheduler.db.outage import is_outage
from scheduler.db.store import StoreContended
from scheduler.errors import BatchInterrupted, MalformedStreamRecord, StoreUnavailable
from state_machines import TransitionConflict


def client_error(code: str, status: int = 400) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "UpdateItem",
    )


def wrapped(cause: BaseException) -> StoreUnavailable:
    try:
        raise StoreUnavailable("the store failed") from cause
    except StoreUnavailable as exc:
        return exc


@pytest.mark.parametrize(
    ("exc", "outage"),
    [
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), True),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), True),
        (client_error("ProvisionedThroughputExceededException"), True),
        (client_error("ThrottlingException"), True),
        (client_error("InternalServerError", 500), True),
        (client_error("ValidationException"), False),
        (client_error("ConditionalCheckFailedException"), False),
        (wrapped(client_error("RequestLimitExceeded")), True),
        (wrapped(client_error("ValidationException")), False),
        (wrapped(EndpointConnectionError(endpoint_url="http://x")), True),
        (PutError("put failed", client_error("ThrottlingException")), True),
        (QueryError("query failed", EndpointConnectionError(endpoint_url="http://x")), True),
        (PutError("put failed", client_error("ItemCollectionSizeLimitExceededException")), False),
        (DoesNotExist(), False),
        (StoreContended("contended"), True),
        (BatchInterrupted("42", "down"), True),
        (TransitionConflict("j", "pass", "moved"), False),
        (MalformedStreamRecord("42", "no status"), False),
        (ValueError("a bug in the handler"), False),
        (KeyError("status"), False),
    ],
)
def test_failures_are_classified(exc: BaseException, outage: bool) -> None:
    assert is_outage(exc) is outage


def test_an_error_raised_while_handling_an_outage_is_not_one() -> None:
    # A refusal raised inside an ``except`` of a throttle is a decision, not an outage.
    try:
        try:
            raise client_error("ThrottlingException")
        except ClientError:
            raise ValueError("bad record") from None
    except ValueError as exc:
        assert not is_outage(exc)
