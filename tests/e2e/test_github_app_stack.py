"""End to end through `scheduler up` in GitHub App mode, against the GitHub API stand-in: a push
makes a job whose check run goes queued -> in_progress -> completed (failure) with the masked end
of its log; GitHub's Re-run button (a check_run delivery) makes a second attempt with a check
run of its own. Ports 18740-18749."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from github_api_stand_in import CheckRun, GitHubStandIn

from scheduler.github.signature import sign

ROOT = Path(__file__).resolve().parents[2]
SCHEDULER = str(ROOT / ".venv" / "bin" / "scheduler")
SECRET = "e2e-github-app-secret-0123456789abcdef"
REPO = "octo-org/app-e2e"
STAND_IN_PORT, HTTP_PORT, DYNAMODB_PORT = 18741, 18742, 18743
COMMAND = "print('compiling'); print('token=' + 'hunter2-secret-value'); raise SystemExit(3)"


def post(url: str, event: str, payload: dict[str, Any]) -> httpx.Response:
    body = json.dumps(payload).encode()
    return httpx.post(
        f"{url}/webhook",
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": sign(SECRET.encode(), body),
        },
        timeout=30,
    )


def wait_for(what: str, check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_job_reports_through_check_runs_and_githubs_rerun_button(tmp_path: Path) -> None:
    config = tmp_path / "scheduler.toml"
    argv = json.dumps([sys.executable, "-c", COMMAND])
    config.write_text(
        f'[defaults]\ncheckout = false\nsandbox = "off"\ncommand = {argv}\n'
        'mask_env = ["E2E_SECRET"]\ntimeout_seconds = 60\n'
    )
    with GitHubStandIn(port=STAND_IN_PORT) as github:
        github.install(REPO, 321)
        github.grant(REPO, "maintainer", "write")
        key = tmp_path / "app.pem"
        key.write_text(github.private_key_pem)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SCHEDULER_", "AWS_"))}
        env.update(
            GITHUB_WEBHOOK_SECRET=SECRET,
            SCHEDULER_CONFIG=str(config),
            SCHEDULER_GITHUB_APP_ID=str(github.app_id),
            SCHEDULER_GITHUB_APP_PRIVATE_KEY_FILE=str(key),
            SCHEDULER_GITHUB_API_URL=github.url,
            SCHEDULER_DASHBOARD_URL="https://ci.example.com",
            E2E_SECRET="hunter2-secret-value",
        )
        process = subprocess.Popen(
            [
                SCHEDULER,
                "up",
                "--port",
                str(HTTP_PORT),
                "--dynamodb-port",
                str(DYNAMODB_PORT),
                "--data-dir",
                str(tmp_path / "data"),
                "--json",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=open(tmp_path / "stack.log", "a"),  # noqa: SIM115 - the child owns it
            text=True,
        )
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line, (tmp_path / "stack.log").read_text()[-3000:]
            url = json.loads(line)["url"]
            push = {
                "ref": "refs/heads/main",
                "after": "e" * 40,
                "repository": {"full_name": REPO},
                "sender": {"login": "maintainer"},
                "installation": {"id": 321},
            }
            answer = post(url, "push", push)
            assert answer.status_code == 202, answer.text
            job_id = answer.json()["job_id"]

            def completed() -> list[CheckRun]:
                return [
                    run
                    for run in github.runs_of(REPO)
                    if run.fields.get("status") == "completed"
                    and run.fields.get("external_id") == job_id
                ]

            (first,) = wait_for("the first check run to complete", completed)
            assert first.fields["conclusion"] == "failure"
            assert first.fields["details_url"] == f"https://ci.example.com/ui/jobs/{job_id}"
            text = first.fields["output"]["text"]
            assert "compiling" in text and "hunter2-secret-value" not in text  # masked
            assert "exit code 3" in first.fields["output"]["summary"]
            statuses = [h.get("status") for h in first.history]
            assert statuses[-1] == "completed" and len(first.history) <= 3  # coalesced
            # GitHub's Re-run button.
            rerun = {
                "action": "rerequested",
                "check_run": {
                    "id": first.id,
                    "external_id": job_id,
                    "head_sha": "e" * 40,
                    "name": first.fields["name"],
                },
                "repository": {"full_name": REPO},
                "sender": {"login": "maintainer"},
                "installation": {"id": 321},
            }
            answer = post(url, "check_run", rerun)
            assert answer.status_code == 202 and answer.json()["attempt"] == 2, answer.text
            second = wait_for(
                "the re-run's check run",
                lambda: [r for r in completed() if r.id != first.id],
            )
            assert len(second) == 1 and second[0].fields["conclusion"] == "failure"
            assert "Attempt 2." in second[0].fields["output"]["summary"]
            # The same click delivered again: no third attempt.
            assert post(url, "check_run", rerun).status_code == 200
            assert github.problems == []
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(90)
