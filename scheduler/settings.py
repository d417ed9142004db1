"""Settings: the one place that reads the environment.

Defaults make the local stack work out of the box; on AWS the Lambda environment sets table
names and leaves ``SCHEDULER_DYNAMODB_ENDPOINT`` unset.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TEMPLATE = PROJECT_ROOT / "infra" / "template.yaml"
DEFAULT_DYNAMODB_LOCAL_DIR = PROJECT_ROOT / ".dynamodb-local"
LOCAL_REGION = "us-east-1"
# DynamoDB Local accepts any credentials; these are used only when none are configured and the
# endpoint is a local one, so that a fresh machine needs no AWS profile.
LOCAL_CREDENTIALS = ("local", "local")


@dataclass(frozen=True)
class TableNames:
    jobs: str = "scheduler-jobs"
    repos: str = "scheduler-repos"

    def with_prefix(self, prefix: str) -> TableNames:
        return TableNames(jobs=f"{prefix}{self.jobs}", repos=f"{prefix}{self.repos}")


@dataclass(frozen=True)
class Settings:
    region: str = LOCAL_REGION
    dynamodb_endpoint: str | None = None
    tables: TableNames = field(default_factory=TableNames)
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    webhook_secret: str | None = field(default=None, repr=False)
    config_path: Path | None = None
    template_path: Path = DEFAULT_TEMPLATE
    dynamodb_local_dir: Path = DEFAULT_DYNAMODB_LOCAL_DIR
    retention_days: int = 30

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        endpoint = env.get("SCHEDULER_DYNAMODB_ENDPOINT") or None
        key_id = env.get("AWS_ACCESS_KEY_ID")
        secret = env.get("AWS_SECRET_ACCESS_KEY")
        if endpoint and not (key_id and secret):
            key_id, secret = LOCAL_CREDENTIALS
        config = env.get("SCHEDULER_CONFIG")
        return cls(
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or LOCAL_REGION,
            dynamodb_endpoint=endpoint,
            tables=TableNames(
                jobs=env.get("SCHEDULER_JOBS_TABLE", TableNames.jobs),
                repos=env.get("SCHEDULER_REPOS_TABLE", TableNames.repos),
            ),
            access_key_id=key_id,
            secret_access_key=secret,
            session_token=env.get("AWS_SESSION_TOKEN") if endpoint is None else None,
            webhook_secret=env.get("GITHUB_WEBHOOK_SECRET") or None,
            config_path=Path(config) if config else None,
            template_path=Path(env.get("SCHEDULER_TEMPLATE", str(DEFAULT_TEMPLATE))),
            dynamodb_local_dir=Path(
                env.get("SCHEDULER_DYNAMODB_LOCAL_DIR", str(DEFAULT_DYNAMODB_LOCAL_DIR))
            ),
            retention_days=int(env.get("SCHEDULER_RETENTION_DAYS", "30")),
        )

    def for_local(self, endpoint: str, tables: TableNames | None = None) -> Settings:
        """These settings pointed at a DynamoDB Local endpoint."""
        return replace(
            self,
            dynamodb_endpoint=endpoint,
            tables=tables or self.tables,
            access_key_id=self.access_key_id or LOCAL_CREDENTIALS[0],
            secret_access_key=self.secret_access_key or LOCAL_CREDENTIALS[1],
        )
