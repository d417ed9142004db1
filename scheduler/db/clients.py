"""boto3 clients of DynamoDB and its streams, built from settings (endpoint, region,
credentials in one place). Other AWS services get their own clients (``scheduler.aws.clients``):
the DynamoDB endpoint is DynamoDB's alone."""

from __future__ import annotations

import json
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import ResponseStreamingError
from botocore.model import Shape
from botocore.parsers import JSONParser, ResponseParserFactory

from scheduler.settings import Settings

__all__ = ["DYNAMODB_SERVICES", "client"]

DYNAMODB_SERVICES = frozenset({"dynamodb", "dynamodbstreams"})


def client(service: str, settings: Settings, *, max_pool_connections: int = 32) -> Any:
    """A client of ``dynamodb`` or ``dynamodbstreams`` at the settings' endpoint."""
    if service not in DYNAMODB_SERVICES:
        raise ValueError(
            f"{service} is not DynamoDB: its client must not use the DynamoDB endpoint"
        )
    core = botocore.session.get_session()
    if service == "dynamodbstreams":
        core.register_component("response_parser_factory", _LambdaShapedRecords())
    return boto3.session.Session(botocore_session=core).client(
        service,
        region_name=settings.region,
        endpoint_url=settings.dynamodb_endpoint,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        aws_session_token=settings.session_token,
        config=Config(
            max_pool_connections=max_pool_connections,
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=5,
            read_timeout=30,
        ),
    )


class _RecordsAsSent(JSONParser):  # type: ignore[misc]  # botocore has no types
    """``GetRecords`` answers as the stream sent them: its JSON is Lambda's record shape
    (base64 binary values, epoch creation times), and botocore's walk of every attribute value
    of every image cost more of the stack's CPU than any other step of a record (over ten times
    ``json.loads``). Every other answer, errors included, goes through botocore as before."""

    def parse(self, response: dict[str, Any], shape: Shape | None) -> dict[str, Any]:
        if shape is None or shape.name != "GetRecordsOutput" or response["status_code"] >= 300:
            return dict(super().parse(response, shape))
        try:
            parsed = dict(json.loads(response["body"] or b"{}"))
        except ValueError as exc:  # a BotoCoreError that botocore retries, as a cut-off read
            raise ResponseStreamingError(error=f"unreadable GetRecords answer: {exc}") from exc
        headers = response["headers"]
        parsed["ResponseMetadata"] = {
            "RequestId": headers.get("x-amzn-requestid", ""),
            "HTTPStatusCode": response["status_code"],
            "HTTPHeaders": headers,
        }
        return parsed


class _LambdaShapedRecords(ResponseParserFactory):  # type: ignore[misc]
    def create_parser(self, protocol_name: str) -> Any:
        if protocol_name == "json":
            return _RecordsAsSent(**self._defaults)
        return super().create_parser(protocol_name)
