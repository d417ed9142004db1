"""The streams client reads GetRecords' JSON as sent; a garbled answer is botocore's error."""

from __future__ import annotations

import botocore.session
import pytest
from botocore.exceptions import BotoCoreError

from scheduler.db.clients import _LambdaShapedRecords

OUTPUT = (
    botocore.session.get_session()
    .get_service_model("dynamodbstreams")
    .operation_model("GetRecords")
    .output_shape
)


def parse(body: bytes, status: int = 200) -> dict[str, object]:
    parser = _LambdaShapedRecords().create_parser("json")
    return dict(parser.parse({"status_code": status, "headers": {}, "body": body}, OUTPUT))


def test_records_come_as_sent() -> None:
    body = b'{"Records": [{"dynamodb": {"ApproximateCreationDateTime": 1.7e9}}]}'
    parsed = parse(body)
    assert parsed["Records"] == [{"dynamodb": {"ApproximateCreationDateTime": 1.7e9}}]
    assert parsed["ResponseMetadata"] == {"RequestId": "", "HTTPStatusCode": 200, "HTTPHeaders": {}}


def test_a_garbled_answer_is_a_botocore_error_it_retries() -> None:
    with pytest.raises(BotoCoreError, match="unreadable GetRecords answer"):
        parse(b'{"Records": [')


def test_an_error_answer_goes_through_botocore() -> None:
    body = b'{"__type": "com.amazonaws#ExpiredIteratorException", "message": "old"}'
    assert parse(body, status=400)["Error"]["Code"] == "ExpiredIteratorException"  # type: ignore[index]
