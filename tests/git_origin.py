"""A git repository in a temporary folder for checkout tests: two commits on ``main`` and a pull
request head that is on no branch (only ``refs/pull/7/head`` reaches it), as on GitHub."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Origin", "commit", "git", "make_origin"]

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "PATH": "/usr/bin:/bin:/usr/local/bin",
    "HOME": "/nonexistent",
}


def git(folder: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(folder), *args],
        env=GIT_ENV,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def commit(folder: Path, name: str, text: str) -> str:
    (folder / name).write_text(text)
    git(folder, "add", name)
    git(folder, "commit", "--quiet", "-m", f"{name}={text}")
    return git(folder, "rev-parse", "HEAD")


@dataclass
class Origin:
    path: Path
    first: str  # main~1: a.txt = one
    second: str  # main: a.txt = two
    pull: str  # only on refs/pull/7/head: b.txt = pr


def make_origin(folder: Path) -> Origin:
    """A repository with two commits on main and a pull request head on no branch."""
    folder.mkdir(parents=True)
    git(folder, "init", "--quiet", "-b", "main")
    first = commit(folder, "a.txt", "one")
    second = commit(folder, "a.txt", "two")
    git(folder, "checkout", "--quiet", "-b", "feature")
    pull = commit(folder, "b.txt", "pr")
    git(folder, "update-ref", "refs/pull/7/head", pull)
    git(folder, "checkout", "--quiet", "main")
    git(folder, "branch", "--quiet", "-D", "feature")
    return Origin(folder, first, second, pull)
