"""The stack file: how a CLI command run from a folder finds the ``scheduler up`` started there.

``scheduler up`` writes ``<data dir>/stack.json`` once the stack is ready (a temporary file
renamed into place, so a reader never sees half of one) and removes it on a clean stop. A
SIGKILL leaves it behind: the pid in it tells a running stack from a stale file. It is readable
by its owner only: it holds the access key of the stack's DynamoDB Local, without which the
tables cannot be seen (the webhook secret stays in the environment of whoever signs deliveries).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scheduler.errors import ConfigurationError

__all__ = ["STACK_FILE_NAME", "StackInfo", "path_in", "pid_alive", "read", "remove", "write"]

STACK_FILE_NAME = "stack.json"
_FORMAT = 1


@dataclass(frozen=True)
class StackInfo:
    """What a running local stack tells the CLI about itself."""

    pid: int
    url: str  # the HTTP server (webhook, query and log routes)
    dynamodb_endpoint: str
    region: str
    data_dir: str  # absolute
    tables: dict[str, str] = field(default_factory=dict)  # TableNames' fields -> names
    config: str | None = None  # absolute path of the repository configuration, if any
    started_at: float = 0.0  # epoch seconds
    # The key the stack's own DynamoDB Local keeps its tables under (None: a shared database).
    access_key_id: str | None = field(default=None, repr=False)

    def running(self) -> bool:
        return pid_alive(self.pid)

    def to_json(self) -> str:
        return json.dumps({"format": _FORMAT, **asdict(self)}, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> StackInfo:
        data: Any = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        data.pop("format", None)
        info = cls(**data)
        if not (isinstance(info.pid, int) and info.pid > 0 and info.url and info.dynamodb_endpoint):
            raise ValueError("pid, url or dynamodb_endpoint missing")
        return info


def path_in(data_dir: Path) -> Path:
    return data_dir / STACK_FILE_NAME


def write(data_dir: Path, info: StackInfo) -> Path:
    """Write the stack file atomically (temporary file in the same folder, then rename)."""
    target = path_in(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".stack-", suffix=".json", dir=data_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(info.to_json())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def read(data_dir: Path) -> StackInfo | None:
    """The stack file of ``data_dir``, or None when there is none.

    An unreadable or malformed file is a :class:`ConfigurationError` naming it: guessing
    (AWS, or some default port) could send commands to the wrong place.
    """
    path = path_in(data_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigurationError(f"cannot read the stack file {path}: {exc.strerror}") from exc
    try:
        return StackInfo.from_json(text)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(
            f"the stack file {path} is not one `scheduler up` wrote ({exc}): remove it,"
            " and start the stack with `scheduler up`"
        ) from exc


def remove(data_dir: Path, pid: int) -> None:
    """Remove the stack file if it is still the one process ``pid`` wrote."""
    try:
        current = read(data_dir)
    except ConfigurationError:
        return
    if current is not None and current.pid == pid:
        path_in(data_dir).unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (killed, not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: it exists
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux): existence is all we know
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]
