"""Secrets come from Secrets Manager by ARN; a failure names the ARN, never a value."""

from __future__ import annotations

import boto3
import pytest
from botocore.stub import Stubber

from scheduler.aws.secrets import resolve_secrets
from scheduler.errors import ConfigurationError
from scheduler.settings import Settings

ARN = "arn:aws:secretsmanager:us-east-1:1:secret:webhook-AbCdEf"
LONG = "s3cret-value-of-at-least-32-chars"


def client() -> object:
    return boto3.client(
        "secretsmanager",
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
    )


def test_the_named_secrets_fill_their_settings() -> None:
    secrets = client()
    with Stubber(secrets) as stub:
        stub.add_response("get_secret_value", {"SecretString": LONG + "\n"}, {"SecretId": ARN})
        settings = resolve_secrets(
            Settings(github_token="kept"), {"SCHEDULER_WEBHOOK_SECRET_ARN": ARN}, secrets
        )
        stub.assert_no_pending_responses()
    assert settings.webhook_secret == LONG
    assert settings.github_token == "kept" and settings.cursor_secret is None


def test_an_unreadable_secret_stops_the_start_with_its_arn_not_its_value() -> None:
    secrets = client()
    with Stubber(secrets) as stub:
        stub.add_client_error("get_secret_value", "AccessDeniedException", "no")
        with pytest.raises(ConfigurationError, match="AccessDeniedException") as caught:
            resolve_secrets(Settings(), {"SCHEDULER_CURSOR_SECRET_ARN": ARN}, secrets)
    assert ARN in str(caught.value) and "SCHEDULER_CURSOR_SECRET_ARN" in str(caught.value)


def test_a_short_webhook_secret_stops_the_start_with_its_arn_not_its_value() -> None:
    secrets = client()
    short = "x" * 31
    with Stubber(secrets) as stub:
        stub.add_response("get_secret_value", {"SecretString": short}, {"SecretId": ARN})
        with pytest.raises(ConfigurationError, match="at least 32 characters") as caught:
            resolve_secrets(Settings(), {"SCHEDULER_WEBHOOK_SECRET_ARN": ARN}, secrets)
    message = str(caught.value)
    assert ARN in message and "SCHEDULER_WEBHOOK_SECRET_ARN" in message and short not in message
