"""The operator CLI through its real console script, as a subprocess, against DynamoDB Local.

The session's ``settings`` fixture exports the endpoint and table names to the environment,
so ``.venv/bin/scheduler`` finds the same tables as the jobs created here.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scheduler.db.store import JobStore

SCRIPT = Path(sys.executable).with_name("scheduler")
REPO = "octo-org/api"
OTHER = "octo-org/web"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def run_json(*args: str, code: int = 0) -> Any:
    result = run(*args, "--json")
    assert result.returncode == code, result.stderr
    assert result.stderr == ""
    return json.loads(result.stdout)


def refused(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    """An error: the exit code, nothing on stdout, one line on stderr naming the cause."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0]


@pytest.fixture
def seeded(make_job: Any, ticking_store: JobStore) -> JobStore:
    make_job("old-passed", "passed")
    make_job("dev-failed", "failed", branch="dev")
    make_job("pr-failed", "failed", branch="dev", event="pull_request")
    make_job("running", "active")
    make_job("queued")
    make_job("elsewhere", "failed", repo=OTHER)
    return ticking_store


def test_status_lists_filters_and_pages(seeded: JobStore) -> None:
    data = run_json("status", REPO)
    assert [job["job_id"] for job in data["jobs"]] == [
        "queued",
        "running",
        "pr-failed",
        "dev-failed",
        "old-passed",
    ]
    assert data["next_cursor"] is None and data["jobs"][2]["pr_number"] == 7
    failed = run_json("status", REPO, "--status", "failed", "--branch", "dev", "--limit", "1")
    assert [job["job_id"] for job in failed["jobs"]] == ["pr-failed"]
    rest = run_json(
        "status", REPO, "--status", "failed", "--branch", "dev", "--cursor", failed["next_cursor"]
    )
    assert [job["job_id"] for job in rest["jobs"]] == ["dev-failed"]
    assert [j["job_id"] for j in run_json("status", REPO, "--event", "pull_request")["jobs"]] == [
        "pr-failed"
    ]

    human = run("status", REPO, "--limit", "2")
    assert human.returncode == 0 and "\x1b[" not in human.stdout  # no colour into a pipe
    header, *rows = [line for line in human.stdout.splitlines() if line.strip()]
    assert header.split()[:3] == ["JOB", "STATUS", "EVENT"]
    assert rows[1].split()[:2] == ["queued", "pending"]
    assert rows[2].split()[:2] == ["running", "active"]
    assert "ago" in rows[1] and "queued" in rows[1]
    assert rows[-1].startswith("more: --cursor ")


def test_status_refuses_bad_arguments_and_foreign_cursors(seeded: JobStore) -> None:
    refused(run("status", "not-a-repo"), 2, "OWNER/NAME")
    refused(run("status", REPO, "--status", "exploded"), 2, "status must be one of")
    refused(run("status", REPO, "--limit", "0"), 2, "limit")
    refused(run("status", REPO, "--limit", "lots"), 2, "--limit")
    refused(run("status"), 2, "Missing argument")
    refused(run("status", REPO, "--bogus"), 2, "--bogus")
    refused(run("statuz", REPO), 2, "statuz")
    cursor = run_json("status", REPO, "--limit", "1")["next_cursor"]
    refused(run("status", OTHER, "--cursor", cursor), 2, "another repository")
    refused(run("status", REPO, "--status", "failed", "--cursor", cursor), 2, "other filters")
    tampered = cursor[:5] + ("A" if cursor[5] != "A" else "B") + cursor[6:]
    refused(run("status", REPO, "--cursor", tampered), 2, "invalid cursor")
    refused(run("status", REPO, "--cursor", "garbage"), 2, "invalid cursor")


def test_show_one_job_with_history(seeded: JobStore) -> None:
    job = run_json("show", "dev-failed")
    assert (job["status"], job["attempt"], job["reason"], job["exit_code"]) == (
        "failed",
        1,
        "exit_code",
        1,
    )
    assert [(h["from"], h["to"]) for h in job["history"]] == [
        (None, "pending"),
        ("pending", "active"),
        ("active", "failed"),
    ]
    human = run("show", "dev-failed")
    assert human.returncode == 0
    assert "dev-failed" in human.stdout and "history" in human.stdout
    assert "exit_code (exit code 1)" in human.stdout
    refused(run("show", "no-such-job"), 1, "no-such-job", "not found")
    refused(run("show", "x" * 300), 2, "job id")


def test_stats_of_a_repository(seeded: JobStore) -> None:
    stats = run_json("stats", REPO)
    assert stats["counts"] == {
        "waiting": 0,
        "blocked": 0,
        "pending": 1,
        "active": 1,
        "passed": 1,
        "failed": 2,
        "cancelled": 0,
        "skipped": 0,
    }
    assert (stats["running"], stats["slot_limit"], stats["total"]) == (1, 100, 5)
    assert stats["last_job"]["job_id"] == "queued"
    human = run("stats", REPO)
    assert human.returncode == 0 and "1 of 100" in human.stdout and "queued" in human.stdout
    refused(run("stats", "nobody/nothing"), 1, "nobody/nothing", "not found")


def test_retry_one_job(seeded: JobStore) -> None:
    retried = run_json("retry", "dev-failed")
    assert retried == {
        "job_id": "dev-failed",
        "repo": REPO,
        "previous_status": "failed",
        "status": "pending",
        "attempt": 2,
    }
    refused(run("retry", "dev-failed"), 1, "cannot retry a job that is pending")
    refused(run("retry", "old-passed"), 1, "cannot retry a job that is passed")
    refused(run("retry", "no-such-job"), 1, "not found")
    human = run("retry", "pr-failed")
    assert human.returncode == 0 and "failed -> pending, attempt 2" in human.stdout


def test_retry_all_failed_twice_and_its_arguments(seeded: JobStore) -> None:
    assert run_json("retry", "--repo", REPO, "--all-failed", "--since", "2099-01-01")[
        "retried"
    ] == (0)
    first = run_json("retry", "--repo", REPO, "--all-failed", "--since", "2h")
    assert (first["retried"], first["skipped"], first["refused"]) == (2, 0, 0)
    assert sorted(job["job_id"] for job in first["jobs"]) == ["dev-failed", "pr-failed"]
    second = run("retry", "--repo", REPO, "--all-failed")
    assert second.returncode == 0
    assert "retried 0, skipped 0, refused 0" in second.stdout
    assert run_json("stats", OTHER)["counts"]["failed"] == 1  # another repository untouched

    refused(run("retry"), 2, "JOB_ID")
    refused(run("retry", "--repo", REPO), 2, "--all-failed")
    refused(run("retry", "dev-failed", "--repo", REPO, "--all-failed"), 2, "not both")
    refused(run("retry", "--repo", REPO, "--all-failed", "--since", "soon"), 2, "--since")
    refused(run("retry", "--repo", "bad", "--all-failed"), 2, "OWNER/NAME")


def test_cancel(seeded: JobStore) -> None:
    assert run_json("cancel", "queued")["status"] == "cancelled"
    active = run_json("cancel", "running")
    assert (active["previous_status"], active["status"]) == ("active", "cancelled")
    # The slot stays taken until the stream processor has stopped the run (issue 10).
    assert run_json("stats", REPO)["running"] == 1
    assert seeded.get("running").slot_held
    refused(run("cancel", "old-passed"), 1, "cannot cancel a job that is passed")
    refused(run("cancel", "queued"), 1, "cannot cancel a job that is cancelled")
    refused(run("cancel", "no-such-job"), 1, "not found")


def test_approve_a_fork_pull_request_waiting_for_approval(seeded: JobStore, make_job: Any) -> None:
    make_job("fork", "waiting", event="pull_request")
    waiting = run_json("status", REPO, "--status", "waiting")
    assert [job["job_id"] for job in waiting["jobs"]] == ["fork"]
    assert run_json("stats", REPO)["counts"]["waiting"] == 1
    assert run_json("show", "fork")["fork"] is True
    assert run_json("approve", "fork") == {
        "job_id": "fork",
        "repo": REPO,
        "previous_status": "waiting",
        "status": "pending",
        "attempt": 1,
    }
    stats = run_json("stats", REPO)
    assert (stats["counts"]["waiting"], stats["counts"]["pending"]) == (0, 2)
    refused(run("approve", "fork"), 1, "cannot approve a job that is pending")
    refused(run("approve", "old-passed"), 1, "cannot approve a job that is passed")
    refused(run("approve", "no-such-job"), 1, "not found")
    make_job("fork-2", "waiting", event="pull_request")
    human = run("approve", "fork-2")
    assert human.returncode == 0 and "approved job fork-2" in human.stdout
    assert "waiting -> pending, attempt 1" in human.stdout
    make_job("fork-3", "waiting", event="pull_request")
    assert run_json("cancel", "fork-3")["previous_status"] == "waiting"


def test_unreachable_endpoint_and_missing_table_are_configuration_errors(
    seeded: JobStore,
) -> None:
    wrong = {"SCHEDULER_DYNAMODB_ENDPOINT": "http://127.0.0.1:9"}
    refused(run("status", REPO, env=wrong), 2, "cannot read")
    refused(run("retry", "dev-failed", env=wrong), 2)
    missing = {"SCHEDULER_JOBS_TABLE": "no-such-table", "SCHEDULER_REPOS_TABLE": "nor-this"}
    refused(run("show", "queued", env=missing), 2, "does not exist")
    refused(run("stats", REPO, env=missing), 2, "does not exist")
    refused(run("cancel", "queued", env=missing), 2)
    refused(
        run("status", REPO, env={"SCHEDULER_RETENTION_DAYS": "soon"}),
        2,
        "SCHEDULER_RETENTION_DAYS must be an integer",
    )


def run_on_terminal(*args: str) -> tuple[int, str]:
    """Run with stdout and stderr on a pseudo-terminal; the exit code and what it showed."""
    leader, follower = pty.openpty()
    try:
        process = subprocess.run(
            [str(SCRIPT), *args],
            stdout=follower,
            stderr=follower,
            env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "200"},
            timeout=60,
            check=False,
        )
        os.close(follower)
        output = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(leader)
    return process.returncode, output.decode(errors="replace")


def test_colour_and_progress_only_on_a_terminal(seeded: JobStore) -> None:
    code, shown = run_on_terminal("status", REPO, "--status", "failed")
    assert code == 0
    assert "\x1b[" in shown and "failed" in shown  # the status is coloured
    code, shown = run_on_terminal("retry", "--repo", REPO, "--all-failed")
    assert code == 0
    assert "retrying" in shown  # the progress bar (transient, on stderr)
    assert "retried 2, skipped 0, refused 0" in shown
