"""A fresh work tree of a job's commit, fetched through one cached mirror per repository.

The first job of a repository fetches the commit into a bare mirror under the stack's data
folder; later jobs fetch only what the mirror lacks (nothing, when the commit is there). Each
attempt then gets its own clone of the mirror (``--shared``: objects are borrowed, not copied)
checked out at the exact sha, so nothing leaks from one run into the next. A pull request's head
is fetched by its sha: GitHub serves any commit reachable from ``refs/pull/N/head``.

Mirrors are guarded by a file lock each, so concurrent jobs of one repository (threads or
processes) never fetch into a mirror at once. Every fetched commit gets a ref of its own in the
mirror (``refs/scheduler/<sha>``), so no garbage collection can take objects a work tree borrows.

Credentials never come from a payload: ``SCHEDULER_GIT_TOKEN`` (the operator's) is handed to git
by a credential helper that reads it from git's environment, so it is on no command line, in no
URL, log or job item, and that answers only for https to the GitHub host. Git never prompts (a
missing credential fails the fetch) and runs no transport but https, ssh, git and local files
(never ``ext::``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from scheduler.errors import DomainError
from scheduler.git_credentials import CREDENTIAL_HELPER, HOST_VARIABLE, TOKEN_VARIABLE

__all__ = [
    "TOKEN_VARIABLE",
    "CheckoutFailed",
    "CommitFile",
    "CommitNotFound",
    "SourceCheckout",
    "TokenSource",
]

log = logging.getLogger(__name__)

FETCH_TIMEOUT_SECONDS = 600
LOCAL_TIMEOUT_SECONDS = 120
_SHA = re.compile(r"[0-9a-f]{40}")
# Git's own answer when the remote is reachable but has no such commit.
_NOT_THERE = re.compile(r"not our ref|couldn't find remote ref|no such remote ref", re.I)


TokenSource = Callable[[str], "str | None"]
"""Repository -> the password git is given for it (a GitHub App's installation token)."""


class CheckoutFailed(DomainError):
    """The commit could not be fetched (remote unreachable, refused, timed out): the
    infrastructure's failure, retried as ``start_failed``."""


class CommitNotFound(DomainError):
    """The remote answered but has no such commit: the job's failure (reason ``error``)."""


# Git's modes of a regular file (a symbolic link is 120000, a folder 040000, a submodule 160000).
REGULAR_MODES = frozenset({"100644", "100755"})


@dataclass(frozen=True, slots=True)
class CommitFile:
    """What a commit has at a path: its git ``mode``, its ``size`` (None for a folder or a
    submodule) and its ``content``, read only for a regular file within the size asked."""

    mode: str
    size: int | None
    content: bytes | None

    @property
    def kind(self) -> str:
        """What it is, as a person says it."""
        if self.mode in REGULAR_MODES:
            return "a file"
        return {"120000": "a symbolic link", "040000": "a folder", "160000": "a submodule"}.get(
            self.mode, f"an entry of mode {self.mode}"
        )


class SourceCheckout:
    def __init__(
        self,
        folder: Path,
        *,
        token: str | None = None,
        github_host: str = "github.com",
        token_for: TokenSource | None = None,
    ) -> None:
        self._mirrors = folder / "mirrors"
        self._token = token or None
        # A GitHub App's short-lived token of the repository's installation, asked per fetch
        # (it is renewed before it expires); it wins over the operator's fixed token.
        self._token_for = token_for
        # The only host the token is given to (see scheduler.github.clone_urls.github_host).
        self._github_host = github_host.lower()

    def prepare(self, repo: str, clone_url: str | None, sha: str, workdir: Path) -> None:
        """Make ``workdir`` a fresh work tree of ``repo`` at ``sha``, fetched from ``clone_url``."""
        mirror, url = self._mirror(repo, clone_url, sha)
        with self._locked(mirror):
            self._fetch(mirror, url, sha, self._token_of(repo))
            shutil.rmtree(workdir, ignore_errors=True)  # what a lost earlier start left
            workdir.parent.mkdir(parents=True, exist_ok=True)
            clone = ["clone", "--quiet", "--shared", "--no-checkout", str(mirror), str(workdir)]
            self._git("clone", clone)
        self._git("checkout", ["-C", str(workdir), "checkout", "--quiet", "--detach", sha])

    def read_file(
        self, repo: str, clone_url: str | None, sha: str, path: str, *, max_bytes: int
    ) -> CommitFile | None:
        """The entry at ``path`` in ``sha`` (None: the commit has none), its content read only
        when it is a regular file of at most ``max_bytes``: a large file's size is known from
        the tree before any of it is read. The commit is fetched into the mirror first, as for
        a checkout (same lock, same errors), so the run's checkout then finds it there."""
        mirror, url = self._mirror(repo, clone_url, sha)
        with self._locked(mirror):
            self._fetch(mirror, url, sha, self._token_of(repo))
        # `ls-tree -l`: "<mode> <type> <object> <size>\t<path>" (size "-" for a folder), or
        # nothing when the commit has no such path. -z: the path is never quoted.
        listing = self._run(
            ["-C", str(mirror), "ls-tree", "-l", "-z", sha, "--", path], LOCAL_TIMEOUT_SECONDS
        )
        if listing.returncode != 0:
            raise CheckoutFailed(f"git ls-tree: {_last_line(listing.stderr)}")
        entry = listing.stdout.split("\0", 1)[0]
        if not entry:
            return None
        fields, _, _name = entry.partition("\t")
        mode, kind, obj, size = fields.split()
        found = CommitFile(mode, int(size) if size.isdigit() else None, None)
        if kind != "blob" or mode not in REGULAR_MODES or found.size is None:
            return found
        if found.size > max_bytes:
            return found
        blob = self._run_bytes(["-C", str(mirror), "cat-file", "blob", obj], LOCAL_TIMEOUT_SECONDS)
        if blob.returncode != 0:
            raise CheckoutFailed(
                f"git cat-file: {_last_line(blob.stderr.decode(errors='replace'))}"
            )
        return CommitFile(mode, found.size, blob.stdout)

    def _mirror(self, repo: str, clone_url: str | None, sha: str) -> tuple[Path, str]:
        """The mirror of ``repo`` and the URL to fetch into it from, once ``clone_url`` and
        ``sha`` are known to be usable."""
        if not clone_url:
            # The webhook keeps a payload's clone URL only when it is the repository's own on
            # the GitHub host (scheduler.github.clone_urls): anything else lands here.
            raise CommitNotFound(
                f"clone URL not allowed: configure clone_url for this repository ({repo}; a"
                f" payload's clone_url is used only if it is https://{self._github_host}/{repo}"
                "), or set checkout = false"
            )
        if _SHA.fullmatch(sha) is None:
            raise CommitNotFound(f"{sha!r} is not a commit sha")
        return self._mirrors / _mirror_name(repo), clone_url

    def _token_of(self, repo: str) -> str | None:
        if self._token_for is None:
            return self._token
        try:
            return self._token_for(repo) or self._token
        except DomainError as exc:  # GitHub unreachable or the App not installed: retried
            raise CheckoutFailed(f"no GitHub App token for {repo}: {exc}") from None

    def _fetch(self, mirror: Path, url: str, sha: str, token: str | None = None) -> None:
        if not mirror.exists():
            partial = mirror.with_name(mirror.name + ".new")
            shutil.rmtree(partial, ignore_errors=True)
            self._git("init", ["init", "--quiet", "--bare", str(partial)])
            partial.rename(mirror)  # a mirror is whole or absent, whenever the stack dies
        if self._has(mirror, sha):
            return
        fetch = ["-C", str(mirror), "fetch", "--quiet", "--no-tags", "--", url]
        refspec = f"+{sha}:refs/scheduler/{sha}"
        result = self._run([*fetch, refspec], FETCH_TIMEOUT_SECONDS, token)
        if result.returncode == 0 and self._has(mirror, sha):
            return
        reason = _last_line(result.stderr)
        if _NOT_THERE.search(result.stderr) and self._reachable(url, token):
            raise CommitNotFound(f"commit {sha} is not in {_shown(url)}: {reason}")
        raise CheckoutFailed(f"cannot fetch {sha} from {_shown(url)}: {reason}")

    def _has(self, mirror: Path, sha: str) -> bool:
        check = ["-C", str(mirror), "cat-file", "-e", f"{sha}^{{commit}}"]
        return self._run(check, LOCAL_TIMEOUT_SECONDS).returncode == 0

    def _reachable(self, url: str, token: str | None = None) -> bool:
        return self._run(["ls-remote", "--heads", "--", url], 60, token).returncode == 0

    def _git(self, what: str, args: Sequence[str]) -> None:
        result = self._run(args, LOCAL_TIMEOUT_SECONDS)
        if result.returncode != 0:
            raise CheckoutFailed(f"git {what}: {_last_line(result.stderr)}")

    def _run(
        self, args: Sequence[str], timeout: float, token: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        done = self._run_bytes(args, timeout, token)
        stdout, stderr = (out.decode("utf-8", "replace") for out in (done.stdout, done.stderr))
        return subprocess.CompletedProcess(done.args, done.returncode, stdout, stderr)

    def _run_bytes(
        self, args: Sequence[str], timeout: float, token: str | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        try:
            return subprocess.run(
                ["git", *args],
                env=self._environment(token),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise CheckoutFailed(f"git timed out after {timeout:.0f} s") from None
        except OSError as exc:
            raise CheckoutFailed(f"cannot run git: {exc}") from exc

    def _environment(self, token: str | None = None) -> dict[str, str]:
        token = token or self._token
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
        settings = {
            "protocol.allow": "never",
            "protocol.https.allow": "always",
            "protocol.ssh.allow": "always",
            "protocol.git.allow": "always",
            "protocol.file.allow": "always",
            "gc.auto": "0",
            "advice.detachedHead": "false",
        }
        if token:
            # Answers only for https to the GitHub host (scheduler.git_credentials).
            settings["credential.helper"] = CREDENTIAL_HELPER
            env[TOKEN_VARIABLE] = token
            env[HOST_VARIABLE] = self._github_host
        env.update(GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="true", GIT_CONFIG_NOSYSTEM="1")
        env["GIT_CONFIG_COUNT"] = str(len(settings))
        for index, (key, value) in enumerate(settings.items()):
            env[f"GIT_CONFIG_KEY_{index}"] = key
            env[f"GIT_CONFIG_VALUE_{index}"] = value
        return env

    @contextlib.contextmanager
    def _locked(self, mirror: Path) -> Iterator[None]:
        mirror.parent.mkdir(parents=True, exist_ok=True)
        with open(mirror.with_name(mirror.name + ".lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # per open file: threads and processes alike
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _mirror_name(repo: str) -> str:
    """A folder name per repository (case-insensitive, as on GitHub), safe on any disk."""
    readable = re.sub(r"[^a-z0-9._-]", "_", repo.lower())[:80]
    digest = hashlib.sha256(repo.lower().encode()).hexdigest()[:12]
    return f"{readable}-{digest}.git"


def _shown(url: str) -> str:
    """``url`` without any user info (an operator's URL may carry a credential)."""
    return re.sub(r"//[^/@]*@", "//", url)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return _shown(lines[-1])[:200] if lines else "no message from git"
