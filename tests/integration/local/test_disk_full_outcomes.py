"""A full disk against the real store (DynamoDB Local): an outcome the disk refuses is reported
all the same and its command never runs again, a run whose start record is refused fails at
once as ``start_failed``, and a log that lost output says so to its readers.

The disk is full at the write seams (``OSError(ENOSPC)``); the reliability test fills a real
filesystem (tests/reliability/test_disk_full.py)."""

from __future__ import annotations

import errno
import logging
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import IO

import httpx
import pytest

from scheduler.db.queries import Queries
from scheduler.db.store import JobState, JobStore, NewJob
from scheduler.disk_space import DiskSpace
from scheduler.local import run_log, run_records
from scheduler.local.executor import LocalExecutor
from scheduler.local.http_server import LocalHTTPServer
from scheduler.local.log_reader import LocalLogReader
from scheduler.local.run_log import LOST_NOTE, log_file, loss_marker
from scheduler.runs.executor import RunResult, RunStatus
from scheduler.runs.logs import RunLogs
from scheduler.runs.starter import RunStarter
from scheduler.settings import Settings
from scheduler.wiring import build_core
from state_machines import START_FAILED, JobStatus
from tests.conftest import MakeJob

# Each start appends a line to a file outside the runner's folder: the side effect counted.
RECORDER = (
    "import os, sys, time; "
    "e = os.environ; "
    "open(os.path.join(sys.argv[1], e['SCHEDULER_JOB_ID'] + '-' + e['SCHEDULER_ATTEMPT']), 'a')"
    ".write('started\\n'); "
    "[print('line', n, flush=True) or time.sleep(float(sys.argv[2]))"
    " for n in range(int(sys.argv[3]))]"
)


class Seam:
    """Writes under the folders named in ``refused`` fail with ENOSPC while ``full``."""

    def __init__(self) -> None:
        self.full = False
        self.refused: tuple[str, ...] = ("results", "reported", "procs")

    def check(self, path: Path) -> None:
        if self.full and path.parent.name in self.refused:
            raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def seam(monkeypatch: pytest.MonkeyPatch) -> Seam:
    made = Seam()
    write = run_records._write_atomically

    def guarded(path: Path, data: dict[str, object]) -> None:
        made.check(path)
        write(path, data)

    monkeypatch.setattr(run_records, "_write_atomically", guarded)
    return made


@pytest.fixture
def space() -> Iterator[DiskSpace]:
    tracker = DiskSpace(probe_seconds=0.1)
    yield tracker
    tracker.close()


class Outage:
    """The store's report path, refusing the first ``refusals`` reports (a database that is
    down while the disk is full: DynamoDB Local writes to the same disk)."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.calls = 0
        self.report: RunStarter | None = None
        self.done = threading.Event()

    def __call__(self, result: RunResult) -> None:
        self.calls += 1
        if self.calls <= self.refusals:
            raise ConnectionError("the database is unavailable")
        assert self.report is not None
        self.report.finished(result)
        self.done.set()


def command(starts: Path, lines: int = 1, pause: float = 0.0) -> tuple[str, ...]:
    return (sys.executable, "-c", RECORDER, str(starts), str(pause), str(lines))


def active_job(store: JobStore, job_id: str) -> JobState:
    job = store.create(NewJob(job_id, "o/r", "push", "a" * 40, 60, ref="refs/heads/main"))
    result = store.activate(job, slot_limit=10)
    assert isinstance(result, JobState)
    return result


def runner(
    store: JobStore, tmp_path: Path, space: DiskSpace, outage: Outage, argv: tuple[str, ...]
) -> tuple[LocalExecutor, RunStarter]:
    executor = LocalExecutor(
        tmp_path / "runner", outage, base_env={"PATH": "/usr/bin:/bin"}, disk=space
    )
    outage.report = RunStarter(store, executor, lambda _repo: argv)
    return executor, outage.report


def test_an_outcome_the_disk_refuses_is_reported_and_its_command_never_runs_again(
    store: JobStore,
    tmp_path: Path,
    seam: Seam,
    space: DiskSpace,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    starts = tmp_path / "starts"
    starts.mkdir()
    outage = Outage(refusals=3)
    executor, starter = runner(store, tmp_path, space, outage, command(starts))
    active_job(store, "full-1")
    seam.full, seam.refused = True, ("results", "reported")  # the start record is written
    try:
        assert starter.start(store.get("full-1")) == "full-1#1"
        deadline = time.monotonic() + 30
        while outage.calls < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        # Ended, its outcome in memory only and the database refusing it: the reaper is told
        # it is finishing (its outcome decides, not the clock), and asked, it has the outcome.
        assert executor.status("full-1#1") is RunStatus.FINISHING
        assert executor.records.held == 1
        assert outage.done.wait(30)
        job = store.get("full-1")
        assert job.status == JobStatus.PASSED.value
        assert (starts / "full-1-1").read_text() == "started\n"  # ran once
        kept = executor.result_of("full-1#1")
        assert kept is not None and kept.passed
        held = [r for r in caplog.records if "held in memory" in r.getMessage()]
        assert [(r.job_id, r.attempt) for r in held] == [("full-1", 1)]  # type: ignore[attr-defined]
        assert not any(r.exc_info for r in caplog.records)
        # Three refused reports: one line when the first failed, one when it was taken.
        said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("report")]
        assert len(said) == 2 and said[1] == "report taken after 4 tries", said
        assert space.condition == "full"
        seam.full = False
        assert space.space_back()
        assert executor.records.held == 0
        assert (tmp_path / "runner" / "reported" / "full-1@1.json").exists()
    finally:
        executor.close()


def test_a_run_whose_start_record_the_disk_refuses_fails_at_once_as_start_failed(
    store: JobStore, tmp_path: Path, seam: Seam, space: DiskSpace
) -> None:
    starts = tmp_path / "starts"
    starts.mkdir()
    outage = Outage(refusals=2)  # the database is down too, for a moment
    executor, starter = runner(store, tmp_path, space, outage, command(starts))
    active_job(store, "full-2")
    seam.full = True
    try:
        began = time.monotonic()
        starter.start(store.get("full-2"))
        assert outage.done.wait(30)
        took = time.monotonic() - began
        job = store.get("full-2")
        assert job.reason == START_FAILED, job.to_simple_dict()
        assert job.status != JobStatus.ACTIVE.value
        assert took < 10  # the reaper's deadline (60 s here) was not waited for
        assert not (starts / "full-2-1").exists()  # nothing was spawned
        assert executor.result_of("full-2#1") is not None  # held: asked, it answers
    finally:
        executor.close()


def test_a_log_that_lost_output_says_so_to_its_readers(
    store: JobStore,
    tmp_path: Path,
    space: DiskSpace,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    full = threading.Event()
    opened = run_log._open_log

    class Refusing:
        def __init__(self, inner: IO[bytes]) -> None:
            self.inner = inner

        def write(self, data: bytes) -> int:
            if full.is_set():
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.inner.write(data)

        def close(self) -> None:
            self.inner.close()

        @property
        def closed(self) -> bool:
            return self.inner.closed

        def __enter__(self) -> Refusing:
            return self

        def __exit__(self, *_: object) -> None:
            self.close()

    monkeypatch.setattr(run_log, "_open_log", lambda path, mode: Refusing(opened(path, mode)))
    starts = tmp_path / "starts"
    starts.mkdir()
    outage = Outage(refusals=0)
    executor, starter = runner(store, tmp_path, space, outage, command(starts, 30, 0.1))
    active_job(store, "full-3")
    try:
        starter.start(store.get("full-3"))
        deadline = time.monotonic() + 30
        path = executor.logs_dir / "full-3" / "attempt-1.log"
        while (not path.exists() or b"line 5" not in path.read_bytes()) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.05)
        full.set()
        time.sleep(1.0)
        full.clear()
        assert outage.done.wait(30)
    finally:
        executor.close()
    assert store.get("full-3").status == JobStatus.PASSED.value
    # What ``scheduler logs`` and the log route read: the marker is in the text.
    _, text = RunLogs(Queries(), LocalLogReader(executor.logs_dir)).read("full-3")
    assert LOST_NOTE in text and "the disk was full from" in text
    assert text.rstrip().endswith("line 29")
    lost = [r for r in caplog.records if r.getMessage() == "run log lost output to the disk"]
    assert [(r.job_id, r.attempt) for r in lost] == [("full-3", 1)]  # type: ignore[attr-defined]


def test_a_run_waits_while_the_disk_is_known_full_and_starts_when_space_is_back(
    store: JobStore, tmp_path: Path
) -> None:
    """Begun on a full disk it would only fail to start and spend one of the job's
    infrastructure retries: it waits (as for a runner: not its time), then runs once."""
    space = DiskSpace(probe_seconds=3600)  # space comes back when the test says so
    starts = tmp_path / "starts"
    starts.mkdir()
    outage = Outage(refusals=0)
    executor, starter = runner(store, tmp_path, space, outage, command(starts))
    active_job(store, "full-4")
    try:
        assert space.failed(OSError(errno.ENOSPC, "No space left on device"), "a writer")
        starter.start(store.get("full-4"))
        time.sleep(1.0)
        assert executor.status("full-4#1") is RunStatus.WAITING  # the reaper defers it
        assert not (starts / "full-4-1").exists()
        assert space.space_back()
        assert outage.done.wait(30)
        job = store.get("full-4")
        assert (job.status, job.attempt) == (JobStatus.PASSED.value, 1)
        assert (starts / "full-4-1").read_text() == "started\n"
    finally:
        executor.close()
        space.close()


def test_the_dashboard_says_above_the_log_that_it_lost_output(
    settings: Settings, ticking_store: JobStore, tmp_path: Path
) -> None:
    MakeJob(ticking_store)("lossy", "passed")
    MakeJob(ticking_store)("whole", "passed")
    marker = loss_marker(4096, "full", 1_765_000_000.0, 1_765_000_015.0)
    for job_id, text in (("lossy", f"a\n[scheduler: {marker}]\nb\n"), ("whole", "a\nb\n")):
        path = log_file(tmp_path / "logs", job_id, 1)
        path.parent.mkdir(parents=True)
        path.write_text(text)
    core = build_core(
        replace(settings, webhook_secret="s" * 32, api_token=None, config_path=None),
        executor=None,
        log_reader=LocalLogReader(tmp_path / "logs"),
    )
    server = LocalHTTPServer(core.http_app).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            lossy = client.get("/ui/jobs/lossy")
            whole = client.get("/ui/jobs/whole")
    finally:
        server.stop()
    assert lossy.status_code == whole.status_code == 200
    assert "This log lost output while the disk was full" in lossy.text
    assert f"4096 {LOST_NOTE}: the disk was full from 2025-12-06T05:46:40Z" in lossy.text
    assert "This log lost output" not in whole.text
