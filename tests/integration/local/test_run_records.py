"""What the local executor's records let a restarted stack clean up: every process of a lost
run dies (whenever the old stack died, wherever the process went), nobody else's does, and an
outcome kept on disk comes back whole."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from processes import pid_alive

from scheduler.local.run_records import TOKEN, RunRecords
from scheduler.runs.executor import RunResult

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        process.kill()
        process.wait()


def spawn(processes: list[subprocess.Popen[bytes]], token: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(SLEEPER, env={**os.environ, TOKEN: token}, start_new_session=True)
    processes.append(process)
    return process


def gone(process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return True
        time.sleep(0.05)
    return False


def test_a_run_killed_before_its_pid_was_recorded_is_still_found(
    tmp_path: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    records = RunRecords(tmp_path)
    token = records.starting("gh-1#1")  # the stack dies right after the spawn: no pid on record
    lost = spawn(spawned, token)
    other = spawn(spawned, "a-token-of-somebody-else")
    assert records.kill_leftovers() == ["gh-1#1"]
    assert gone(lost)
    assert pid_alive(other.pid)
    assert list((tmp_path / "procs").glob("*.json")) == []


def test_a_process_that_left_the_runs_group_is_found_by_its_token(
    tmp_path: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    records = RunRecords(tmp_path)
    token = records.starting("gh-2#1")
    leader = spawn(spawned, token)
    escaped = spawn(spawned, token)  # a session (and group) of its own: setsid in the command
    assert os.getpgid(escaped.pid) != leader.pid
    records.kill_leftovers()
    assert gone(leader) and gone(escaped)


def test_an_outcome_kept_on_disk_comes_back_with_its_reason(tmp_path: Path) -> None:
    result = RunResult("gh-3", 2, None, summary="cannot fetch", reason="start_failed")
    RunRecords(tmp_path).keep_result("gh-3#2", result)
    assert RunRecords(tmp_path).unreported_results() == [("gh-3#2", result)]


def test_a_reported_outcome_is_kept_aside_until_its_retention_ends(tmp_path: Path) -> None:
    """Once reported, an outcome is not reported again at start-up, but the runner can still
    tell how the run ended (a finish the database lost is made again), until it is pruned."""
    result = RunResult("gh-4", 1, 3, summary="exit 3", repo="o/r", started_at=1_000)
    records = RunRecords(tmp_path)
    assert records.outcome("gh-4#1") is None
    records.keep_result("gh-4#1", result)
    assert records.outcome("gh-4#1") == result  # not reported yet
    records.result_reported("gh-4#1")
    again = RunRecords(tmp_path)  # after a restart
    assert again.unreported_results() == []
    assert again.outcome("gh-4#1") == result
    assert again.outcome("gh-4#2") is None
    assert again.prune_reported(older_than_seconds=3600) == 0
    old = time.time() - 7200
    os.utime(next((tmp_path / "reported").glob("*.json")), (old, old))
    assert again.prune_reported(older_than_seconds=3600) == 1
    assert again.outcome("gh-4#1") is None
