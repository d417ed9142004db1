"""pipeline_for: which pipeline a job's commit gets, and when its file is read at all."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest

from scheduler.config import RepoPolicy, RetryPolicy
from scheduler.errors import PipelineFileError, PipelineUnavailable
from scheduler.pipelines import (
    MAX_FILE_BYTES,
    PIPELINE_FILE,
    CommitRef,
    config_pipeline,
    file_too_large,
    pipeline_for,
)

SHA = "a" * 40
COMMIT = CommitRef("octo-org/api", SHA, "https://github.com/octo-org/api.git")
POLICY = RepoPolicy(
    command=("./ci.sh", "--all"),
    timeout_seconds=900,
    retry=RetryPolicy(attempts=3, on=("exit_code",), backoff_seconds=5),
)
FILE = b"""\
steps:
  - key: lint
    command: make lint
  - key: test
    command: [make, test]
    needs: lint
"""


@dataclass
class Reader:
    """The port as the engine sees it: answers what it was given, records what it was asked."""

    answer: bytes | None = None
    error: Exception | None = None
    asked: list[tuple[CommitRef, str, int]] = field(default_factory=list)

    def read(self, commit: CommitRef, path: str, max_bytes: int) -> bytes | None:
        self.asked.append((commit, path, max_bytes))
        if self.error is not None:
            raise self.error
        return self.answer


def test_the_commits_file_is_the_pipeline() -> None:
    reader = Reader(FILE)
    pipeline = pipeline_for(POLICY, COMMIT, reader)
    assert pipeline.keys == ("lint", "test") and pipeline.source == PIPELINE_FILE
    assert pipeline.step("lint").command == ("sh", "-c", "make lint")
    assert pipeline.step("test").needs == ("lint",)
    # Limits the file leaves out stay the repository's (None), not the one-step values.
    assert pipeline.step("test").timeout_seconds is None
    assert reader.asked == [(COMMIT, ".scheduler/pipeline.yml", MAX_FILE_BYTES)]


def test_without_a_file_the_command_is_one_step_as_a_job_runs_it() -> None:
    reader = Reader(None)
    pipeline = pipeline_for(POLICY, COMMIT, reader)
    assert pipeline == config_pipeline(POLICY)
    assert pipeline.source == "config" and pipeline.keys == ("build",)
    step = pipeline.step("build")
    assert step.command == ("./ci.sh", "--all")
    assert step.timeout_seconds == 900 and step.retry == POLICY.retry
    assert step.env == () and step.needs == () and step.concurrency_group is None
    assert len(reader.asked) == 1


@pytest.mark.parametrize(
    "policy",
    [replace(POLICY, pipeline="config"), replace(POLICY, checkout=False)],
    ids=["pipeline=config", "checkout=false"],
)
def test_the_file_is_not_read_when_the_operator_says_so(policy: RepoPolicy) -> None:
    reader = Reader(FILE, error=AssertionError("read"))
    assert pipeline_for(policy, COMMIT, reader) == config_pipeline(policy)
    assert reader.asked == []


def test_the_built_in_default_reads_the_file() -> None:
    assert RepoPolicy().pipeline == "repo" and RepoPolicy().checkout
    reader = Reader(FILE)
    assert pipeline_for(RepoPolicy(), COMMIT, reader).keys == ("lint", "test")


def test_a_bad_file_fails_with_its_line() -> None:
    bad = FILE.replace(b"needs: lint", b"needs: deploy")
    with pytest.raises(PipelineFileError) as caught:
        pipeline_for(POLICY, COMMIT, Reader(bad))
    assert caught.value.line == 6
    assert str(caught.value) == (
        ".scheduler/pipeline.yml:6: step 'test' needs 'deploy', which is not a step"
    )


def test_what_the_reader_refuses_or_cannot_know_is_passed_on_unchanged() -> None:
    too_large = file_too_large(MAX_FILE_BYTES + 1)
    with pytest.raises(PipelineFileError) as refused:
        pipeline_for(POLICY, COMMIT, Reader(error=too_large))
    assert refused.value is too_large
    assert str(too_large) == (
        ".scheduler/pipeline.yml: the file is 65537 bytes, more than the limit of 65536"
    )
    assert str(file_too_large(None)) == (
        ".scheduler/pipeline.yml: the file is larger than the limit of 65536"
    )
    # Not the file's fault: never a failed pipeline, never the one-step fallback.
    down = PipelineUnavailable(COMMIT.repo, SHA, "HTTP 502", retry_after_seconds=None)
    with pytest.raises(PipelineUnavailable) as unavailable:
        pipeline_for(POLICY, COMMIT, Reader(error=down))
    assert unavailable.value is down
    assert (
        str(down) == "cannot read the pipeline file of octo-org/api at aaaaaaaaaaaa now: HTTP 502"
    )
    assert down.http_status == 503


def test_the_parsers_own_size_limit_words_it_the_same_way() -> None:
    with pytest.raises(PipelineFileError) as caught:
        pipeline_for(POLICY, COMMIT, Reader(b"#" * (MAX_FILE_BYTES + 1)))
    assert str(caught.value) == str(file_too_large(MAX_FILE_BYTES + 1))
