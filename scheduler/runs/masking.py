"""Masking secrets out of run output before it is stored or shown (pure).

A run's last lines travel into the job item (its outcome detail), the commit status and the
log route. The operator names the environment variables whose values are secret (``mask_env``
in the repository configuration); the scheduler's own secrets are always masked.

A GitHub App's secrets too: its private key whole, each line of it and its body on one line
(:func:`pem_secrets`: a run that prints the key reformatted still prints its lines), and every
installation token this process bought (the composition root asks for them each time a
masker is made, so a token bought after the run started is masked too). A token bought by
another process (on AWS the stream function buys it, the API function reads the log back)
is masked by its shape: GitHub's tokens carry a known prefix (:data:`TOKEN_PATTERNS`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "ALWAYS_MASKED",
    "MASK",
    "MIN_MASKED_CHARS",
    "NO_MASK",
    "SECRET_PREFIX",
    "TOKEN_PATTERNS",
    "Masker",
    "masker_for",
    "pem_secrets",
    "secret_values",
]

MASK = "***"
# The scheduler's own secrets: masked whether or not the configuration names them.
ALWAYS_MASKED = (
    "GITHUB_WEBHOOK_SECRET",
    "GITHUB_TOKEN",
    "SCHEDULER_API_TOKEN",
    "SCHEDULER_GITHUB_TOKEN",
    "SCHEDULER_CURSOR_SECRET",
    "SCHEDULER_GIT_TOKEN",
)
# Locally, the secrets a repository's ``secrets`` key hands to its runs are the scheduler's
# environment variables ``SCHEDULER_SECRET_<NAME>``; every one of them is always masked.
SECRET_PREFIX = "SCHEDULER_SECRET_"
# Shorter values are left alone: masking "1" or "on" would mask ordinary text, not a secret.
MIN_MASKED_CHARS = 4
# GitHub's token shapes (its "authentication token formats"): installation tokens (ghs_), user
# and OAuth tokens (ghp_, gho_, ghu_, ghr_) and fine-grained personal tokens (github_pat_).
TOKEN_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"\bgh[opsur]_[A-Za-z0-9]{36,255}\b"),
    re.compile(r"\bgithub_pat_[A-Za-z0-9_]{22,255}\b"),
)
_PEM_ARMOUR = re.compile(r"^-----(BEGIN|END) [A-Z0-9 ]+-----$")


def secret_values(names: Iterable[str], environ: Mapping[str, str]) -> tuple[str, ...]:
    """The values of the set variables among ``names``, :data:`ALWAYS_MASKED` and the run
    secrets (:data:`SECRET_PREFIX`)."""
    run_secrets = [name for name in environ if name.startswith(SECRET_PREFIX)]
    wanted = dict.fromkeys([*ALWAYS_MASKED, *run_secrets, *names])
    return tuple(environ[name] for name in wanted if environ.get(name))


def pem_secrets(pem: str | None) -> tuple[str, ...]:
    """What of a PEM key a run could print: the key, each line of its body, the body on one
    line (the ``-----BEGIN ...-----`` armour is public text and stays)."""
    if not pem or not pem.strip():
        return ()
    lines = [line.strip() for line in pem.strip().splitlines()]
    body = [line for line in lines if line and not _PEM_ARMOUR.match(line)]
    return (pem.strip(), "".join(body), *body)


@dataclass(frozen=True, slots=True)
class Masker:
    """Replaces each secret value, and each match of ``patterns``, in a text with :data:`MASK`."""

    secrets: tuple[str, ...] = ()
    patterns: tuple[re.Pattern[str], ...] = ()

    def __post_init__(self) -> None:
        # Longest first: a secret that contains another is masked whole.
        kept = {value for value in self.secrets if len(value) >= MIN_MASKED_CHARS}
        object.__setattr__(self, "secrets", tuple(sorted(kept, key=len, reverse=True)))

    def __call__(self, text: str) -> str:
        for value in self.secrets:
            if value in text:
                text = text.replace(value, MASK)
        for pattern in self.patterns:
            text = pattern.sub(MASK, text)
        return text

    def with_values(self, values: Iterable[str]) -> Masker:
        return Masker((*self.secrets, *values), self.patterns)


NO_MASK = Masker()


def masker_for(
    mask_env_of: Callable[[str], Sequence[str]],
    own_secrets: Iterable[str | None] = (),
    environ: Mapping[str, str] | None = None,
    bought: Callable[[], Iterable[str]] = tuple,
) -> Callable[[str], Masker]:
    """A repository -> :class:`Masker` function: the values of the repository's ``mask_env``
    variables and of :data:`ALWAYS_MASKED` in ``environ`` (the process environment), plus
    ``own_secrets`` (the settings' secrets, which on Lambda come from Secrets Manager), plus
    what ``bought`` names when the masker is made (credentials the process obtained since it
    started: a GitHub App's installation tokens), plus anything shaped like a GitHub token."""
    env = os.environ if environ is None else environ
    extra = tuple(value for value in own_secrets if value)

    def for_repo(repo: str) -> Masker:
        return Masker((*secret_values(mask_env_of(repo), env), *extra, *bought()), TOKEN_PATTERNS)

    return for_repo
