"""The OpenAPI 3.1 description of every HTTP route, served at ``GET /openapi.json``.

The document is kept in the repository as ``openapi.json`` (package data), written by hand
beside the routes: a test holds it to the router (every route it has is described) and to the
application (every response it describes is produced over real HTTP, bodies checked against
its schemas). It is read on the first request only, so no Lambda cold start pays for it.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["MEDIA_TYPE", "document", "document_text"]

MEDIA_TYPE = "application/json"


@cache
def document_text() -> str:
    """The document as shipped (served as is)."""
    return resources.files("scheduler.api").joinpath("openapi.json").read_text("utf-8")


def document() -> dict[str, Any]:
    """The document, parsed."""
    parsed: dict[str, Any] = json.loads(document_text())
    return parsed
