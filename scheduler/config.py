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

    [defaults.retry]
    attempts = 1
    on = ["timed_out"]

    [repos."octo-org/api"]                       # overrides, key by key
    command = ["./ci.sh"]
    clone_url = "/srv/git/api.git"               # fetched from (default: the payload's https URL)

A bad file is one :class:`ConfigurationError` naming the file and the key (unknown keys too,
so a typo never silently means "default"). Without a file the built-in default applies:
accept every repository, build every branch with ``make test``.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

from scheduler.errors import ConfigurationError
from scheduler.repo_name import canonical_repo

__all__ = [
    "DEFAULT_CONFIG",
    "ForkMode",
    "RepoPolicy",
    "RepositoryConfig",
    "RetryPolicy",
    "SandboxMode",
    "SupersedeMode",
    "load_config",
    "parse_config",
]

MAX_TIMEOUT_SECONDS = 7 * 24 * 3600

SupersedeMode = Literal["off", "queued", "all"]
"""Which older jobs of a branch (or pull request) a newer job cancels as ``superseded``."""
SUPERSEDE_MODES: tuple[SupersedeMode, ...] = ("off", "queued", "all")

ForkMode = Literal["approve", "run", "skip"]
"""What a pull request from a fork gets: held for an operator's approval, built, or ignored."""
FORK_MODES: tuple[ForkMode, ...] = ("approve", "run", "skip")

SandboxMode = Literal["on", "off"]
SANDBOX_MODES: tuple[SandboxMode, ...] = ("on", "off")
# Secrets a run may receive are named like environment variables.
_SECRET_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,127}")


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
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{source}: invalid TOML: {exc}") from exc
    return _Parser(source).config(document)


class _Parser:
    """Validates a parsed TOML document; every error names the file and the dotted key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, message: str) -> ConfigurationError:
        return ConfigurationError(f"{self.source}: key '{key}': {message}")

    def config(self, document: dict[str, Any]) -> RepositoryConfig:
        self.no_unknown_keys(document, {"accept", "defaults", "repos"}, "")
        accept = None
        if "accept" in document:
            accept = self.patterns(document["accept"], "accept")
        defaults_table = self.table(document.get("defaults", {}), "defaults")
        defaults = self.policy(defaults_table, RepoPolicy(), "defaults")
        repos: dict[str, RepoPolicy] = {}
        for name, overrides in self.table(document.get("repos", {}), "repos").items():
            key = f'repos."{name}"'
            repo = canonical_repo(name)
            if repo is None:
                raise self.fail(key, "repository names are OWNER/NAME")
            if repo in repos:
                raise self.fail(key, "repository listed twice (names are case-insensitive)")
            repos[repo] = self.policy(self.table(overrides, key), defaults, key)
        return RepositoryConfig(accept=accept, defaults=defaults, repos=repos, source=self.source)

    def policy(self, table: dict[str, Any], base: RepoPolicy, prefix: str) -> RepoPolicy:
        known = {f.name for f in fields(RepoPolicy)}
        self.no_unknown_keys(table, known, prefix)
        changes: dict[str, Any] = {}
        for key, value in table.items():
            path = f"{prefix}.{key}"
            if key == "retry":
                changes[key] = self.retry(self.table(value, path), base.retry, path)
            else:
                changes[key] = self.policy_value(key, value, path)
        return replace(base, **changes)

    def policy_value(self, key: str, value: object, path: str) -> Any:
        """One key of a repository's policy (``retry`` apart), validated."""
        match key:
            case "command":
                return self.command(value, path)
            case "branches" | "tags" | "mask_env":
                return self.strings(value, path, allow_empty=True)
            case "secrets":
                return self.secret_names(value, path)
            case "sandbox_paths":
                return self.absolute_paths(value, path)
            case "timeout_seconds":
                return self.integer(value, path, 1, MAX_TIMEOUT_SECONDS)
            case "concurrency":
                return self.integer(value, path, 1, 1000)
            case "priority":
                return self.integer(value, path, 0, 9999)
            case "status_context" | "clone_url":
                return self.text(value, path)
            case "checkout" | "network":
                return self.boolean(value, path)
            case "supersede":
                return self.choice(value, path, SUPERSEDE_MODES)
            case "fork_pull_requests":
                return self.choice(value, path, FORK_MODES)
            case _:  # sandbox
                return self.choice(value, path, SANDBOX_MODES)

    def retry(self, table: dict[str, Any], base: RetryPolicy, prefix: str) -> RetryPolicy:
        self.no_unknown_keys(table, {"attempts", "on", "backoff_seconds"}, prefix)
        changes: dict[str, Any] = {}
        if "attempts" in table:
            changes["attempts"] = self.integer(table["attempts"], f"{prefix}.attempts", 1, 100)
        if "on" in table:
            changes["on"] = self.strings(table["on"], f"{prefix}.on", allow_empty=True)
        if "backoff_seconds" in table:
            changes["backoff_seconds"] = self.integer(
                table["backoff_seconds"], f"{prefix}.backoff_seconds", 0, 3600
            )
        return replace(base, **changes)

    def no_unknown_keys(self, table: Mapping[str, Any], known: set[str], prefix: str) -> None:
        for key in table:
            if key not in known:
                path = f"{prefix}.{key}" if prefix else key
                raise self.fail(path, f"unknown key (known: {', '.join(sorted(known))})")

    def table(self, value: object, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"must be a table, not {_toml_type(value)}")
        return value

    def command(self, value: object, path: str) -> tuple[str, ...]:
        if isinstance(value, str):
            raise self.fail(path, 'must be an argv list such as ["make", "test"], not a string')
        return self.strings(value, path, allow_empty=False)

    def patterns(self, value: object, path: str) -> tuple[str, ...]:
        return self.strings(value, path, allow_empty=True)

    def strings(self, value: object, path: str, *, allow_empty: bool) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.fail(path, f"must be an array of strings, not {_toml_type(value)}")
        if not value and not allow_empty:
            raise self.fail(path, "must not be empty")
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise self.fail(f"{path}[{index}]", "must be a non-empty string")
        return tuple(value)

    def integer(self, value: object, path: str, low: int, high: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(path, f"must be an integer, not {_toml_type(value)}")
        if not low <= value <= high:
            raise self.fail(path, f"must be between {low} and {high}, not {value}")
        return value

    def boolean(self, value: object, path: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, f"must be true or false, not {_toml_type(value)}")
        return value

    def choice(self, value: object, path: str, allowed: tuple[str, ...]) -> Any:
        if value not in allowed:
            shown = repr(value) if isinstance(value, str) else _toml_type(value)
            names = ", ".join(f'"{mode}"' for mode in allowed)
            raise self.fail(path, f"must be one of {names}, not {shown}")
        return value

    def absolute_paths(self, value: object, path: str) -> tuple[str, ...]:
        paths = self.strings(value, path, allow_empty=True)
        for index, folder in enumerate(paths):
            if not folder.startswith("/") or "\0" in folder:
                raise self.fail(f"{path}[{index}]", f"{folder!r} is not an absolute path")
        return paths

    def secret_names(self, value: object, path: str) -> tuple[str, ...]:
        names = self.strings(value, path, allow_empty=True)
        for index, name in enumerate(names):
            if not _SECRET_NAME.fullmatch(name):
                raise self.fail(f"{path}[{index}]", f"{name!r} is not an environment variable name")
        return names

    def text(self, value: object, path: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(path, "must be a non-empty string")
        return value


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__
