"""Issue 11, poison: malformed items written straight into the jobs table end in the dead-letter
table, one letter each, while the deliveries around them flow; once an operator repairs or
removes a poison item, ``scheduler dlq replay`` of its letter succeeds, and a letter whose item
is still poison is refused and kept."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
from harness import UNSANDBOXED, LocalStackProcess, run_command, wait_for

from scheduler.settings import Settings

POISON: dict[str, dict[str, Any]] = {
    "poison-status": {"status": {"S": "exploded"}, "repo": {"S": "x/y"}},
    "poison-fields": {"status": {"S": "pending"}},  # no repository, no sha, no timeout
    "poison-types": {
        "status": {"S": "pending"},
        "repo": {"S": "x/y"},
        "event": {"S": "push"},
        "sha": {"S": "a" * 40},
        "timeout_seconds": {"S": "sixty"},  # a number attribute holding a string
        "received_at": {"N": "1"},
    },
    "poison-history": {
        "status": {"S": "active"},
        "repo": {"S": "x/y"},
        "history": {"S": "not a list"},
    },
}


def test_poison_items_are_dead_lettered_and_a_repaired_one_replays(tmp_path: Path) -> None:
    stack = LocalStackProcess(tmp_path, config="")
    stack.config = (
        f"[defaults]\ncheckout = false\ncommand = {run_command(stack.effects, 0.1)}\n"
        + UNSANDBOXED
        + "concurrency = 4\n"
        "timeout_seconds = 600\n"
    )
    stack.start()
    ddb = stack.dynamodb()
    table = Settings.from_env({}).tables.jobs
    try:
        with httpx.Client(timeout=30) as client:
            ids = []
            for n in range(20):
                if n % 5 == 2:  # a poison item between deliveries
                    job_id = sorted(POISON)[n // 5]
                    ddb.put_item(TableName=table, Item={"job_id": {"S": job_id}, **POISON[job_id]})
                response = stack.deliver(client, "poison/flow", f"flow-{n}", f"{n + 1:040x}")
                assert response.status_code == 202, response.text
                ids.append(response.json()["job_id"])

            def flowed() -> bool:
                return all(stack.job(client, j)["status"] == "passed" for j in ids)

            wait_for("the deliveries around the poison to pass", flowed, 120, 0.5)

        def letters() -> list[dict[str, Any]]:
            return stack.dead_letters()

        found = wait_for("four dead letters", lambda: len(letters()) == 4 and letters(), 120)
        by_job = {tuple(letter["job_ids"]): letter for letter in found}
        assert set(by_job) == {(job_id,) for job_id in POISON}, found
        assert all(x["condition"] == "RetryAttemptsExhausted" for x in found), found
        assert all(x["records"] == 1 for x in found), found

        # The operator repairs one poison item and removes another; two stay poison.
        ddb.delete_item(TableName=table, Key={"job_id": {"S": "poison-status"}})
        ddb.put_item(
            TableName=table,
            Item={
                "job_id": {"S": "poison-fields"},
                "status": {"S": "cancelled"},
                "repo": {"S": "x/y"},
                "event": {"S": "push"},
                "sha": {"S": "b" * 40},
                "timeout_seconds": {"N": "60"},
                "received_at": {"N": "1"},
            },
        )
        replay = stack.cli("dlq", "replay", "--all", "--json")
        assert replay.returncode == 1, replay.stdout + replay.stderr  # two letters still fail
        assert "Traceback" not in replay.stderr, replay.stderr
        summary = json.loads(replay.stdout)
        assert (summary["replayed"], summary["failed"]) == (2, 2), summary
        # The repair's own stream record is a valid change: no new letter comes of it.
        time.sleep(3)
        final = letters()
        assert len(final) == 4, final
        after = {tuple(x["job_ids"]): x["replayed"] for x in final}
        assert after == {
            ("poison-status",): True,
            ("poison-fields",): True,
            ("poison-types",): False,
            ("poison-history",): False,
        }
    finally:
        stack.stop()
