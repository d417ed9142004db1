"""The local runtime's pipeline file reader: the commit's file from the repository's mirror.

The commit is fetched into the mirror a checkout uses (:class:`SourceCheckout`, its lock and
credentials), so the file is read with no other transport and the run's checkout that follows
fetches nothing more. Outcomes map onto :func:`~scheduler.pipelines.pipeline_for`'s:

- the remote out of reach (``CheckoutFailed``) -> :class:`PipelineUnavailable`: asked again later;
- the remote without the commit, or no clone URL allowed (``CommitNotFound``) -> no file: the
  one-step pipeline, whose checkout then fails the job with that reason, as before pipelines;
- a folder, link or submodule at the path, or a file over the limit -> :class:`PipelineFileError`.
"""

from __future__ import annotations

from scheduler.errors import PipelineFileError, PipelineUnavailable
from scheduler.local.checkout import (
    REGULAR_MODES,
    CheckoutFailed,
    CommitNotFound,
    SourceCheckout,
)
from scheduler.pipelines import CommitRef, PipelineFileReader, file_too_large

__all__ = ["MirrorPipelineReader"]


class MirrorPipelineReader:
    """A :class:`~scheduler.pipelines.PipelineFileReader` over the local mirrors."""

    def __init__(self, checkout: SourceCheckout) -> None:
        self._checkout = checkout

    def read(self, commit: CommitRef, path: str, max_bytes: int) -> bytes | None:
        try:
            found = self._checkout.read_file(
                commit.repo, commit.clone_url, commit.sha, path, max_bytes=max_bytes
            )
        except CheckoutFailed as exc:
            raise PipelineUnavailable(commit.repo, commit.sha, str(exc)) from exc
        except CommitNotFound:
            return None
        if found is None:
            return None
        if found.mode not in REGULAR_MODES:
            raise PipelineFileError(f"not a file but {found.kind}", None, path)
        if found.content is None:
            raise file_too_large(found.size, max_bytes, path)
        return found.content


def _is_a_reader(reader: MirrorPipelineReader) -> PipelineFileReader:
    return reader  # mypy holds the class to the port the engine calls
