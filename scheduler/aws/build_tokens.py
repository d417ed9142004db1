"""A CodeBuild build's git credential in GitHub App mode: where the installation token goes.

A build fetches its commit inside its own container, the container that then runs the
repository's code. So whatever credential the fetch uses, that code can reach too, and the
design keeps three things true:

- **Not in the request.** ``StartBuild``'s ``environmentVariablesOverride`` of type PLAINTEXT is
  shown to anyone with ``codebuild:BatchGetBuilds`` (the console, the CLI, the completion
  event), and a clone URL with the token in it is stored with the build. The token is put in
  a SecureString parameter of Systems Manager of its own, and the request names only the
  parameter (type ``PARAMETER_STORE``): CodeBuild puts the value in the build's environment
  when it starts. Chosen over Secrets Manager: a parameter costs nothing and is deleted at
  once (a secret is kept for a recovery window of at least a week).
- **Nothing to gain from it.** The token is bought for this build alone: one repository
  (the job's) and ``contents: read`` (GitHub's scoped installation token), not the App's
  checks and statuses rights, so code that reads it cannot forge a check or a status, nor read
  another repository of the installation; it expires within the hour. A fork's pull request
  gets none (it fetches as before, through CodeBuild's own source): it is someone else's code.
- **Out of reach of other builds.** The build role may read parameters under the stack's
  prefix but not list them, and each name is an HMAC of the attempt (``job_id#attempt``) under
  the App's private key: a build knows only its own name. The name is deterministic, so a
  ``StartBuild`` retried with the same ``idempotencyToken`` carries the same parameters.

The buildspec fetches the commit itself (``NO_SOURCE``): git gets the token through the
credential helper both runtimes use (:mod:`scheduler.git_credentials`: https to the GitHub host
only), then the variable is unset before the repository's command runs. The parameter is
deleted when the build's completion is reported (:func:`parameter_of`, from the build's own
environment in the event), or when the reaper finds the build ended and its event lost; one
left behind even so holds a token that expires within the hour. The token is not revoked
early: that is a request to GitHub with the token itself, from a function that loads no
GitHub client (the completion function's cold start).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from scheduler.git_credentials import CREDENTIAL_HELPER, HOST_VARIABLE, TOKEN_VARIABLE
from scheduler.runs.executor import RunRequest, StartRefused

__all__ = [
    "BUILD_TOKEN_PERMISSIONS",
    "CLONE_URL_VARIABLE",
    "BuildTokens",
    "fetch_command",
    "parameter_of",
    "parameter_prefix",
]

log = logging.getLogger(__name__)

BUILD_TOKEN_PERMISSIONS = {"contents": "read"}
CLONE_URL_VARIABLE = "SCHEDULER_CLONE_URL"
_HOST = re.compile(r"[a-z0-9.-]+(:[0-9]+)?")


def parameter_prefix(project: str) -> str:
    """Where a project's build tokens live in Parameter Store (the template grants this)."""
    return f"/{project}/git-tokens/"


def fetch_command(github_host: str) -> str:
    """The buildspec's command that fetches the job's commit with the build's token, then
    drops it (one line: nothing after it sees the variable). Payload values (URL, sha) are
    read from the environment, never written in here."""
    if not _HOST.fullmatch(github_host):
        raise ValueError(f"not a host name: {github_host[:60]!r}")
    # Only a build whose URL is https on the GitHub host gets here (BuildTokens.parameter_for).
    git = f"git -c credential.helper= -c {shlex.quote('credential.helper=' + CREDENTIAL_HELPER)}"
    return (
        f"export {HOST_VARIABLE}={shlex.quote(github_host)} GIT_TERMINAL_PROMPT=0;"
        f' git init -q . && {git} fetch -q --no-tags --depth 1 -- "${CLONE_URL_VARIABLE}"'
        ' "$SCHEDULER_SHA" && git checkout -q --detach "$SCHEDULER_SHA";'
        f" status=$?; unset {TOKEN_VARIABLE}; test $status -eq 0"
    )


def parameter_of(variables: Iterable[Mapping[str, Any]]) -> str | None:
    """The build token's parameter a build's environment names (the completion event's
    ``environment-variables`` or ``BatchGetBuilds``' ``environmentVariables``), or None."""
    for item in variables:
        if item.get("name") == TOKEN_VARIABLE and item.get("type") == "PARAMETER_STORE":
            value = item.get("value")
            return value if isinstance(value, str) and value else None
    return None


class BuildTokens:
    """Per-build tokens in Parameter Store: named, put before ``StartBuild``, deleted after."""

    def __init__(
        self,
        ssm: Callable[[], Any],
        prefix: str,
        *,
        buy: Callable[[str], str] | None = None,
        name_key: bytes = b"",
        github_host: str = "github.com",
    ) -> None:
        """``buy``: repository -> a token scoped to it (App mode; None: no build gets one).
        ``name_key``: what makes names unguessable (the App's private key)."""
        self._ssm = ssm
        self._client: Any = None
        self.prefix = prefix
        self._buy = buy
        self._name_key = name_key
        self.github_host = github_host.lower()

    @property
    def client(self) -> Any:
        if self._client is None:  # made on first use: a build without a token needs none
            self._client = self._ssm()
        return self._client

    def parameter_for(self, request: RunRequest) -> str | None:
        """The parameter of ``request``'s token (pure), or None when its build gets none: no
        App, no checkout, a fork's pull request, or a clone URL not on the GitHub host."""
        if self._buy is None or not request.checkout or request.fork or not request.clone_url:
            return None
        if not request.clone_url.lower().startswith(f"https://{self.github_host}/"):
            return None
        digest = hmac.new(self._name_key, request.idempotency_key.encode(), hashlib.sha256)
        return f"{self.prefix}{digest.hexdigest()[:40]}"

    def put(self, request: RunRequest, name: str) -> None:
        """Buy the build's token and keep it under ``name``. A token GitHub will not give, or
        a put Parameter Store refuses, is :class:`StartRefused` (the attempt fails as
        ``start_failed``, retried automatically); a throttled put is raised as is."""
        assert self._buy is not None
        try:
            token = self._buy(request.repo)
        except Exception as exc:  # GitHub's refusal, an outage, a rate limit: all the same here
            raise StartRefused(f"no GitHub App token for {request.repo}: {exc}") from None
        try:
            self.client.put_parameter(
                Name=name,
                Value=token,
                Type="SecureString",
                Overwrite=True,  # a retried start replaces its own
                Description=f"git token of build {request.idempotency_key}"[:1024],
            )
        except (ClientError, BotoCoreError) as exc:
            from scheduler.aws.codebuild import describe, is_retryable

            if is_retryable(exc):
                raise
            raise StartRefused(f"cannot keep the build's git token: {describe(exc)}") from None

    def discard(self, name: str | None) -> bool:
        """Delete the token's parameter (one of ours only); whether one was deleted."""
        if not name or not name.startswith(self.prefix):
            return False
        try:
            self.client.delete_parameter(Name=name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ParameterNotFound":
                return False  # a redelivered event: deleted already
            raise
        return True

    def variables(self, request: RunRequest, name: str) -> list[dict[str, str]]:
        """The build's environment for the fetch: the parameter's name, never its value."""
        return [
            {"name": TOKEN_VARIABLE, "value": name, "type": "PARAMETER_STORE"},
            {"name": CLONE_URL_VARIABLE, "value": request.clone_url or "", "type": "PLAINTEXT"},
        ]
