"""boto3 clients of DynamoDB and its streams, built from settings (endpoint, region,
credentials in one place). Other AWS services get their own clients (``scheduler.aws.clients``):
the DynamoDB endpoint is DynamoDB's alone."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

from scheduler.settings import Settings

__all__ = ["DYNAMODB_SERVICES", "client"]

DYNAMODB_SERVICES = frozenset({"dynamodb", "dynamodbstreams"})


def client(service: str, settings: Settings, *, max_pool_connections: int = 32) -> Any:
    """A client of ``dynamodb`` or ``dynamodbstreams`` at the settings' endpoint."""
    if service not in DYNAMODB_SERVICES:
        raise ValueError(
            f"{service} is not DynamoDB: its client must not use the DynamoDB endpoint"
        )
    return boto3.session.Session().client(
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
