"""The local pipeline file reader against real git repositories in a temporary folder: the file
at the exact commit through the checkout's mirror (and its lock), no file, a file over the
limit known from the tree, what is not a file, and the remote out of reach."""

from __future__ import annotations

import fcntl
import threading
from pathlib import Path

import pytest
from git_origin import Origin, git, make_origin

from scheduler.config import RepoPolicy
from scheduler.errors import PipelineFileError, PipelineUnavailable
from scheduler.local.checkout import CommitFile, SourceCheckout
from scheduler.local.pipeline_file import MirrorPipelineReader
from scheduler.pipelines import MAX_FILE_BYTES, PIPELINE_FILE, CommitRef, pipeline_for

ROOT = Path(__file__).resolve().parents[3]
REPO = "octo/app"


@pytest.fixture
def origin(tmp_path: Path) -> Origin:
    return make_origin(tmp_path / "origin")


def commit_files(origin: Origin, files: dict[str, bytes], *, link: str | None = None) -> str:
    """A new commit on main with ``files`` (and ``.scheduler/pipeline.yml`` a link to ``link``)."""
    for name, content in files.items():
        path = origin.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        git(origin.path, "add", name)
    if link is not None:
        (origin.path / ".scheduler").mkdir(exist_ok=True)
        (origin.path / PIPELINE_FILE).symlink_to(link)
        git(origin.path, "add", PIPELINE_FILE)
    git(origin.path, "commit", "--quiet", "-m", "files")
    return git(origin.path, "rev-parse", "HEAD")


def reader_at(tmp_path: Path) -> MirrorPipelineReader:
    return MirrorPipelineReader(SourceCheckout(tmp_path / "runner"))


def test_the_file_is_read_at_the_exact_commit_and_the_checkout_reuses_the_fetch(
    origin: Origin, tmp_path: Path
) -> None:
    own = (ROOT / PIPELINE_FILE).read_bytes()  # this repository's own CI
    sha = commit_files(origin, {PIPELINE_FILE: own})
    changed = commit_files(origin, {PIPELINE_FILE: b"steps:\n  - key: other\n    command: x\n"})
    checkout = SourceCheckout(tmp_path / "runner")
    reader = MirrorPipelineReader(checkout)
    url = str(origin.path)
    assert reader.read(CommitRef(REPO, sha, url), PIPELINE_FILE, MAX_FILE_BYTES) == own
    pipeline = pipeline_for(RepoPolicy(), CommitRef(REPO, sha, url), reader)
    assert pipeline.keys == ("lint", "unit", "integration", "e2e", "reliability")
    assert pipeline.step("integration").needs == ("lint", "unit")
    other = pipeline_for(RepoPolicy(), CommitRef(REPO, changed, url), reader)
    assert other.keys == ("other",)
    # The read fetched the commit into the mirror a checkout uses: with the remote gone, the
    # run's checkout of that commit still succeeds, from the mirror alone.
    origin.path.rename(tmp_path / "gone")
    checkout.prepare(REPO, url, sha, tmp_path / "work")
    assert (tmp_path / "work" / PIPELINE_FILE).read_bytes() == own
    assert len(list((tmp_path / "runner" / "mirrors").glob("*.git"))) == 1


def test_a_commit_without_the_file_is_the_operators_command(origin: Origin, tmp_path: Path) -> None:
    reader = reader_at(tmp_path)
    commit = CommitRef(REPO, origin.pull, str(origin.path))  # a PR head on no branch
    assert reader.read(commit, PIPELINE_FILE, MAX_FILE_BYTES) is None
    pipeline = pipeline_for(RepoPolicy(command=("./ci.sh",)), commit, reader)
    assert pipeline.source == "config" and pipeline.step("build").command == ("./ci.sh",)


def test_a_file_over_the_limit_is_refused_from_its_size_in_the_tree(
    origin: Origin, tmp_path: Path
) -> None:
    sha = commit_files(origin, {PIPELINE_FILE: b"#" * (MAX_FILE_BYTES + 1)})
    checkout = SourceCheckout(tmp_path / "runner")
    found = checkout.read_file(REPO, str(origin.path), sha, PIPELINE_FILE, max_bytes=MAX_FILE_BYTES)
    assert found == CommitFile("100644", MAX_FILE_BYTES + 1, None)  # size known, never read
    with pytest.raises(PipelineFileError) as caught:
        MirrorPipelineReader(checkout).read(
            CommitRef(REPO, sha, str(origin.path)), PIPELINE_FILE, MAX_FILE_BYTES
        )
    assert str(caught.value) == (
        ".scheduler/pipeline.yml: the file is 65537 bytes, more than the limit of 65536"
    )
    exactly = commit_files(origin, {PIPELINE_FILE: b"#" * MAX_FILE_BYTES})
    content = checkout.read_file(
        REPO, str(origin.path), exactly, PIPELINE_FILE, max_bytes=MAX_FILE_BYTES
    )
    assert content is not None and content.content == b"#" * MAX_FILE_BYTES


@pytest.mark.parametrize(
    ("files", "link", "kind"),
    [
        ({PIPELINE_FILE + "/steps.yml": b"steps: []\n"}, None, "a folder"),
        ({"ci.yml": b"steps: []\n"}, "../ci.yml", "a symbolic link"),
    ],
    ids=["folder", "symlink"],
)
def test_what_is_not_a_file_fails_the_pipeline(
    origin: Origin, tmp_path: Path, files: dict[str, bytes], link: str | None, kind: str
) -> None:
    sha = commit_files(origin, files, link=link)
    with pytest.raises(PipelineFileError) as caught:
        reader_at(tmp_path).read(
            CommitRef(REPO, sha, str(origin.path)), PIPELINE_FILE, MAX_FILE_BYTES
        )
    assert str(caught.value) == f".scheduler/pipeline.yml: not a file but {kind}"


def test_a_remote_out_of_reach_is_unavailable_not_a_missing_file(tmp_path: Path) -> None:
    commit = CommitRef(REPO, "b" * 40, str(tmp_path / "nowhere"))
    with pytest.raises(PipelineUnavailable) as caught:
        reader_at(tmp_path).read(commit, PIPELINE_FILE, MAX_FILE_BYTES)
    assert str(caught.value).startswith(
        f"cannot read the pipeline file of {REPO} at bbbbbbbbbbbb now: cannot fetch"
    )


def test_a_commit_the_remote_lacks_or_no_clone_url_leaves_it_to_the_checkout(
    origin: Origin, tmp_path: Path
) -> None:
    reader = reader_at(tmp_path)
    # The remote answers without the commit / no URL is allowed: the one-step pipeline's
    # checkout fails the job with that reason, as a job without pipelines does.
    assert reader.read(CommitRef(REPO, "c" * 40, str(origin.path)), PIPELINE_FILE, 10) is None
    assert reader.read(CommitRef(REPO, origin.second, None), PIPELINE_FILE, 10) is None


def test_the_read_waits_for_the_mirrors_lock(origin: Origin, tmp_path: Path) -> None:
    sha = commit_files(origin, {PIPELINE_FILE: b"steps:\n  - key: a\n    command: x\n"})
    checkout = SourceCheckout(tmp_path / "runner")
    checkout.prepare(REPO, str(origin.path), origin.first, tmp_path / "w")  # the mirror exists
    (lock_path,) = (tmp_path / "runner" / "mirrors").glob("*.lock")
    done = threading.Event()
    got: list[bytes | None] = []

    def read() -> None:
        got.append(
            MirrorPipelineReader(checkout).read(
                CommitRef(REPO, sha, str(origin.path)), PIPELINE_FILE, MAX_FILE_BYTES
            )
        )
        done.set()

    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # as another process's fetch holds it
        thread = threading.Thread(target=read)
        thread.start()
        assert not done.wait(0.5)  # no fetch into a mirror another one is fetching into
        fcntl.flock(handle, fcntl.LOCK_UN)
    assert done.wait(30)
    thread.join()
    assert got == [b"steps:\n  - key: a\n    command: x\n"]
