"""Settings: the one place that reads the environment.

Defaults make the local stack work out of the box; on AWS the Lambda environment sets table
names and leaves ``SCHEDULER_DYNAMODB_ENDPOINT`` unset. AWS's standard
``AWS_ENDPOINT_URL_DYNAMODB`` is honoured as the same endpoint (``SCHEDULER_`` wins if both are
set), for the DynamoDB and the DynamoDB Streams clients alike.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from scheduler import resources
from scheduler.errors import ConfigurationError
from scheduler.stack_file import StackInfo

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Shipped in the package (a link to infra/template.yaml in the checkout): found when installed.
DEFAULT_TEMPLATE = resources.path_of(resources.TEMPLATE)
# The checkout's DynamoDB Local (`make setup`); elsewhere the user's cache (see from_env).
DEFAULT_DYNAMODB_LOCAL_DIR = PROJECT_ROOT / ".dynamodb-local"
# Where `scheduler up` keeps its data and its stack file, relative to the folder it runs in.
DEFAULT_DATA_DIR = Path(".scheduler")
LOCAL_REGION = "us-east-1"
# DynamoDB Local accepts any credentials; these are used only when none are configured and the
# endpoint is a local one, so that a fresh machine needs no AWS profile.
LOCAL_CREDENTIALS = ("local", "local")
# GitHub caps webhook payloads at 25 MB; anything larger is not a GitHub delivery.
DEFAULT_WEBHOOK_MAX_BODY_BYTES = 25 * 1024 * 1024
# The local HTTP server's bounds (see scheduler.api.app.ServerLimits for why these values).
DEFAULT_HTTP_MAX_CONNECTIONS = 64
DEFAULT_HTTP_REQUEST_TIMEOUT_SECONDS = 10.0
DEFAULT_HTTP_BODY_BUDGET_BYTES = 64 * 1024 * 1024
# A local run's log keeps at most this many bytes per attempt (its head and its tail).
DEFAULT_LOG_MAX_BYTES = 5 * 1024 * 1024
# The webhook's HMAC key: anybody who guesses it can queue builds, so a short or example value
# is refused at start-up (GitHub suggests a random string with high entropy; 32 characters of
# hex are 128 bits, e.g. `openssl rand -hex 32` gives 64).
WEBHOOK_SECRET_MIN_CHARS = 32
_TRUE = {"1", "true", "yes", "on"}


def _int(env: Mapping[str, str], name: str, default: str) -> int:
    value = env.get(name, default)
    try:
        return int(value)
    except ValueError:
        raise ConfigurationError(f"{name} must be an integer, not {value!r}") from None


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    number = _int(env, name, str(default))
    if number <= 0:
        raise ConfigurationError(f"{name} must be a positive integer, not {number}")
    return number


def _positive_seconds(env: Mapping[str, str], name: str, default: float) -> float:
    value = env.get(name, str(default))
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise ConfigurationError(f"{name} must be a positive number of seconds, not {value!r}")
    return seconds


def _dynamodb_local_dir(env: Mapping[str, str]) -> Path:
    """SCHEDULER_DYNAMODB_LOCAL_DIR; else the checkout's `.dynamodb-local/` when present; else
    the user's cache (XDG_CACHE_HOME or ~/.cache), where the first `scheduler up` installs it."""
    if env.get("SCHEDULER_DYNAMODB_LOCAL_DIR"):
        return Path(env["SCHEDULER_DYNAMODB_LOCAL_DIR"])
    if DEFAULT_DYNAMODB_LOCAL_DIR.is_dir():
        return DEFAULT_DYNAMODB_LOCAL_DIR
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    cache = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else home / ".cache"
    return cache / "dynamo-scheduler" / "dynamodb-local"


def _private_key_file(env: Mapping[str, str]) -> str | None:
    """The GitHub App's private key from SCHEDULER_GITHUB_APP_PRIVATE_KEY_FILE (never the key
    itself in the environment); an unreadable file stops the process, naming the path only."""
    name = env.get("SCHEDULER_GITHUB_APP_PRIVATE_KEY_FILE")
    if not name:
        return None
    try:
        return Path(name).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        problem = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a PEM file"
        raise ConfigurationError(
            f"SCHEDULER_GITHUB_APP_PRIVATE_KEY_FILE {name}: {problem}"
        ) from None


@dataclass(frozen=True)
class TableNames:
    jobs: str = "scheduler-jobs"
    repos: str = "scheduler-repos"
    # The local stream runner's checkpoints and its on-failure destination (DynamoDB Local).
    runner_state: str = "scheduler-runner-state"
    dead_letters: str = "scheduler-dead-letters"

    def with_prefix(self, prefix: str) -> TableNames:
        return TableNames(
            jobs=f"{prefix}{self.jobs}",
            repos=f"{prefix}{self.repos}",
            runner_state=f"{prefix}{self.runner_state}",
            dead_letters=f"{prefix}{self.dead_letters}",
        )


@dataclass(frozen=True)
class Settings:
    region: str = LOCAL_REGION
    dynamodb_endpoint: str | None = None
    tables: TableNames = field(default_factory=TableNames)
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    webhook_secret: str | None = field(default=None, repr=False)
    # Key of the MAC on pagination cursors; unset, a built-in key still detects tampering.
    cursor_secret: str | None = field(default=None, repr=False)
    # Bearer token of the read routes, the dashboard and the mutating routes (unset: none is
    # asked, and the local stack serves loopback only). Required on AWS.
    api_token: str | None = field(default=None, repr=False)
    config_path: Path | None = None
    template_path: Path = DEFAULT_TEMPLATE
    dynamodb_local_dir: Path = DEFAULT_DYNAMODB_LOCAL_DIR
    # `scheduler up`'s data directory, where the CLI looks for the stack file (stack.json).
    data_dir: Path = DEFAULT_DATA_DIR
    retention_days: int = 30
    # An active job whose run has not started is timed out after its timeout plus this grace.
    start_grace_seconds: int = 60
    # Local demos only: accept unsigned webhook deliveries when no secret is configured.
    allow_unsigned_webhooks: bool = False
    webhook_max_body_bytes: int = DEFAULT_WEBHOOK_MAX_BODY_BYTES
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    # The local HTTP server: connections served at once (more are answered 503), seconds to
    # receive one whole request (else 408), bytes of request bodies held over all connections.
    http_max_connections: int = DEFAULT_HTTP_MAX_CONNECTIONS
    http_request_timeout_seconds: float = DEFAULT_HTTP_REQUEST_TIMEOUT_SECONDS
    http_body_budget_bytes: int = DEFAULT_HTTP_BODY_BUDGET_BYTES
    # Bytes of output kept per local run attempt: the first half and the last half, with a
    # marker of what was cut between them.
    log_max_bytes: int = DEFAULT_LOG_MAX_BYTES
    # Commit statuses: posted only when a token is configured.
    github_token: str | None = field(default=None, repr=False)
    github_api_url: str = "https://api.github.com"
    # GitHub App mode (beside the token): the App's id and its private key (PEM), read from
    # SCHEDULER_GITHUB_APP_PRIVATE_KEY_FILE locally, from Secrets Manager on AWS.
    github_app_id: str | None = None
    github_app_private_key: str | None = field(default=None, repr=False)
    # The dashboard's address as GitHub should link to it (a check run's details_url); unset:
    # the local server's own address.
    dashboard_url: str | None = None
    # AWS runs: the CodeBuild project that builds a job (unset: runs are not started).
    codebuild_project: str | None = None
    # AWS: the project of builds that get run secrets, and the Secrets Manager name prefix of
    # those secrets (the run secret NAME is the secret <prefix>NAME).
    codebuild_secrets_project: str | None = None
    run_secrets_prefix: str = "scheduler/run-secrets/"
    # AWS: the stream mapping's on-failure queue (the template's StreamDeadLetterQueueUrl
    # output): ``scheduler dlq`` reads and replays it when no local stack is meant.
    stream_dlq_url: str | None = None
    # "xray": trace with AWS X-Ray (the default on Lambda); anything else: no tracing.
    tracing: str | None = None
    # Running inside AWS Lambda: no background threads (Lambda freezes them between calls).
    on_lambda: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        # AWS's own service-specific variable counts too (botocore would send the DynamoDB
        # client there but not the streams client, so both are pointed here, ours first).
        endpoint = (
            env.get("SCHEDULER_DYNAMODB_ENDPOINT") or env.get("AWS_ENDPOINT_URL_DYNAMODB") or None
        )
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
                runner_state=env.get("SCHEDULER_RUNNER_STATE_TABLE", TableNames.runner_state),
                dead_letters=env.get("SCHEDULER_DEAD_LETTER_TABLE", TableNames.dead_letters),
            ),
            access_key_id=key_id,
            secret_access_key=secret,
            session_token=env.get("AWS_SESSION_TOKEN") if endpoint is None else None,
            webhook_secret=env.get("GITHUB_WEBHOOK_SECRET") or None,
            cursor_secret=env.get("SCHEDULER_CURSOR_SECRET") or None,
            api_token=env.get("SCHEDULER_API_TOKEN") or None,
            config_path=Path(config) if config else None,
            template_path=Path(env.get("SCHEDULER_TEMPLATE", str(DEFAULT_TEMPLATE))),
            dynamodb_local_dir=_dynamodb_local_dir(env),
            data_dir=Path(env.get("SCHEDULER_DATA_DIR") or DEFAULT_DATA_DIR),
            retention_days=_int(env, "SCHEDULER_RETENTION_DAYS", "30"),
            start_grace_seconds=_int(env, "SCHEDULER_START_GRACE_SECONDS", "60"),
            allow_unsigned_webhooks=(
                env.get("SCHEDULER_ALLOW_UNSIGNED_WEBHOOKS", "").strip().lower() in _TRUE
            ),
            webhook_max_body_bytes=_int(
                env, "SCHEDULER_WEBHOOK_MAX_BODY_BYTES", str(DEFAULT_WEBHOOK_MAX_BODY_BYTES)
            ),
            http_host=env.get("SCHEDULER_HTTP_HOST", "127.0.0.1"),
            http_port=_int(env, "SCHEDULER_HTTP_PORT", "8080"),
            http_max_connections=_positive_int(
                env, "SCHEDULER_HTTP_MAX_CONNECTIONS", DEFAULT_HTTP_MAX_CONNECTIONS
            ),
            http_request_timeout_seconds=_positive_seconds(
                env, "SCHEDULER_HTTP_REQUEST_TIMEOUT_SECONDS", DEFAULT_HTTP_REQUEST_TIMEOUT_SECONDS
            ),
            http_body_budget_bytes=_positive_int(
                env, "SCHEDULER_HTTP_BODY_BUDGET_BYTES", DEFAULT_HTTP_BODY_BUDGET_BYTES
            ),
            log_max_bytes=_positive_int(env, "SCHEDULER_LOG_MAX_BYTES", DEFAULT_LOG_MAX_BYTES),
            github_token=env.get("SCHEDULER_GITHUB_TOKEN") or env.get("GITHUB_TOKEN") or None,
            github_api_url=env.get("SCHEDULER_GITHUB_API_URL", "https://api.github.com"),
            github_app_id=env.get("SCHEDULER_GITHUB_APP_ID") or None,
            github_app_private_key=_private_key_file(env),
            dashboard_url=env.get("SCHEDULER_DASHBOARD_URL") or None,
            codebuild_project=env.get("SCHEDULER_CODEBUILD_PROJECT") or None,
            codebuild_secrets_project=env.get("SCHEDULER_CODEBUILD_SECRETS_PROJECT") or None,
            run_secrets_prefix=env.get("SCHEDULER_RUN_SECRETS_PREFIX") or "scheduler/run-secrets/",
            stream_dlq_url=env.get("SCHEDULER_STREAM_DLQ_URL") or None,
            tracing=env.get("SCHEDULER_TRACING")
            or ("xray" if env.get("AWS_LAMBDA_FUNCTION_NAME") else None),
            on_lambda=bool(env.get("AWS_LAMBDA_FUNCTION_NAME")),
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

    def for_stack(self, stack: StackInfo) -> Settings:
        """These settings pointed at a running local stack (read from its stack file): its
        endpoint, region and tables, and its configuration unless one is set here. Always the
        stack's own key (or dummy credentials): real AWS credentials are never sent to a local
        emulator."""
        known = {
            name: stack.tables[name]
            for name in TableNames.__dataclass_fields__
            if name in stack.tables
        }
        return replace(
            self,
            dynamodb_endpoint=stack.dynamodb_endpoint,
            region=stack.region or self.region,
            tables=TableNames(**known),
            access_key_id=stack.access_key_id or LOCAL_CREDENTIALS[0],
            secret_access_key=stack.access_key_id or LOCAL_CREDENTIALS[1],
            session_token=None,
            config_path=self.config_path or (Path(stack.config) if stack.config else None),
        )
