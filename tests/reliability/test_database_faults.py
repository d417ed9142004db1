"""Defects 2 and 13: DynamoDB Local dies under a running stack. The stack restarts it on the
same port and data directory, says so in one log line, refuses deliveries meanwhile with 503
(GitHub redelivers), and every job still runs exactly once: nothing dropped, nothing
dead-lettered, nothing failed for the outage."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from harness import (
    UNSANDBOXED,
    LocalStackProcess,
    assert_doctor_reports_nothing,
    run_command,
    wait_for,
)
from processes import pid_alive

from scheduler.settings import Settings

RESTARTED = "DynamoDB Local exited; restarting it"
RECOVERED = "run's lost report recovered"


def deliver_until_accepted(
    stack: LocalStackProcess, client: httpx.Client, repo: str, delivery: str, sha: str
) -> tuple[str, list[int]]:
    """Deliver as GitHub does: a refused delivery is sent again; returns the job id and the
    status codes seen."""
    codes = []
    deadline = time.monotonic() + 90
    while True:
        try:
            response = stack.deliver(client, repo, delivery, sha)
        except httpx.TransportError:
            codes.append(0)
        else:
            codes.append(response.status_code)
            if response.status_code in (200, 201, 202):
                return str(response.json()["job_id"]), codes
            assert response.status_code == 503, response.text  # refused, never a 500
        assert time.monotonic() < deadline, f"delivery {delivery} never accepted: {codes}"
        time.sleep(0.3)


def test_dynamodb_local_killed_under_load_is_restarted_and_every_job_runs_once(
    tmp_path: Path,
) -> None:
    stack = LocalStackProcess(tmp_path, config="")
    stack.config = (
        f"[defaults]\ncheckout = false\ncommand = {run_command(stack.effects, 1.5)}\n"
        + UNSANDBOXED
        + "concurrency = 2\ntimeout_seconds = 600\n[defaults.retry]\nattempts = 1\n"
    )
    stack.start()
    try:
        with httpx.Client(timeout=30) as client:
            ids = [
                deliver_until_accepted(stack, client, "chaos/db", f"db-{n}", f"{n + 1:040x}")[0]
                for n in range(6)
            ]
            wait_for("two runs to start", lambda: len(stack.starts()) >= 2, 30)
            first = stack.kill_dynamodb()
            # Deliveries while the database is down are refused (503) until it is back.
            late = [
                deliver_until_accepted(stack, client, "chaos/db", f"db-late-{n}", f"{n + 7:040x}")
                for n in range(2)
            ]
            ids += [job_id for job_id, _codes in late]
            assert any(503 in codes for _job, codes in late), late
            assert not pid_alive(first)
            wait_for("a new DynamoDB Local", lambda: stack.dynamodb_pid() not in (None, first), 30)
            # DynamoDB Local may lose writes it acknowledged just before a SIGKILL (it is not
            # durable the way DynamoDB is): the deliveries before the kill are sent again, and
            # each still maps to its one job.
            recreated = set()  # jobs the kill lost, made anew (they may have run before)
            for n, job_id in enumerate(ids[:6]):
                again, codes = deliver_until_accepted(
                    stack, client, "chaos/db", f"db-{n}", f"{n + 1:040x}"
                )
                assert again == job_id
                if codes[-1] == 202:
                    recreated.add(job_id)

            def all_passed() -> bool:
                try:
                    return all(stack.job(client, j)["status"] == "passed" for j in ids)
                except AssertionError:
                    return False  # a read refused while the database restarts

            wait_for("every job to pass", all_passed, 180, 0.5)
            stats = stack.stats(client, "chaos/db")
        assert stats["counts"]["passed"] == len(ids) == 8, stats
        assert stats["running"] == 0 and stats["counts"]["active"] == 0, stats
        starts = Counter((s.job_id, s.attempt) for s in stack.starts())
        assert sorted(starts) == sorted((job_id, 1) for job_id in ids), starts
        # No attempt's command ran twice (but a job the emulator lost may have run before).
        assert all(v == 1 for k, v in starts.items() if k[0] not in recreated), starts
        assert stack.dead_letters() == []
        log = stack.log_tail(200_000)
        assert log.count(RESTARTED) == 1, log[-3000:]
        assert_doctor_reports_nothing(stack)
    finally:
        stack.stop()


def test_a_finish_lost_with_the_database_is_reported_again_once_it_is_back(
    tmp_path: Path,
) -> None:
    """DynamoDB Local can lose a write it acknowledged just before it was SIGKILLed. When that
    write is a run's finish, the job is ``active`` again with its run over; its deadline is
    its whole timeout away. Once the server is back, the stack judges every active job: the
    run's outcome, kept by its runner, is reported again, as it ended, with no second run."""
    stack = LocalStackProcess(tmp_path, config="")
    stack.config = (
        f"[defaults]\ncheckout = false\ncommand = {run_command(stack.effects, 1.0, 3)}\n"
        + UNSANDBOXED
        + "timeout_seconds = 600\n[defaults.retry]\nattempts = 1\n"
    )
    stack.start()
    ddb = stack.dynamodb()
    tables = Settings.from_env({}).tables
    try:
        with httpx.Client(timeout=30) as client:
            job_id, _codes = deliver_until_accepted(stack, client, "chaos/lost", "lost-1", "e" * 40)
            wait_for("the run to start", stack.starts, 30)
            # The items as the finish will find them: what the lost write leaves behind.
            job_key = {"job_id": {"S": job_id}}
            running = ddb.get_item(TableName=tables.jobs, Key=job_key)["Item"]
            repo = ddb.get_item(TableName=tables.repos, Key={"repo": {"S": "chaos/lost"}})["Item"]
            assert running["status"]["S"] == "active", running
            wait_for("the run to fail", lambda: stack.job(client, job_id)["status"] == "failed", 60)
            failed = stack.job(client, job_id)
            assert failed["reason"] == "exit_code" and failed["exit_code"] == 3, failed

            ddb.put_item(TableName=tables.jobs, Item=running)  # the finish is lost...
            ddb.put_item(TableName=tables.repos, Item=repo)
            assert stack.job(client, job_id)["status"] == "active"
            time.sleep(1.0)  # ...and what it left behind is on disk before the kill
            first = stack.kill_dynamodb()
            wait_for("a new DynamoDB Local", lambda: stack.dynamodb_pid() not in (None, first), 30)

            def reported() -> dict[str, Any] | None:
                try:
                    job = stack.job(client, job_id)
                except (AssertionError, httpx.TransportError):
                    return None  # a read refused while the database restarts
                return job if job["status"] != "active" else None

            again = wait_for("the lost finish to be made again", reported, 60, 0.5)
            stats = stack.stats(client, "chaos/lost")
        assert again["status"] == "failed", again
        assert (again["reason"], again["exit_code"]) == ("exit_code", 3), again
        assert [(s.job_id, s.attempt) for s in stack.starts()] == [(job_id, 1)]
        assert stats["running"] == 0 and stats["counts"]["failed"] == 1, stats
        assert RECOVERED in stack.log_tail(200_000)
        assert_doctor_reports_nothing(stack)
    finally:
        stack.stop()
