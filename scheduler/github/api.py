"""One HTTP client for GitHub's REST API: its headers, its errors, its rate limits.

Every request carries ``Accept: application/vnd.github+json`` and the API version GitHub's
docs are written for; the caller names the credential (an App's JWT as ``Bearer``, an
installation token as ``token``). A response GitHub asks to wait after raises
:class:`~scheduler.github.rate_limits.RateLimited`; any other refusal :class:`GitHubApiError`
with the status and GitHub's message, never the credential.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from scheduler import tracing
from scheduler.errors import DomainError
from scheduler.github.rate_limits import RateLimited, wait_asked

__all__ = ["API_VERSION", "MEDIA_TYPE", "GitHubApi", "GitHubApiError", "api_client"]

MEDIA_TYPE = "application/vnd.github+json"
API_VERSION = "2022-11-28"
USER_AGENT = "dynamo-scheduler"


def api_client(api_url: str, *, accept: str, timeout_seconds: float) -> httpx.Client:
    """An HTTP client for GitHub's REST API at ``api_url`` (traced when tracing is on), with
    the headers every request carries: ``accept``, the API version and our user agent."""
    tracing.trace_httpx()
    return httpx.Client(
        base_url=api_url.rstrip("/"),
        timeout=timeout_seconds,
        headers={"Accept": accept, "X-GitHub-Api-Version": API_VERSION, "User-Agent": USER_AGENT},
    )


class GitHubApiError(DomainError):
    """GitHub refused a request (or could not be reached: ``status`` 0)."""

    http_status = 502

    def __init__(self, method: str, path: str, status: int, message: str) -> None:
        shown = f"HTTP {status}" if status else "unreachable"
        super().__init__(f"GitHub {method} {path}: {shown}: {message[:200]}")
        self.status = status


class GitHubApi:
    def __init__(
        self,
        api_url: str = "https://api.github.com",
        *,
        timeout_seconds: float = 10.0,
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client or api_client(
            api_url, accept=MEDIA_TYPE, timeout_seconds=timeout_seconds
        )
        self._clock = clock
        # When a successful answer spent the window's last request: no request before this.
        self._exhausted_until = 0.0

    def request(
        self,
        method: str,
        path: str,
        *,
        authorization: str,
        json: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """The decoded JSON answer (None for an empty one) of a successful request."""
        try:
            response = self._client.request(
                method,
                path,
                json=json,
                params=params,
                headers={"Authorization": authorization},
            )
        except httpx.HTTPError as exc:
            raise GitHubApiError(method, path, 0, type(exc).__name__) from None
        message = ""
        if not response.is_success:
            message = _message(response)
        headers = {name.lower(): value for name, value in response.headers.items()}
        wait = wait_asked(response.status_code, headers, message, now=self._clock())
        if not response.is_success:
            if wait is not None:
                raise RateLimited(wait, f"GitHub {method} {path}: HTTP {response.status_code}")
            raise GitHubApiError(method, path, response.status_code, message)
        if wait is not None:  # done, but the next one would be refused until the reset
            self._exhausted_until = max(self._exhausted_until, self._clock() + wait)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise GitHubApiError(method, path, response.status_code, "not JSON") from None

    def pause_seconds(self) -> float:
        """Seconds to wait before the next request (the primary window is spent), else 0."""
        return max(0.0, self._exhausted_until - self._clock())

    def close(self) -> None:
        self._client.close()


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return ""
