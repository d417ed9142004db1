"""Repository configuration: one TOML file, validated whole at start-up.

The file says which repositories are accepted, which branches (and tags) are built, what a job
runs and with which limits. Key names are fixed by DESIGN.md::

    accept = ["octo-org/*", "someone/tool"]      # glob patterns of OWNER/REPO; absent = all

    [defaults]
    command = ["make", "test"]                   # argv list, never a shell string
    branches = ["*"]                             # glob patterns of branch names to build
    tags = []                                    # glob patterns of tag names (none by default)
    timeout_seconds = 1800
    concurrency = 2
    status_context = "ci/scheduler"
    priority = 0                                 # lower runs first among queued jobs
    checkout = true                              # a fresh checkout of the commit (false: empty dir)
    mask_env = ["NPM_TOKEN"]                     # values masked as *** in logs shown and statuses
    supersede = "off"                            # "queued": a new push (PR head) cancels the
                                                 # branch's (PR's) older queued jobs; "all":
                                                 # its older running ones too (runs stopped)
    fork_pull_requests = "approve"               # fork PRs wait for `scheduler approve`;
                                                 # "run": built at once; "skip": never built
    secrets = ["NPM_TOKEN"]                      # handed to runs (never to a fork's run)
    sandbox = "on"                               # each run in a namespace sandbox (bubblewrap)
    network = true                               # a sandboxed run may use the network
    sandbox_paths = ["/srv/ci-cache"]            # host folders shared read-write with runs
    pipeline = "repo"                            # the commit's .scheduler/pipeline.yml when it
                                                 # has one; "config": always `command` alone

    [defaults.retry]
    attempts = 1
    on = ["timed_out"]

    [repos."octo-org/api"]                       # overrides, key by key
    command = ["./ci.sh"]
    clone_url = "/srv/git/api.git"               # fetched from (default: the payload's https URL)

Keys, types, ranges and choices are the JSON Schema ``config_schema.json`` (package data,
validated by :mod:`scheduler.config_schema`). A bad file is one :class:`ConfigurationError`
naming the file, the key and the first problem (unknown keys too, so a typo never silently means
"default"; ``retry.on = ["timeout"]`` is refused, not a retry that never happens);
``scheduler config check FILE`` lists every problem with its line. Without a file the built-in
default applies: accept every repository, build every branch with ``make test``.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

from scheduler.config_schema import Problem, validate
from scheduler.errors import ConfigurationError
from scheduler.repo_name import canonical_repo

__all__ = [
    "DEFAULT_CONFIG",
    "FORK_MODES",
    "PIPELINE_MODES",
    "RETRY_REASONS",
    "SANDBOX_MODES",
    "SUPERSEDE_MODES",
    "ForkMode",
    "PipelineMode",
    "Problem",
    "RepoPolicy",
    "RepositoryConfig",
    "RetryPolicy",
    "SandboxMode",
    "SupersedeMode",
    "check_document",
    "load_config",
    "parse_config",
]

SupersedeMode = Literal["off", "queued", "all"]
"""Which older jobs of a branch (or pull request) a newer job cancels as ``superseded``."""
SUPERSEDE_MODES: tuple[SupersedeMode, ...] = ("off", "queued", "all")

ForkMode = Literal["approve", "run", "skip"]
"""What a pull request from a fork gets: held for an operator's approval, built, or ignored."""
FORK_MODES: tuple[ForkMode, ...] = ("approve", "run", "skip")

PipelineMode = Literal["repo", "config"]
"""Where a job's pipeline comes from: the commit's ``.scheduler/pipeline.yml`` when it has one
("repo"), or always the operator's ``command`` as one step ("config")."""
PIPELINE_MODES: tuple[PipelineMode, ...] = ("repo", "config")

SandboxMode = Literal["on", "off"]
SANDBOX_MODES: tuple[SandboxMode, ...] = ("on", "off")
# The failure reasons ``retry.on`` may name (``runner_lost`` and ``start_failed`` are retried
# anyway, apart from the policy); ``cancelled`` and ``superseded`` end no job as failed.
RETRY_REASONS = ("exit_code", "timed_out", "error", "runner_lost", "start_failed")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Automatic retries: ``attempts`` in total (1 = none), for the failure reasons in ``on``."""

    attempts: int = 1
    on: tuple[str, ...] = ("timed_out",)
    # Seconds before the n-th automatic retry starts: backoff_seconds * 2 ** (n - 1).
    backoff_seconds: int = 0

    def allows(self, attempt: int, reason: str | None) -> bool:
        """Whether a failure of ``attempt`` for ``reason`` is retried automatically."""
        return attempt < self.attempts and (reason or "") in self.on

    def delay_seconds(self, attempt: int) -> float:
        """How long the run of ``attempt`` (an automatic retry, so >= 2) waits to start."""
        if attempt < 2 or not self.backoff_seconds:
            return 0.0
        return float(min(self.backoff_seconds * 2 ** (attempt - 2), 3600))


@dataclass(frozen=True, slots=True)
class RepoPolicy:
    """How one repository is built (the defaults, with that repository's overrides applied)."""

    command: tuple[str, ...] = ("make", "test")
    branches: tuple[str, ...] = ("*",)
    tags: tuple[str, ...] = ()
    timeout_seconds: int = 1800
    concurrency: int = 2
    status_context: str = "ci/scheduler"
    priority: int = 0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # Run in a fresh checkout of the job's commit (False: an empty folder).
    checkout: bool = True
    # Where the repository is fetched from; None: the payload's https clone URL.
    clone_url: str | None = None
    # Environment variables whose values are masked (``***``) in what a run's output shows:
    # the stored summary, the commit status, the log route and ``scheduler logs``.
    mask_env: tuple[str, ...] = ()
    # What a newer job of a branch or pull request cancels of its older jobs.
    supersede: SupersedeMode = "off"
    # Pull requests whose head is another repository: hostile code until an operator says.
    fork_pull_requests: ForkMode = "approve"
    # Names of secrets a run gets as environment variables (never a fork's run).
    secrets: tuple[str, ...] = ()
    # Every run in a sandbox of its own; "off" runs commands as the scheduler's user can.
    sandbox: SandboxMode = "on"
    # Whether a sandboxed run may use the network (builds fetch dependencies).
    network: bool = True
    # Host folders a sandboxed run may read and write (shared build caches), absolute paths.
    sandbox_paths: tuple[str, ...] = ()
    # Whether the commit's pipeline file is honoured ("repo") or only ``command`` ("config").
    pipeline: PipelineMode = "repo"

    def builds_branch(self, branch: str) -> bool:
        return any(fnmatchcase(branch, pattern) for pattern in self.branches)

    def builds_tag(self, tag: str) -> bool:
        return any(fnmatchcase(tag, pattern) for pattern in self.tags)


@dataclass(frozen=True, slots=True)
class RepositoryConfig:
    """The whole file. Repository names compare case-insensitively, as on GitHub."""

    accept: tuple[str, ...] | None = None
    defaults: RepoPolicy = field(default_factory=RepoPolicy)
    repos: Mapping[str, RepoPolicy] = field(default_factory=dict)
    source: str = "<built-in default>"

    def accepts(self, repo: str) -> bool:
        if self.accept is None:
            return True
        name = repo.lower()
        return any(fnmatchcase(name, pattern.lower()) for pattern in self.accept)

    def policy(self, repo: str) -> RepoPolicy:
        return self.repos.get(repo.lower(), self.defaults)


DEFAULT_CONFIG = RepositoryConfig()


def load_config(path: Path | None) -> RepositoryConfig:
    """The configuration in ``path``, or the built-in default when ``path`` is None."""
    if path is None:
        return DEFAULT_CONFIG
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read repository configuration {path}: {exc}") from exc
    return parse_config(text, source=str(path))


def parse_config(text: str, *, source: str = "<string>") -> RepositoryConfig:
    """The configuration in ``text``; a bad file is one :class:`ConfigurationError` naming its
    first problem (``scheduler config check`` lists them all, with their lines)."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{source}: invalid TOML: {exc}") from exc
    problems = check_document(document)
    if problems:
        first = problems[0]
        more = len(problems) - 1
        tail = f" (and {more} more: `scheduler config check` lists them)" if more else ""
        raise ConfigurationError(f"{source}: key '{first.key}': {first.message}{tail}")
    return _build(document, source)


def check_document(document: Mapping[str, Any]) -> list[Problem]:
    """Every problem of a parsed file: the schema's (``config_schema.json``: keys, types,
    ranges, choices), then what a schema cannot say (a repository listed twice)."""
    problems = validate(document)
    repos = document.get("repos")
    if isinstance(repos, dict):
        seen: set[str] = set()
        for name in repos:
            repo = canonical_repo(name)
            if repo is not None and repo in seen:
                problems.append(
                    Problem(
                        ("repos", name),
                        f"repos.{json.dumps(name, ensure_ascii=False)}",
                        "repository listed twice (names are case-insensitive)",
                    )
                )
            seen.add(repo or name)
    return problems


def _build(document: Mapping[str, Any], source: str) -> RepositoryConfig:
    """The configuration of a document already checked (nothing here can fail)."""
    accept = tuple(document["accept"]) if "accept" in document else None
    defaults = _policy(document.get("defaults", {}), RepoPolicy())
    repos = {
        str(canonical_repo(name)): _policy(overrides, defaults)
        for name, overrides in document.get("repos", {}).items()
    }
    return RepositoryConfig(accept=accept, defaults=defaults, repos=repos, source=source)


def _policy(table: Mapping[str, Any], base: RepoPolicy) -> RepoPolicy:
    changes = {key: _frozen(value) for key, value in table.items() if key != "retry"}
    if "retry" in table:
        retry = {key: _frozen(value) for key, value in table["retry"].items()}
        changes["retry"] = replace(base.retry, **retry)
    return replace(base, **changes)


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value
