"""AWS executor: one CodeBuild build per attempt.

Why CodeBuild rather than Step Functions: a CI run *is* a build (source at a sha, logs in
CloudWatch, a timeout, a stop button), and ``StartBuild`` takes an ``idempotencyToken``, so a
retried start within its window returns the same build. Beyond that window the caller's claim
in DynamoDB (``JobStore.claim_run``) keeps it to one build per ``job_id#attempt``.

Completion flows back through EventBridge's "CodeBuild Build State Change" event into the
``build_completed`` handler, which reports through the same attempt-guarded transition.

Faults, and why each is handled where it is:

- ``StartBuild`` throttled, a 5xx, a lost connection: raised as is, so the stream record is
  tried again. The claim stands then with no build id recorded; the retried start finds it
  (:attr:`ClaimResult.CLAIMED_BEFORE_NOT_STARTED`) and calls ``StartBuild`` again with the same
  token, which returns the build of the first call if CodeBuild did start it (the token holds
  for five minutes; an older unfinished claim is left alone rather than risk a second build).
- ``StartBuild`` refused for good (bad input, no such project, an account limit, the source
  provider's credentials): :class:`StartRefused`, and the attempt fails as ``start_failed``,
  which is retried automatically.
- A completion event lost: the reaper asks :meth:`CodeBuildExecutor.result_of`
  (``BatchGetBuilds``) before it times a run out, and a finished build is reported as usual.
- A cancel (or timeout) that lands while ``StartBuild`` is in flight names only the claim
  (``job_id#attempt``), and the starter stops the build once it has its id. If the starter
  died between CodeBuild's answer and recording the id, nobody would: so a stop of a claim
  finds its build among the project's newest builds (``ListBuildsForProject``, newest first,
  then ``BatchGetBuilds``) by the environment every build of ours carries
  (``SCHEDULER_JOB_ID``, ``SCHEDULER_ATTEMPT``), and stops that; the claim counts as stopped
  only if no such build is among them (:data:`CLAIM_LOOKUP_PAGES`). Chosen over a second
  write before ``StartBuild``: the claim already is that write, and the build's own
  environment is the one record that cannot be lost between the two.
- ``StopBuild`` only asks: a stop counts once ``BatchGetBuilds`` no longer reports the build
  ``IN_PROGRESS`` (:meth:`stopped`); until then the slot stays held, and the reconciliation
  asks again each round. ``StopBuild`` refused for a build that already ended is the answer,
  not an outage (see :meth:`cancel`).

GitHub App mode: a build's fetch uses an installation token scoped to its repository, kept
in a parameter of its own that the request only names (:mod:`scheduler.aws.build_tokens`).

Secrets: a build whose repository names ``secrets`` runs in a second project
(:class:`SecretsProject`) whose role alone may read the run secrets in Secrets Manager; the
``StartBuild`` request names them (type ``SECRETS_MANAGER``), so their values are in neither
the job item nor the request. Every other build, a fork's pull request above all, runs in the
project whose role cannot read any secret: a build can use its role's credentials, so a
secret it is not given must be one its role cannot read.
"""

from __future__ import annotations

import json
import logging
import math
import shlex
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from scheduler.aws.build_tokens import BuildTokens, fetch_command, parameter_of
from scheduler.runs.executor import (
    UNCLAIMED,
    ClaimResult,
    RunClaim,
    RunRequest,
    RunResult,
    RunStatus,
    StartRefused,
)

log = logging.getLogger(__name__)

# CodeBuild's bounds for timeoutInMinutesOverride.
MIN_TIMEOUT_MINUTES, MAX_TIMEOUT_MINUTES = 5, 2160
FINAL_STATUSES = {"SUCCEEDED", "FAILED", "FAULT", "STOPPED", "TIMED_OUT"}

IDEMPOTENCY_WINDOW_MS = 4 * 60_000
"""How long after its claim an unfinished start is resumed with the same token: CodeBuild
honours an ``idempotencyToken`` for five minutes; a minute is left for clocks and slow calls."""

RETRYABLE_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
        "InternalServerError",
        "InternalServerException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
"""Error codes of a CodeBuild call that may pass: the same call is tried again later."""

CLAIM_LOOKUP_PAGES = 3
"""Pages of ``ListBuildsForProject`` (100 build ids each, newest first) searched for the build
of a claim that recorded no build id: a build started after its claim is among the project's
newest unless hundreds started after it (a stop is asked again each round meanwhile)."""

QUEUED_PHASES = frozenset({"SUBMITTED", "QUEUED"})
"""A build in these phases waits in CodeBuild's queue: it has not started, and its job's
timeout does not run (CodeBuild's own build timeout does not count queue time either)."""

LOOKUP_MEMO_SECONDS = 2.0
"""How long one ``BatchGetBuilds`` answer serves the reaper's questions about a build (what it
does, when it really started, how it ended): one request per judgement, not three."""

NOT_STOPPABLE_CODES = frozenset({"InvalidInputException", "ResourceNotFoundException"})
"""``StopBuild``'s answers for an id that names no build it can stop (ended, or unknown)."""


def source_override(request: RunRequest) -> dict[str, str]:
    """``StartBuild``'s source for the job's repository at its exact commit.

    The version names the ref and the sha (``refs/pull/7/head^{sha}``): CodeBuild then fetches
    only that ref, and a pull request's head (on no branch, maybe from a fork) is found at all.
    Raises :class:`StartRefused` when there is no https URL to give CodeBuild.
    """
    url = request.clone_url
    if not url or not url.startswith("https://"):
        raise StartRefused(
            f"no https clone URL for {request.repo}: CodeBuild builds GitHub repositories"
            " (set clone_url in the repository configuration, or checkout = false)"
        )
    host = url.removeprefix("https://").split("/", 1)[0].lower()
    version = f"{request.ref}^{{{request.sha}}}" if request.ref else request.sha
    return {
        "sourceTypeOverride": "GITHUB" if host == "github.com" else "GITHUB_ENTERPRISE",
        "sourceLocationOverride": url,
        "sourceVersion": version,
    }


class _CannotTell(Exception):
    """CodeBuild refused to describe a build (asking again as is cannot help)."""


@dataclass(frozen=True)
class SecretsProject:
    """The project of builds that get secrets, and where their secrets are kept: the run
    secret ``NAME`` is the Secrets Manager secret ``<prefix>NAME``."""

    project: str
    prefix: str


class CodeBuildExecutor:
    def __init__(
        self,
        client: Any,
        project_name: str,
        *,
        secrets: SecretsProject | None = None,
        git_tokens: BuildTokens | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._project = project_name
        self._secrets = secrets
        self.git_tokens = git_tokens  # App mode: each build's own scoped git token
        self._monotonic = monotonic
        self._seen: dict[str, tuple[float, Mapping[str, Any] | None]] = {}

    def start_build_kwargs(self, request: RunRequest) -> dict[str, Any]:
        minutes = math.ceil(request.timeout_seconds / 60)
        kwargs: dict[str, Any] = {
            "projectName": self._project_for(request),
            "sourceVersion": request.sha,
            "idempotencyToken": request.idempotency_key,
            "timeoutInMinutesOverride": max(MIN_TIMEOUT_MINUTES, min(minutes, MAX_TIMEOUT_MINUTES)),
            # Payload values travel as data, never inside the buildspec.
            "environmentVariablesOverride": [
                {"name": name, "value": value, "type": "PLAINTEXT"}
                for name, value in sorted(request.environment().items())
            ]
            + self._secret_variables(request),
        }
        commands: list[str] = []
        token = self._token_parameter(request)
        if token is not None and self.git_tokens is not None:
            # The build fetches its commit itself, with a token the request only names.
            kwargs["sourceTypeOverride"] = "NO_SOURCE"
            kwargs["environmentVariablesOverride"] += self.git_tokens.variables(request, token)
            commands.append(fetch_command(self.git_tokens.github_host))
        elif request.checkout:
            kwargs.update(source_override(request))
        if request.command:
            # The command is operator configuration; quoting keeps each argv item one word.
            # After a fetch, on the fetch's line: the shell that unset the token runs it.
            command = shlex.join(request.command)
            commands = [f"{commands[0]} && {command}"] if commands else [command]
        if commands:
            kwargs["buildspecOverride"] = "version: 0.2\nphases:\n  build:\n    commands:\n" + (
                "".join(f"      - {json_quote(command)}\n" for command in commands)
            )
        return kwargs

    def _token_parameter(self, request: RunRequest) -> str | None:
        return self.git_tokens.parameter_for(request) if self.git_tokens is not None else None

    def _project_for(self, request: RunRequest) -> str:
        if not request.secrets:
            return self._project
        if self._secrets is None:
            raise StartRefused(
                f"{request.repo} names secrets and this deployment has no project for builds"
                " with secrets (SCHEDULER_CODEBUILD_SECRETS_PROJECT)"
            )
        return self._secrets.project

    def _secret_variables(self, request: RunRequest) -> list[dict[str, str]]:
        if not request.secrets or self._secrets is None:
            return []
        prefix = self._secrets.prefix
        return [
            {"name": name, "value": f"{prefix}{name}", "type": "SECRETS_MANAGER"}
            for name in request.secrets
        ]

    def start(self, request: RunRequest, claim: RunClaim = UNCLAIMED) -> str | None:
        """One build for the attempt: ``StartBuild`` with the token ``job_id#attempt``.

        A claim left by an interrupted start of this attempt is resumed with the same token
        (CodeBuild answers with the first call's build if there was one). Raises
        :class:`StartRefused` if CodeBuild refuses the build for good; errors that may pass
        are raised as they are (the caller tries again).
        """
        claimed = claim.take(resumable_for_ms=IDEMPOTENCY_WINDOW_MS)
        if claimed is ClaimResult.TAKEN:
            return None
        if claimed is ClaimResult.CLAIMED_BEFORE_NOT_STARTED:
            log.warning(
                "an earlier StartBuild of this attempt got no answer: asking again with its token",
                extra={"job_id": request.job_id, "attempt": request.attempt},
            )
        kwargs = self.start_build_kwargs(request)
        token = self._token_parameter(request)
        if token is not None and self.git_tokens is not None:
            self.git_tokens.put(request, token)  # before the build that reads it starts
        try:
            response = self._client.start_build(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            if is_retryable(exc):
                raise
            raise StartRefused(f"CodeBuild refused the build: {describe(exc)}") from exc
        return str(response["build"]["id"])

    def cancel(self, run_id: str) -> None:
        """Stop build ``run_id``; nothing to do if there is no such build to stop.

        A claim whose build id is not recorded yet names no build (the starter stops the build
        it then gets, see :meth:`RunStarter.start`), and a build that already ended, or never
        existed, cannot be stopped: CodeBuild's refusal is the answer, not a failure. Raised,
        it would look like an outage to the stream function, which would retry the cancel's
        record for as long as it may, and never free the slot the cancel kept. Errors that
        may pass (throttled, a 5xx, no connection) are raised: the record is tried again.
        """
        if not is_build_id(run_id):
            try:
                build = self._build_of_claim(run_id)
            except _CannotTell as exc:
                log.warning("cannot look for the build of a claim: %s", exc)
                return
            if build is None or build.get("buildStatus") != "IN_PROGRESS":
                log.info("no build runs for this claim: nothing to stop", extra={"run_id": run_id})
                return
            run_id = str(build["id"])
            log.warning(
                "stopping the build of a claim that recorded none", extra={"run_id": run_id}
            )
        self._seen.pop(run_id, None)
        try:
            self._client.stop_build(id=run_id)
        except ClientError as exc:
            if _code(exc) not in NOT_STOPPABLE_CODES:
                raise
            log.info("build not stopped: %s", describe(exc), extra={"run_id": run_id})

    def stopped(self, run_id: str) -> bool:
        """Whether build ``run_id`` ended, asked of CodeBuild (``BatchGetBuilds``): StopBuild
        only asks, and the build runs until CodeBuild reports it no longer ``IN_PROGRESS``.

        A build CodeBuild does not know never ran. A claim whose build id was never recorded
        is looked for among the project's newest builds (see the module's faults); it counts
        as stopped if none of them is its build. When CodeBuild refuses to tell, the build is
        not known stopped: asked again later.
        """
        try:
            build = self._build(run_id) if is_build_id(run_id) else self._build_of_claim(run_id)
        except _CannotTell as exc:
            log.warning("CodeBuild cannot tell whether a build ended: %s", exc)
            return False
        return build is None or build.get("buildStatus") != "IN_PROGRESS"

    def status(self, run_id: str) -> RunStatus:
        """What CodeBuild says of the run ``run_id`` (a build id, or a claim that recorded
        none): WAITING while the build is queued (its timeout has not begun), RUNNING once it
        left the queue, UNSTARTED for a claim with no build (its start never succeeded).
        UNKNOWN for a build that ended (the reaper asks how: :meth:`result_of`), one
        CodeBuild does not know, or when CodeBuild cannot tell now."""
        try:
            build = self._recent(run_id)
        except (ClientError, BotoCoreError, _CannotTell) as exc:
            log.warning("CodeBuild cannot tell how a run goes: %s", exc)
            return RunStatus.UNKNOWN
        if build is None:
            return RunStatus.UNKNOWN if is_build_id(run_id) else RunStatus.UNSTARTED
        if build.get("buildStatus") != "IN_PROGRESS":
            return RunStatus.UNKNOWN
        return (
            RunStatus.WAITING if build.get("currentPhase") in QUEUED_PHASES else RunStatus.RUNNING
        )

    def started_at(self, run_id: str) -> int | None:
        """When the build of ``run_id`` really started (epoch ms): the start of its first
        phase after CodeBuild's queue. None while it is queued, or when it cannot be told."""
        try:
            build = self._recent(run_id)
        except (ClientError, BotoCoreError, _CannotTell):
            return None
        for phase in (build or {}).get("phases") or []:
            if phase.get("phaseType") not in QUEUED_PHASES and phase.get("startTime"):
                return _epoch_ms(phase["startTime"])
        return None

    def _recent(self, run_id: str) -> Mapping[str, Any] | None:
        """The build of ``run_id`` as CodeBuild described it within the last moments (one
        answer serves a judgement's questions; :meth:`stopped` always asks afresh)."""
        now = self._monotonic()
        seen = self._seen.get(run_id)
        if seen is not None and now - seen[0] < LOOKUP_MEMO_SECONDS:
            return seen[1]
        build = self._build(run_id) if is_build_id(run_id) else self._build_of_claim(run_id)
        if len(self._seen) > 1000:
            self._seen.clear()
        self._seen[run_id] = (now, build)
        return build

    def result_of(self, run_id: str) -> RunResult | None:
        """How build ``run_id`` ended, asked of CodeBuild (``BatchGetBuilds``): the reaper asks
        before it times a run out, as the build's completion event may have been lost.

        None while the build runs, for a claim whose build id was never recorded, and when
        CodeBuild refuses to tell (the reaper then decides alone); errors that may pass are
        raised (the reaper asks again on its next round).
        """
        if not is_build_id(run_id):
            return None  # an idempotency key (``job_id#attempt``): no build recorded
        try:
            build = self._recent(run_id)
        except _CannotTell as exc:
            log.warning("CodeBuild cannot tell how a build ended: %s", exc)
            return None
        result = result_from_build(build) if build is not None else None
        if result is not None and build is not None:
            self._discard_token(build)  # its completion event (which would have) was lost
        return result

    def _discard_token(self, build: Mapping[str, Any]) -> None:
        """Delete the git token parameter an ended build names (App mode); a failure is only
        logged: the token expires within the hour anyway."""
        if self.git_tokens is None:
            return
        variables = (build.get("environment") or {}).get("environmentVariables") or []
        try:
            self.git_tokens.discard(parameter_of(variables))
        except (ClientError, BotoCoreError) as exc:
            log.warning("build git token not deleted: %s", describe(exc))

    def _build(self, run_id: str) -> Mapping[str, Any] | None:
        """Build ``run_id`` as ``BatchGetBuilds`` describes it (None: CodeBuild does not know
        it). Errors that may pass are raised as they are; a refusal is :class:`_CannotTell`."""
        try:
            response = self._client.batch_get_builds(ids=[run_id])
        except (ClientError, BotoCoreError) as exc:
            if is_retryable(exc):
                raise
            raise _CannotTell(describe(exc)) from exc
        builds = response.get("builds") or []
        return next((build for build in builds if build.get("id") == run_id), None)

    def _build_of_claim(self, key: str) -> Mapping[str, Any] | None:
        """The build started for the claim ``key`` (``job_id#attempt``) among the newest
        builds of this deployment's projects, or None. Errors that may pass are raised; a
        refusal is :class:`_CannotTell`."""
        job_id, _, attempt = key.rpartition("#")
        wanted = {"SCHEDULER_JOB_ID": job_id, "SCHEDULER_ATTEMPT": attempt}
        projects = [self._project] + ([self._secrets.project] if self._secrets else [])
        for project in projects:
            token: str | None = None
            for _ in range(CLAIM_LOOKUP_PAGES):
                try:
                    page = self._client.list_builds_for_project(
                        projectName=project,
                        sortOrder="DESCENDING",
                        **({"nextToken": token} if token else {}),
                    )
                    ids = list(page.get("ids") or [])
                    builds = self._client.batch_get_builds(ids=ids)["builds"] if ids else []
                except (ClientError, BotoCoreError) as exc:
                    if is_retryable(exc):
                        raise
                    raise _CannotTell(describe(exc)) from exc
                for build in builds:
                    variables = (build.get("environment") or {}).get("environmentVariables")
                    values = {item.get("name"): item.get("value") for item in variables or []}
                    if all(values.get(name) == value for name, value in wanted.items()):
                        return dict(build)
                token = page.get("nextToken")
                if not token:
                    break
        return None

    def log_location(self, request: RunRequest) -> str | None:
        return None  # known only once the build exists: the console shows the run id


def _epoch_ms(value: object) -> int | None:
    """A CodeBuild time (boto3 parses them into ``datetime``) as epoch milliseconds."""
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, int | float):
        return int(value * 1000)
    return None


def json_quote(text: str) -> str:
    """A YAML double-quoted scalar (JSON string syntax is valid YAML)."""
    return json.dumps(text)


def is_build_id(run_id: str) -> bool:
    """Whether ``run_id`` names a build (``project:uuid``) rather than a claim that recorded
    none yet (``job_id#attempt``; job ids have no colon)."""
    return ":" in run_id and "#" not in run_id


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_retryable(exc: Exception) -> bool:
    """Whether a failed CodeBuild call may succeed if made again (throttled, a 5xx, no
    connection), as opposed to a request CodeBuild refuses for what it is."""
    if isinstance(exc, ClientError):
        code = _code(exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return code in RETRYABLE_CODES or status >= 500 or status == 429
    if isinstance(exc, ParamValidationError):
        return False  # refused before it was sent: the same request fails the same way
    return isinstance(exc, BotoCoreError)


def describe(exc: Exception) -> str:
    """A short reason for a failed call: its error code and message."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}"[:200]
    return str(exc)[:200]


def build_variables(event: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The environment variables a "CodeBuild Build State Change" event says its build had."""
    detail = event.get("detail") or {}
    info = detail.get("additional-information") or {}
    return list((info.get("environment") or {}).get("environment-variables") or [])


def result_from_event(event: Mapping[str, Any]) -> RunResult | None:
    """The run result a "CodeBuild Build State Change" event carries, or None.

    Events for builds we did not start (no SCHEDULER_JOB_ID) or that have not finished are
    ignored.
    """
    detail = event.get("detail") or {}
    return _result(
        detail.get("build-status"), build_variables(event), str(detail.get("build-id", ""))
    )


def result_from_build(build: Mapping[str, Any]) -> RunResult | None:
    """The run result of a build as ``BatchGetBuilds`` describes it, or None (not finished,
    or not one of ours)."""
    return _result(
        build.get("buildStatus"),
        (build.get("environment") or {}).get("environmentVariables") or [],
        str(build.get("id", "")),
    )


def _result(
    status: object, variables: Iterable[Mapping[str, Any]], build_id: str
) -> RunResult | None:
    """A finished build's result, from its status and environment variables (pure).

    ``STOPPED`` is reported as cancelled: our cancel is why a build stops, and otherwise
    (a stop from the console) the starter fails the still-active attempt as ``stopped``.
    """
    if not isinstance(status, str) or status not in FINAL_STATUSES:
        return None
    values = {item.get("name"): item.get("value") for item in variables}
    job_id, attempt = values.get("SCHEDULER_JOB_ID"), values.get("SCHEDULER_ATTEMPT")
    if not job_id or not attempt or not str(attempt).isdigit():
        return None
    return RunResult(
        job_id=job_id,
        attempt=int(attempt),
        exit_code=0 if status == "SUCCEEDED" else (None if status != "FAILED" else 1),
        timed_out=status == "TIMED_OUT",
        cancelled=status == "STOPPED",
        summary=f"CodeBuild {status.lower()}: {build_id}"[:140],
    )
