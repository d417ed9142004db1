"""Where a job's pipeline comes from: the commit's file, or the operator's ``command``.

:func:`pipeline_for` is the one call the engine makes before any step is created. It decides
(pure) and asks a :class:`PipelineFileReader` (the one I/O port: the local mirror, or GitHub's
contents API) only when the repository's file is honoured. Its outcomes differ on purpose:

- a :class:`~scheduler.pipelines.model.Pipeline` to create the steps of;
- :class:`~scheduler.errors.PipelineFileError`: the file is bad (or over 64 KiB); the pipeline
  fails at once with the reason and line, and no step is created;
- :class:`~scheduler.errors.PipelineUnavailable`: the file cannot be read now; nothing is
  decided, the engine asks again later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from scheduler.config import RepoPolicy
from scheduler.errors import PipelineFileError
from scheduler.pipelines.model import PIPELINE_FILE, Pipeline, one_step_pipeline
from scheduler.pipelines.spec import MAX_FILE_BYTES, parse_pipeline

__all__ = [
    "CommitRef",
    "PipelineFileReader",
    "config_pipeline",
    "file_too_large",
    "pipeline_for",
]


@dataclass(frozen=True, slots=True)
class CommitRef:
    """The commit whose pipeline is read. ``clone_url`` is where the local runtime fetches it
    from (the configuration's ``clone_url``, else the job's payload URL, as a checkout does);
    GitHub's contents API needs only ``repo`` and ``sha``."""

    repo: str
    sha: str
    clone_url: str | None = None


class PipelineFileReader(Protocol):
    def read(self, commit: CommitRef, path: str, max_bytes: int) -> bytes | None:
        """The file at ``path`` in ``commit``, or None when the commit has no such file.

        Raises :class:`PipelineFileError` for a file over ``max_bytes`` (known before it is
        read whole) or a path that is not a file, and
        :class:`~scheduler.errors.PipelineUnavailable` when the answer cannot be known now.
        """
        ...


def pipeline_for(policy: RepoPolicy, commit: CommitRef, reader: PipelineFileReader) -> Pipeline:
    """The pipeline of ``commit`` under its repository's ``policy``."""
    # "config", or no checkout (the operator builds without the commit's files, so its
    # pipeline is not theirs either): no read at all, as before pipelines existed.
    if policy.pipeline == "config" or not policy.checkout:
        return config_pipeline(policy)
    content = reader.read(commit, PIPELINE_FILE, MAX_FILE_BYTES)
    if content is None:
        return config_pipeline(policy)
    return parse_pipeline(content, source=PIPELINE_FILE)


def config_pipeline(policy: RepoPolicy) -> Pipeline:
    """The operator's ``command`` as one step, with the limits a job of the repository has."""
    return one_step_pipeline(
        policy.command, timeout_seconds=policy.timeout_seconds, retry=policy.retry
    )


def file_too_large(
    size: int | None, limit: int = MAX_FILE_BYTES, path: str = PIPELINE_FILE
) -> PipelineFileError:
    """The error of a file over ``limit`` bytes (``size`` None: known only to be larger), as
    the parser words it."""
    said = f"{size} bytes, more than" if size is not None else "larger than"
    return PipelineFileError(f"the file is {said} the limit of {limit}", None, path)
