"""Which clone URL a payload may name, and the GitHub host the git token belongs to (pure).

A signed payload is GitHub's word about *which* repository changed, not about where to fetch it:
a ``repository.clone_url`` on another host would have the checkout fetch (and, with a token, log
in) wherever the payload says. So a payload's URL is taken only when it is the repository's own
on the GitHub host (``https://<host>/<full_name>`` with or without ``.git``); anything else
needs the operator's ``clone_url``.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

__all__ = ["CLONE_URL_NOT_ALLOWED", "DEFAULT_GITHUB_HOST", "allowed_clone_url", "github_host"]

DEFAULT_GITHUB_HOST = "github.com"
CLONE_URL_NOT_ALLOWED = "clone URL not allowed: configure clone_url for this repository"


def github_host(api_url: str) -> str:
    """The host repositories are cloned from, for the GitHub API at ``api_url``, lower-cased.

    ``https://api.github.com`` -> ``github.com``; GitHub Enterprise Server's
    ``https://ghe.example/api/v3`` -> ``ghe.example``; GHE.com's ``https://api.acme.ghe.com``
    -> ``acme.ghe.com``. A port in the URL stays part of the host (git names hosts that way).
    """
    parts = urlsplit(api_url.strip())
    host = parts.netloc.rpartition("@")[2].lower()
    if not host:
        return DEFAULT_GITHUB_HOST
    # A dedicated API host (api.github.com, api.<name>.ghe.com) serves at its root; an
    # Enterprise Server serves the API under /api/v3 of the host repositories live on.
    if host.startswith("api.") and parts.path.strip("/") == "":
        return host.removeprefix("api.")
    return host


def allowed_clone_url(url: str, repo: str, host: str) -> bool:
    """Whether ``url`` is ``https://<host>/<repo>`` or ``.../<repo>.git`` (any case)."""
    pattern = f"https://{re.escape(host)}/{re.escape(repo)}(?:\\.git)?"
    return re.fullmatch(pattern, url, flags=re.IGNORECASE | re.ASCII) is not None
