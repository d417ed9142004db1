"""Where the CLI talks: an explicit endpoint, the local stack started from this folder, or AWS.

Precedence for DynamoDB: ``SCHEDULER_DYNAMODB_ENDPOINT``, then the stack file in the data
directory (``SCHEDULER_DATA_DIR``, default ``.scheduler``), then AWS through boto3's default
chain. A stack file whose process is gone is an error, never a quiet fall back to AWS: a user
who started a local stack must not read or change AWS tables by accident. Every description
says which one was chosen and why, for ``--verbose`` and for error lines.
"""

from __future__ import annotations

from dataclasses import dataclass

from scheduler import stack_file
from scheduler.errors import StackNotRunning
from scheduler.settings import Settings
from scheduler.stack_file import StackInfo

__all__ = ["Target", "WebhookTarget", "resolve", "running_stack", "webhook_target"]


@dataclass(frozen=True)
class Target:
    """Settings pointed at the chosen DynamoDB, and a description of that choice."""

    settings: Settings
    where: str
    stack: StackInfo | None = None
    # Said on stderr even without --verbose: AWS chosen in a folder where a local stack lived.
    warning: str | None = None


@dataclass(frozen=True)
class WebhookTarget:
    url: str
    where: str


def running_stack(settings: Settings) -> StackInfo | None:
    """The stack of the settings' data directory if it has a stack file; None if it has none.

    Raises :class:`StackNotRunning` when the file's process is gone.
    """
    stack = stack_file.read(settings.data_dir)
    if stack is not None and not stack.running():
        raise StackNotRunning(
            str(settings.data_dir), stack.pid, str(stack_file.path_in(settings.data_dir))
        )
    return stack


def _stack_origin(settings: Settings, stack: StackInfo) -> str:
    return f"local stack from {stack_file.path_in(settings.data_dir)}, pid {stack.pid}"


def resolve(settings: Settings) -> Target:
    """The DynamoDB the CLI uses with ``settings`` (read from the environment)."""
    if settings.dynamodb_endpoint is not None:
        where = f"DynamoDB at {settings.dynamodb_endpoint} (SCHEDULER_DYNAMODB_ENDPOINT)"
        return Target(settings, where)
    stack = running_stack(settings)
    if stack is not None:
        where = f"DynamoDB at {stack.dynamodb_endpoint} ({_stack_origin(settings, stack)})"
        return Target(settings.for_stack(stack), where, stack)
    where = (
        f"DynamoDB on AWS (region {settings.region}; no local stack in {settings.data_dir},"
        " no SCHEDULER_DYNAMODB_ENDPOINT)"
    )
    warning = None
    if (settings.data_dir / "dynamodb").is_dir():  # a stack ran here and was stopped
        warning = (
            f"no local stack is running from {settings.data_dir} (start it with `scheduler up`):"
            f" using DynamoDB on AWS (region {settings.region})"
        )
    return Target(settings, where, warning=warning)


def webhook_target(settings: Settings, url: str | None) -> WebhookTarget:
    """The scheduler's HTTP URL: ``url`` if given, else the local stack's, else the default
    ``http://SCHEDULER_HTTP_HOST:SCHEDULER_HTTP_PORT``."""
    if url:
        return WebhookTarget(url.rstrip("/"), f"{url} (--url)")
    stack = running_stack(settings)
    if stack is not None:
        return WebhookTarget(stack.url, f"{stack.url} ({_stack_origin(settings, stack)})")
    default = f"http://{settings.http_host}:{settings.http_port}"
    return WebhookTarget(default, f"{default} (default; no local stack in {settings.data_dir})")
