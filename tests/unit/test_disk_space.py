"""A full disk without a server: the condition and its transitions, the log that says what it
lost, the outcomes held in memory, and the log filter that keeps tracebacks out."""

from __future__ import annotations

import errno
import io
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from scheduler.disk_space import DiskSpace, disk_condition
from scheduler.local import run_log, run_records
from scheduler.local.logs import DiskConditionFilter, StructuredFormatter
from scheduler.local.run_log import LOST_NOTE, CappedLog, loss_marker
from scheduler.local.run_records import RunRecords
from scheduler.runs.executor import RunResult

ENOSPC = OSError(errno.ENOSPC, "No space left on device")


class Disk:
    """The write seam: files opened through it refuse writes while ``full``."""

    def __init__(self) -> None:
        self.full = False

    def open(self, path: Path, mode: str) -> IO[bytes]:
        if self.full and "a" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return _Refusing(open(path, mode, buffering=0), self)


class _Refusing(io.RawIOBase):
    def __init__(self, inner: Any, disk: Disk) -> None:
        self._inner, self._disk = inner, disk

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self._disk.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return int(self._inner.write(data))

    def close(self) -> None:
        self._inner.close()
        super().close()


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Disk:
    seam = Disk()
    monkeypatch.setattr(run_log, "_open_log", seam.open)
    return seam


@pytest.fixture
def space() -> Iterator[DiskSpace]:
    tracker = DiskSpace(probe_seconds=0.05)
    yield tracker
    tracker.close()


def transitions(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "scheduler.disk_space"]


# -- the condition -----------------------------------------------------------------------------


def test_disk_conditions_are_named_from_errno_causes_and_words() -> None:
    assert disk_condition(OSError(errno.ENOSPC, "x")) == "full"
    assert disk_condition(OSError(errno.EDQUOT, "x")) == "over_quota"
    assert disk_condition(OSError(errno.EROFS, "x")) == "read_only"
    assert disk_condition(OSError(errno.EACCES, "x")) is None
    assert disk_condition(ValueError("nothing of the disk")) is None
    try:
        try:
            raise ENOSPC
        except OSError as exc:
            raise RuntimeError("the step failed") from exc
    except RuntimeError as wrapped:
        assert disk_condition(wrapped) == "full"
    # DynamoDB Local's SQLite says it in words, through an HTTP error
    assert disk_condition(RuntimeError("InternalFailure: database or disk is full")) == "full"


def test_one_line_when_the_disk_fills_and_one_when_space_is_back(
    tmp_path: Path, space: DiskSpace, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    called: list[str] = []
    space.watch(tmp_path)
    space.on_space_back(lambda: called.append("flushed"))
    blocked = tmp_path / "gone"  # a probe into a folder that is not there fails: still full
    space.watch(blocked)
    for _ in range(20):
        assert space.failed(ENOSPC, "a writer")
    assert not space.failed(OSError(errno.EACCES, "denied"), "a writer")
    assert space.condition == "full" and space.since is not None
    time.sleep(0.3)
    assert space.condition == "full"  # the probe cannot write yet
    blocked.mkdir()
    deadline = time.monotonic() + 10
    while space.condition != "ok" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert space.condition == "ok" and space.since is None
    assert called == ["flushed"]
    lines = transitions(caplog)
    assert len(lines) == 2, lines
    assert lines[0].startswith("disk full") and lines[1].startswith("disk space back")
    assert not any(r.exc_info for r in caplog.records)
    assert not list(tmp_path.glob(".disk-probe"))  # the probe leaves nothing behind
    space.failed(ENOSPC, "again")  # a second bad day is a new transition
    assert len(transitions(caplog)) == 3


def test_the_log_filter_drops_disk_tracebacks_and_keeps_others(space: DiskSpace) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(StructuredFormatter())
    handler.addFilter(DiskConditionFilter(space))
    logger = logging.getLogger("test.disk.filter")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for _ in range(5):
            try:
                raise RuntimeError("stream runner step failed") from ENOSPC
            except RuntimeError:
                logger.exception("stream runner step failed; backing off")
        try:
            raise KeyError("a bug")
        except KeyError:
            logger.exception("something else")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert space.condition == "full"
    assert "backing off" not in text and "No space left" not in text
    assert "something else" in text and "Traceback" in text  # a bug keeps its traceback


# -- the log -----------------------------------------------------------------------------------


def test_a_log_says_how_many_bytes_it_lost_and_when(
    tmp_path: Path, disk: Disk, space: DiskSpace
) -> None:
    now = [1_765_000_000.0]
    path = tmp_path / "attempt-1.log"
    log = CappedLog(path, 1_000_000, disk=space, clock=lambda: now[0])
    log.write(b"before\n")
    disk.full = True
    log.write(b"lost one\n")
    now[0] += 12
    log.write(b"lost two\n")
    disk.full = False
    now[0] += 1  # past the wait between two tries
    log.write(b"after\n")
    log.close()
    text = path.read_text()
    marker = loss_marker(18, "full", 1_765_000_000.0, 1_765_000_013.0)
    assert text == f"before\n[scheduler: {marker}]\nafter\n"
    assert f"18 {LOST_NOTE}" in marker and "2025-12-06T05:46:40Z" in marker
    assert log.lost_bytes == 18 and log.complete
    assert space.condition == "full"  # told, once


def test_a_log_whose_end_the_disk_refuses_writes_it_when_space_is_back(
    tmp_path: Path, disk: Disk, space: DiskSpace
) -> None:
    path = tmp_path / "attempt-1.log"
    log = CappedLog(path, 40, disk=space)  # a cap: the tail is written at the end
    log.write(b"head line\n" * 2)
    disk.full = True
    log.write(b"held line %d\n" % 1)  # past the head: held in memory, nothing written
    log.write(b"tail line\n")
    log.close()
    assert not log.complete and log.pending.endswith(b"tail line\n")
    assert not log.finish_pending()  # still full
    disk.full = False
    assert log.finish_pending() and log.complete
    text = path.read_text()
    assert text.startswith("head line\nhead line\n") and text.endswith("tail line\n")
    assert "bytes cut here" in text  # the cut marker waited with the tail


def test_a_short_write_is_finished_not_lost(tmp_path: Path, space: DiskSpace) -> None:
    path = tmp_path / "attempt-1.log"
    log = CappedLog(path, 1_000_000, disk=space)
    inner = log._file  # the seam under test: a file that takes 3 bytes a call

    class Short(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            return int(inner.write(bytes(data[:3])))

        def close(self) -> None:
            inner.close()
            super().close()

    log._file = Short()
    log.write(b"a whole line\n")
    log.close()
    assert path.read_bytes() == b"a whole line\n" and log.lost_bytes == 0


# -- the outcomes ------------------------------------------------------------------------------


@pytest.fixture
def refusing_records(monkeypatch: pytest.MonkeyPatch) -> Disk:
    seam = Disk()
    write = run_records._write_atomically

    def guarded(path: Path, data: dict[str, object]) -> None:
        if seam.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(path, data)

    monkeypatch.setattr(run_records, "_write_atomically", guarded)
    return seam


def test_an_outcome_the_disk_refuses_is_held_answered_and_written_later(
    tmp_path: Path,
    refusing_records: Disk,
    space: DiskSpace,
    caplog: pytest.LogCaptureFixture,
) -> None:
    records = RunRecords(tmp_path, space)
    done = RunResult("gh-1", 1, 0, summary="exit code 0", repo="o/r")
    waiting = RunResult("gh-2", 3, 1, summary="exit code 1", repo="o/r")
    refusing_records.full = True
    assert not records.keep_result("gh-1#1", done)
    assert not records.keep_result("gh-2#3", waiting)
    assert records.held == 2
    held_lines = [r for r in caplog.records if "held in memory" in r.getMessage()]
    assert [(r.job_id, r.attempt) for r in held_lines] == [("gh-1", 1), ("gh-2", 3)]  # type: ignore[attr-defined]
    assert records.outcome("gh-1#1") == done  # the reaper's question is answered from memory
    records.result_reported("gh-1#1")
    assert records.unreported_results() == [("gh-2#3", waiting)]
    assert records.flush() == 2  # still full: nothing written, nothing dropped
    refusing_records.full = False
    assert records.flush() == 0
    assert [p.name for p in (tmp_path / "reported").iterdir()] == ["gh-1@1.json"]
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["gh-2@3.json"]
    again = RunRecords(tmp_path, space)  # after a restart: from disk
    assert again.outcome("gh-1#1") == done
    assert again.unreported_results() == [("gh-2#3", waiting)]
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_failed_record_write_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError):
        run_records._write_atomically(tmp_path / "x.json", {"key": "k"})
    assert list(tmp_path.iterdir()) == []


def test_an_outcome_still_held_when_the_runner_closes_is_said_lost(
    tmp_path: Path,
    refusing_records: Disk,
    space: DiskSpace,
    caplog: pytest.LogCaptureFixture,
) -> None:
    records = RunRecords(tmp_path, space)
    refusing_records.full = True
    records.keep_result("gh-5#2", RunResult("gh-5", 2, 0, summary="exit code 0"))
    records.keep_result("gh-6#1", RunResult("gh-6", 1, 0, summary="exit code 0"))
    records.result_reported("gh-6#1")  # the store has this one: nothing is lost with it
    records.close()
    lost = [r for r in caplog.records if r.getMessage().startswith("run outcome lost")]
    assert [(r.job_id, r.attempt) for r in lost] == [("gh-5", 2)]  # type: ignore[attr-defined]
