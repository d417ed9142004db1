"""The one rule for repository names, and their canonical (lower-case) form.

GitHub compares ``OWNER/NAME`` case-insensitively, so ``Octo/API`` and ``octo/api`` are one
repository: every name that enters the system (a payload, a route, a CLI argument, the
configuration) goes through :func:`canonical_repo`, and only the canonical form reaches a key
(slot counters, indexes, trigger guards), so one repository never gets two slot pools.
"""

from __future__ import annotations

import re

__all__ = ["REPO_NAME", "canonical_repo"]

# GitHub's OWNER/NAME: an owner of letters, digits and inner hyphens (at most 39); a name of
# letters, digits, '-', '_' and '.', but never '.' or '..'. Used with fullmatch only (a
# trailing newline is not a name).
REPO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,38}/(?!\.\.?$)[A-Za-z0-9_.-]{1,100}")


def canonical_repo(name: object) -> str | None:
    """``name`` lower-cased if it is a valid ``OWNER/NAME``, else None (the caller says why)."""
    if not isinstance(name, str) or REPO_NAME.fullmatch(name) is None:
        return None
    return name.lower()
