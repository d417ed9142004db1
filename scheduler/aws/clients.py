"""boto3 clients for the AWS services other than DynamoDB (CodeBuild, ...).

Each service gets its own endpoint: AWS's default for the region, never the DynamoDB endpoint
(``SCHEDULER_DYNAMODB_ENDPOINT`` points at DynamoDB Local in tests, and nothing else lives
there). DynamoDB clients come from :mod:`scheduler.db.clients`.
"""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

from scheduler.settings import Settings

__all__ = ["aws_client"]


def aws_client(service: str, settings: Settings) -> Any:
    if service in ("dynamodb", "dynamodbstreams"):
        raise ValueError("DynamoDB clients come from scheduler.db.clients")
    return boto3.session.Session().client(
        service,
        region_name=settings.region,
        config=Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5),
    )
