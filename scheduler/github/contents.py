"""The AWS runtime's pipeline file reader: GitHub's contents API at the job's commit.

``GET /repos/{owner}/{repo}/contents/.scheduler/pipeline.yml?ref=<sha>`` with
``Accept: application/vnd.github.raw+json`` answers the file's bytes as they are (no base64,
no JSON around them). The credential is the one the deployment has: the operator's token
(``SCHEDULER_GITHUB_TOKEN``), or in GitHub App mode the repository's installation token (the
App asks for contents: read). Only two answers decide anything:

- 200: the file, refused unread past 64 KiB (``Content-Length``, else counted while read);
  a JSON list is a folder at that path, which fails the pipeline;
- 404: no such file at that commit (GitHub says 404 for a repository the token cannot see
  too: the one-step pipeline then runs, as a job did before pipelines).

Anything else (5xx, a timeout, a connection refused, a rate limit, a refused credential) is
:class:`~scheduler.errors.PipelineUnavailable`: the file is not known now, which is neither a
missing file nor a bad one; the engine asks again later (GitHub's wait, when it asked one).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import quote

from scheduler.errors import DomainError, PipelineFileError, PipelineUnavailable
from scheduler.github.api import api_client
from scheduler.github.rate_limits import RateLimited, wait_asked
from scheduler.pipelines import CommitRef, PipelineFileReader, file_too_large

if TYPE_CHECKING:
    import httpx

    from scheduler.settings import Settings

__all__ = ["RAW_MEDIA_TYPE", "ContentsPipelineReader", "contents_reader_for"]

RAW_MEDIA_TYPE = "application/vnd.github.raw+json"
# An error answer's body is read for its message only this far (it is GitHub's JSON).
ERROR_BODY_BYTES = 4096

AuthorizationFor = Callable[[str], "str | None"]
"""Repository -> the Authorization header's value (None: ask without a credential)."""


class ContentsPipelineReader:
    """A :class:`~scheduler.pipelines.PipelineFileReader` over GitHub's contents API."""

    def __init__(
        self,
        authorization_for: AuthorizationFor,
        *,
        api_url: str = "https://api.github.com",
        timeout_seconds: float = 10.0,
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._authorization_for = authorization_for
        self._client = client or api_client(
            api_url, accept=RAW_MEDIA_TYPE, timeout_seconds=timeout_seconds
        )
        self._clock = clock

    def read(self, commit: CommitRef, path: str, max_bytes: int) -> bytes | None:
        import httpx

        def unavailable(why: str, wait: float | None = None) -> PipelineUnavailable:
            return PipelineUnavailable(commit.repo, commit.sha, why, wait)

        try:
            authorization = self._authorization_for(commit.repo)
        except RateLimited as exc:
            raise unavailable(f"no token: {exc}", exc.wait_seconds) from exc
        except DomainError as exc:  # GitHub unreachable or the App not installed there
            raise unavailable(f"no token: {exc}") from exc
        headers = {"Accept": RAW_MEDIA_TYPE}
        if authorization:
            headers["Authorization"] = authorization
        url = f"/repos/{commit.repo}/contents/{quote(path)}"
        try:
            with self._client.stream(
                "GET", url, params={"ref": commit.sha}, headers=headers
            ) as response:
                if response.status_code == 200:
                    return _file(response, path, max_bytes)
                message = _message(response)
                if response.status_code == 404:
                    return None
                lower = {name.lower(): value for name, value in response.headers.items()}
                wait = wait_asked(response.status_code, lower, message, now=self._clock())
                shown = f"GitHub answered HTTP {response.status_code}"
                if message:
                    shown += f": {message[:200]}"
                raise unavailable(shown, wait)
        except httpx.HTTPError as exc:  # a timeout, a refused or broken connection
            # The credential is never in the message: only the kind of failure is.
            raise unavailable(f"GitHub could not be reached ({type(exc).__name__})") from None


def _file(response: httpx.Response, path: str, max_bytes: int) -> bytes:
    """The body of a 200 answer, refused once it is known to be over ``max_bytes``."""
    if response.headers.get("content-type", "").startswith("application/json"):
        # The raw media type gives a file's bytes; GitHub lists a folder as JSON instead.
        raise PipelineFileError("not a file but a folder", None, path)
    length = response.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise file_too_large(int(length), max_bytes, path)
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > max_bytes:  # no (or a false) length: stop reading at the limit
            raise file_too_large(None, max_bytes, path)
        chunks.append(chunk)
    return b"".join(chunks)


def _message(response: httpx.Response) -> str:
    """GitHub's ``message`` of an error answer (read up to a few KiB), else ""."""
    body = b""
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) >= ERROR_BODY_BYTES:
            break
    try:
        decoded = json.loads(body[:ERROR_BODY_BYTES])
    except ValueError:
        return ""
    found = decoded.get("message") if isinstance(decoded, dict) else None
    return found if isinstance(found, str) else ""


def contents_reader_for(settings: Settings) -> ContentsPipelineReader:
    """The reader with the credential this deployment has: in GitHub App mode the
    repository's installation token, else the operator's token, else none (public
    repositories only)."""
    from scheduler.github.app_mode import github_app

    app = github_app(settings)
    if app is not None:
        authorization_for: AuthorizationFor = app.auth.authorization_for
    elif settings.github_token:
        bearer = f"Bearer {settings.github_token}"
        authorization_for = lambda _repo: bearer  # noqa: E731
    else:
        authorization_for = lambda _repo: None  # noqa: E731
    return ContentsPipelineReader(authorization_for, api_url=settings.github_api_url)


def _is_a_reader(reader: ContentsPipelineReader) -> PipelineFileReader:
    return reader  # mypy holds the class to the port the engine calls
