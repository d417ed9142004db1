"""Run logs without a server: the capped writer, the naming rule, masking, the readers' pure
parts, the commit status description, and the AWS reader's requests (botocore Stubber)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber

from scheduler.aws.build_logs import CloudWatchLogReader
from scheduler.db.queries import JobDetail
from scheduler.errors import InvalidArgument, LogNotFound
from scheduler.github.statuses import DESCRIPTION_CHARS, status_for
from scheduler.local.log_reader import LocalLogReader
from scheduler.local.run_log import CappedLog, OutputPump, log_file
from scheduler.runs.logs import LogChunk, LogTarget, RunLogs, last_lines, parse_attempt
from scheduler.runs.masking import MASK, Masker, masker_for, secret_values
from state_machines import JobStatus

BUILD = "ci-project:0b6f2f5e-1111-2222-3333-444455556666"


def test_a_log_over_its_cap_keeps_head_marker_and_tail(tmp_path: Path) -> None:
    path = tmp_path / "attempt-1.log"
    log = CappedLog(path, max_bytes=1000)
    lines = [f"line {n:05d}\n".encode() for n in range(2000)]  # 22,000 bytes
    for line in lines:
        log.write(line)
    written_during_run = path.read_bytes()
    log.close()
    data = path.read_bytes()
    assert data.startswith(b"line 00000\nline 00001\n")
    assert data.endswith(b"line 01998\nline 01999\n")
    assert b"log cap of 1000 bytes reached" in written_during_run  # a follower is told
    assert b"bytes cut here" in data
    cut = int(data.split(b"bytes cut here")[0].rsplit(b"[scheduler: ", 1)[1])
    head, tail = data.split(b"bytes cut here]\n")
    assert cut == 22_000 - 500 - len(tail)  # every byte is either kept or counted as cut
    assert tail.startswith(b"line ")  # the tail starts at a line
    assert len(data) <= 1000 + 300
    assert head.count(b"\n[scheduler:") == 2


def test_a_log_under_its_cap_is_kept_whole_without_marker(tmp_path: Path) -> None:
    path = tmp_path / "attempt-1.log"
    log = CappedLog(path, max_bytes=1000)
    log.write(b"hello\n" * 10)
    assert path.read_bytes() == b"hello\n" * 10  # written through: a follower sees it at once
    log.close()
    assert path.read_bytes() == b"hello\n" * 10


def test_the_pump_ends_when_told_although_a_writer_still_holds_the_pipe(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    log = CappedLog(tmp_path / "a.log", max_bytes=1000)
    pump = OutputPump(os.fdopen(read_end, "rb", buffering=0), log)
    os.write(write_end, b"before\n")
    deadline = time.monotonic() + 60
    while (tmp_path / "a.log").read_bytes() != b"before\n":  # the pump is reading
        assert time.monotonic() < deadline
        time.sleep(0.02)
    started = time.monotonic()
    pump.finish(0.5)  # the write end stays open, as a grandchild's would
    # It returns after its grace, not at the writer's close (which never comes before it here);
    # the bound is only to fail rather than hang.
    assert time.monotonic() - started < 30
    assert (tmp_path / "a.log").read_bytes() == b"before\n"
    os.close(write_end)


def test_the_pump_drains_a_chatty_writer_without_blocking_it(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    log = CappedLog(tmp_path / "a.log", max_bytes=4096)
    pump = OutputPump(os.fdopen(read_end, "rb", buffering=0), log)
    done = threading.Event()

    def chatter() -> None:
        for _ in range(200):
            os.write(write_end, b"x" * 8192)  # 1.6 MB: far more than a pipe's buffer
        os.close(write_end)
        done.set()

    threading.Thread(target=chatter, daemon=True).start()
    assert done.wait(10)
    pump.finish(5)
    assert b"bytes cut here" in (tmp_path / "a.log").read_bytes()


@pytest.mark.parametrize("job_id", ["..", ".", "", "a\x00b", "a\\b"])
def test_the_naming_rule_refuses_ids_that_would_leave_the_logs_folder(
    tmp_path: Path, job_id: str
) -> None:
    with pytest.raises(InvalidArgument):
        log_file(tmp_path, job_id, 1)


@pytest.mark.parametrize("job_id", ["../../etc", "a/../../b", "gh-123"])
def test_the_naming_rule_keeps_every_log_below_the_folder(tmp_path: Path, job_id: str) -> None:
    path = log_file(tmp_path / "logs", job_id, 3)
    assert path.resolve().parent.parent == (tmp_path / "logs").resolve()
    assert path.name == "attempt-3.log"


def test_the_local_reader_reads_from_a_cursor_and_says_not_found(tmp_path: Path) -> None:
    path = log_file(tmp_path, "j1", 1)
    path.parent.mkdir()
    path.write_bytes(b"0123456789")
    reader = LocalLogReader(tmp_path)
    first = reader.read(LogTarget("j1", 1), None, 4)
    assert (first.data, first.cursor, first.more) == (b"0123", "4", True)
    rest = reader.read(LogTarget("j1", 1), first.cursor, 100)
    assert (rest.data, rest.more) == (b"456789", False)
    with pytest.raises(LogNotFound):
        reader.read(LogTarget("j1", 2), None, 100)
    with pytest.raises(InvalidArgument):
        reader.read(LogTarget("..", 1), None, 100)


def test_masking_hides_configured_and_own_secrets() -> None:
    environ = {
        "NPM_TOKEN": "npm_abcdef",
        "GITHUB_TOKEN": "ghp_token_value",
        "SHORT": "ab",
        "UNRELATED": "visible-value",
    }
    mask = masker_for(lambda repo: ["NPM_TOKEN", "SHORT"], ["cursor-key"], environ)("o/r")
    text = mask("npm_abcdef ghp_token_value cursor-key visible-value ab")
    assert text == f"{MASK} {MASK} {MASK} visible-value ab"
    assert secret_values([], {"GITHUB_WEBHOOK_SECRET": "whsec"}) == ("whsec",)
    assert Masker(("abcd", "abcdefgh"))("xabcdefghx") == f"x{MASK}x"  # the longer one whole


def test_attempt_values_and_last_lines() -> None:
    assert parse_attempt(None, 3) == 3 and parse_attempt("", 3) == 3 and parse_attempt("2", 3) == 2
    for bad in ("0", "-1", "abc", "1.5", "99999999", "9" * 5000, "\u0663"):
        with pytest.raises(InvalidArgument):
            parse_attempt(bad, 3)
    assert last_lines(b"a\n\nb\n  \nc\n", 2) == ["b", "c"]


def test_a_failure_status_carries_the_last_line_within_140_characters() -> None:
    state, text = status_for(
        JobStatus.ACTIVE,
        JobStatus.FAILED,
        attempt=1,
        reason="exit_code",
        detail="exit code 2: boom",
    ) or ("", "")
    assert (state, text) == ("failure", "Failed: exit code 2: boom")
    _, timed_out = status_for(
        JobStatus.ACTIVE, JobStatus.FAILED, attempt=1, reason="timed_out", detail="timed out: zz"
    ) or ("", "")
    assert timed_out == "Timed out: zz"
    _, long = status_for(
        JobStatus.ACTIVE, JobStatus.FAILED, attempt=1, reason="exit_code", detail="x" * 500
    ) or ("", "")
    assert len(long) == DESCRIPTION_CHARS and long.endswith("...")
    passed = status_for(JobStatus.ACTIVE, JobStatus.PASSED, attempt=1, reason=None, detail="ok")
    assert passed == ("success", "Passed")


def _clients() -> tuple[object, object]:
    session = boto3.session.Session(
        aws_access_key_id="x", aws_secret_access_key="y", region_name="us-east-1"
    )
    return session.client("logs"), session.client("codebuild")


def test_the_aws_reader_asks_codebuild_for_the_stream_and_reads_it_from_the_head() -> None:
    logs, codebuild = _clients()
    with Stubber(logs) as logs_stub, Stubber(codebuild) as build_stub:
        build_stub.add_response(
            "batch_get_builds",
            {
                "builds": [
                    {
                        "id": BUILD,
                        "logs": {"groupName": "/aws/codebuild/ci-project", "streamName": "0b6f"},
                    }
                ]
            },
            {"ids": [BUILD]},
        )
        stream = {"logGroupName": "/aws/codebuild/ci-project", "logStreamName": "0b6f"}
        logs_stub.add_response(
            "get_log_events",
            {
                "events": [
                    {"timestamp": 1, "message": "hello\n"},
                    {"timestamp": 2, "message": "x"},
                ],
                "nextForwardToken": "f/1",
            },
            {**stream, "startFromHead": True},
        )
        logs_stub.add_response(
            "get_log_events",
            {"events": [], "nextForwardToken": "f/1"},
            {**stream, "startFromHead": True, "nextToken": "f/1"},
        )
        # A follower's next read goes on from the cursor; the stream is remembered.
        logs_stub.add_response(
            "get_log_events",
            {"events": [{"timestamp": 3, "message": "more\n"}], "nextForwardToken": "f/2"},
            {**stream, "startFromHead": True, "nextToken": "f/1"},
        )
        logs_stub.add_response(
            "get_log_events",
            {"events": [], "nextForwardToken": "f/2"},
            {**stream, "startFromHead": True, "nextToken": "f/2"},
        )
        reader = CloudWatchLogReader(logs, codebuild)
        chunk = reader.read(LogTarget("j1", 2, run_id=BUILD), None, 1_000_000)
        assert (chunk.data, chunk.cursor, chunk.more) == (b"hello\nx\n", "f/1", False)
        assert reader.read(LogTarget("j1", 2, run_id=BUILD), "f/1", 1_000_000).data == b"more\n"
        logs_stub.assert_no_pending_responses()
        build_stub.assert_no_pending_responses()


def test_the_aws_reader_says_not_found_without_a_build_or_a_stream() -> None:
    logs, codebuild = _clients()
    reader = CloudWatchLogReader(logs, codebuild)
    with pytest.raises(LogNotFound, match="only the current attempt"):
        reader.read(LogTarget("j1", 1, run_id=None), None, 100)
    with pytest.raises(LogNotFound):
        reader.read(LogTarget("j1", 1, run_id="j1#1"), None, 100)  # a claim, no build yet
    with Stubber(codebuild) as build_stub:
        build_stub.add_response("batch_get_builds", {"builds": [{"id": BUILD}]}, {"ids": [BUILD]})
        with pytest.raises(LogNotFound, match="no log stream yet"):
            reader.read(LogTarget("j1", 1, run_id=BUILD), None, 100)


# -- following (RunLogs.follow with a scripted job and reader) --------------------------------


def _job(status: str, attempt: int) -> JobDetail:
    return JobDetail(
        job_id="j1", repo="o/r", event="push", status=status, attempt=attempt, branch="main",
        ref="refs/heads/main", sha="a" * 40, pr_number=None, sender=None, received_at=1,
        activated_at=None, started_at=None, finished_at=None, updated_at=None, reason=None,
        delivery_id=None, version=1, priority=0, timeout_seconds=60, deadline_at=None,
        detail=None, exit_code=None, run_id=None, log_location=None, expires_at=None, history=(),
    )  # fmt: skip


class _Script:
    """Jobs the queries answer in turn, and logs that grow by one piece per read."""

    def __init__(self, jobs: list[JobDetail], pieces: dict[int, list[bytes]]) -> None:
        self.jobs = jobs
        self.pieces = pieces
        self.logs: dict[int, bytes] = {}

    def job(self, job_id: str) -> JobDetail:
        return self.jobs.pop(0) if len(self.jobs) > 1 else self.jobs[0]

    def read(self, target: LogTarget, cursor: str | None, limit: int) -> LogChunk:
        waiting = self.pieces.get(target.attempt, [])
        if waiting:
            self.logs[target.attempt] = self.logs.get(target.attempt, b"") + waiting.pop(0)
        if target.attempt not in self.logs:
            raise LogNotFound(target.job_id, target.attempt, "not yet")
        start = int(cursor or 0)
        data = self.logs[target.attempt][start:]
        return LogChunk(data, str(start + len(data)))


def test_follow_masks_whole_lines_and_goes_on_to_an_automatic_retry() -> None:
    script = _Script(
        [
            *(_job("active", 1), _job("active", 1), _job("pending", 2)),
            *(_job("active", 2), _job("active", 2), _job("passed", 2)),
        ],
        {1: [b"one TOK", b"EN_VALUE two\n", b"end"], 2: [b"second\n"]},
    )
    logs = RunLogs(script, script, lambda _repo: Masker(("TOKEN_VALUE",)))  # type: ignore[arg-type]
    written: list[str] = []
    job = logs.follow("j1", None, written.append, sleep=lambda _s: None)
    assert job.status == "passed"
    text = "".join(written)
    assert text == "one *** two\nend\n[scheduler: attempt 2]\nsecond\n"
    assert "TOK" not in "".join(written[:1])  # a secret split between reads is never written
