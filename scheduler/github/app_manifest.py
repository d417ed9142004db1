"""The GitHub App manifest: what the scheduler's App asks for, so an operator creates it in two
clicks (GitHub's "Registering a GitHub App from a manifest" flow).

Permissions: checks write (check runs), contents read (the commit and the pipeline file),
metadata read (always required), pull requests read, statuses write (commit statuses).
Events: check_run, check_suite, pull_request and push. GitHub delivers ``installation`` and
``installation_repositories`` to every App without a subscription (its manifest refuses them
in ``default_events``), so they are named in :data:`ALWAYS_DELIVERED` instead.
"""

from __future__ import annotations

import html
import json
from typing import Any

__all__ = [
    "ALWAYS_DELIVERED",
    "EVENTS",
    "PERMISSIONS",
    "creation_page",
    "manifest",
]

PERMISSIONS = {
    "checks": "write",
    "contents": "read",
    "metadata": "read",
    "pull_requests": "read",
    "statuses": "write",
}
EVENTS = ("check_run", "check_suite", "pull_request", "push")
ALWAYS_DELIVERED = ("installation", "installation_repositories")


def manifest(name: str, url: str, *, webhook_url: str | None = None) -> dict[str, Any]:
    """The manifest of an App named ``name`` whose scheduler answers at ``url``."""
    base = url.rstrip("/")
    return {
        "name": name,
        "url": base,
        "hook_attributes": {"url": webhook_url or f"{base}/webhook", "active": True},
        "public": False,
        "default_permissions": dict(PERMISSIONS),
        "default_events": list(EVENTS),
    }


def creation_page(document: dict[str, Any], *, github_url: str = "https://github.com") -> str:
    """An HTML page whose one button posts ``document`` to GitHub's App creation form."""
    action = html.escape(f"{github_url.rstrip('/')}/settings/apps/new", quote=True)
    value = html.escape(json.dumps(document), quote=True)
    return (
        "<!doctype html>\n<meta charset=utf-8>\n<title>Create the scheduler's GitHub App</title>\n"
        f'<form action="{action}" method="post">\n'
        f'<input type="hidden" name="manifest" value="{value}">\n'
        '<button type="submit">Create the GitHub App on GitHub</button>\n</form>\n'
    )
