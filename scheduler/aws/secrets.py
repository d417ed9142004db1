"""Secrets from AWS Secrets Manager, read once per cold start (never template parameters or
plain environment values): the environment names each secret by ARN, and the value lands in
the settings field it belongs to. A secret that cannot be read stops the function from
starting, with the ARN and AWS's error code, never the value."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from scheduler.errors import ConfigurationError
from scheduler.settings import WEBHOOK_SECRET_MIN_CHARS, Settings

__all__ = ["SECRET_ARNS", "resolve_secrets"]

SECRET_ARNS = {
    "SCHEDULER_WEBHOOK_SECRET_ARN": "webhook_secret",
    "SCHEDULER_GITHUB_TOKEN_ARN": "github_token",
    "SCHEDULER_CURSOR_SECRET_ARN": "cursor_secret",
    "SCHEDULER_API_TOKEN_ARN": "api_token",
    "SCHEDULER_GITHUB_APP_PRIVATE_KEY_ARN": "github_app_private_key",
}
"""Environment variable holding a secret's ARN -> the settings field its value fills."""


def resolve_secrets(settings: Settings, environ: Mapping[str, str], client: Any) -> Settings:
    """``settings`` with every secret the environment names read from Secrets Manager."""
    values: dict[str, str] = {}
    for variable, field_name in SECRET_ARNS.items():
        arn = environ.get(variable)
        if not arn:
            continue
        try:
            secret = client.get_secret_value(SecretId=arn)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            raise ConfigurationError(f"cannot read secret {arn} ({variable}): {code}") from None
        except BotoCoreError as exc:
            raise ConfigurationError(f"cannot read secret {arn} ({variable}): {exc}") from None
        value = str(secret.get("SecretString") or "").strip()
        if field_name == "webhook_secret" and len(value) < WEBHOOK_SECRET_MIN_CHARS:
            # Anybody who guesses the webhook's key can queue builds (the value is never shown).
            raise ConfigurationError(
                f"secret {arn} ({variable}) is {len(value)} characters long: a webhook secret"
                f" needs at least {WEBHOOK_SECRET_MIN_CHARS} characters"
            )
        if value:
            values[field_name] = value
    return replace(
        settings,
        webhook_secret=values.get("webhook_secret", settings.webhook_secret),
        github_token=values.get("github_token", settings.github_token),
        cursor_secret=values.get("cursor_secret", settings.cursor_secret),
        api_token=values.get("api_token", settings.api_token),
        github_app_private_key=values.get(
            "github_app_private_key", settings.github_app_private_key
        ),
    )
