"""Runs build the commit they were told about, through the real stack (``scheduler up``): pushes
and a pull request of a git repository in a temporary folder, checked from inside the command;
two jobs of one repository at once; an unknown commit; a remote that is gone."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import httpx
from credential_trap import credential_trap
from git_origin import make_origin
from harness import LocalStackProcess, shares, wait_for

# The command: write what the work tree is (HEAD, a.txt, b.txt if any) to a file named after the
# job, and fail unless HEAD is the job's sha.
PROBE = (
    "import os, pathlib, subprocess, sys\n"
    "head = subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True, text=True).stdout\n"
    "files = {p.name: p.read_text() for p in pathlib.Path('.').glob('*.txt')}\n"
    "out = pathlib.Path(sys.argv[1]) / (os.environ['SCHEDULER_JOB_ID'] + '.json')\n"
    "out.write_text(__import__('json').dumps({'head': head.strip(), 'files': files}))\n"
    "sys.exit(0 if head.strip() == os.environ['SCHEDULER_SHA'] else 3)\n"
)


def deliver_pull_request(
    stack: LocalStackProcess, client: httpx.Client, repo: str, sha: str
) -> str:
    head = {"sha": sha, "ref": "feature", "repo": {"full_name": repo}}  # not a fork
    pull = {"number": 7, "head": head, "base": {"ref": "main"}}
    payload = {
        "action": "opened",
        "number": 7,
        "pull_request": pull,
        "repository": {"full_name": repo},
        "sender": {"login": "t"},
    }
    response = stack.post_delivery(client, "pull_request", f"pr-{sha[:8]}", payload)
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def ended(stack: LocalStackProcess, client: httpx.Client, job_id: str) -> dict[str, object]:
    def terminal() -> dict[str, object] | None:
        job = stack.job(client, job_id)
        return job if job["status"] in ("passed", "failed", "cancelled") else None

    return dict(wait_for(f"job {job_id} to end", terminal, 120, 0.3))


def test_runs_check_out_the_jobs_commit(tmp_path: Path) -> None:
    origin = make_origin(tmp_path / "origin")
    seen = tmp_path / "seen"
    seen.mkdir()
    probe = json.dumps([sys.executable, "-c", PROBE, str(seen)])
    stack = LocalStackProcess(tmp_path, config="")
    stack.config = (
        f"[defaults]\ncommand = {probe}\ntimeout_seconds = 120\nconcurrency = 2\n"
        f"{shares(seen)}"
        f'[repos."octo/app"]\nclone_url = "{origin.path}"\n'
        f'[repos."octo/gone"]\nclone_url = "{tmp_path / "no-such-remote"}"\n'
        "timeout_seconds = 5\n"
    )
    stack.start()
    try:
        with httpx.Client(timeout=30) as client:
            started = time.monotonic()
            pushes = {
                stack.deliver(client, "octo/app", "push-1", origin.first).json()["job_id"]: (
                    origin.first,
                    {"a.txt": "one"},
                ),
                stack.deliver(client, "octo/app", "push-2", origin.second).json()["job_id"]: (
                    origin.second,
                    {"a.txt": "two"},
                ),
            }
            pull = deliver_pull_request(stack, client, "octo/app", origin.pull)
            pushes[pull] = (origin.pull, {"a.txt": "two", "b.txt": "pr"})
            for job_id, (sha, files) in pushes.items():
                job = ended(stack, client, job_id)
                assert job["status"] == "passed", job
                assert json.loads((seen / f"{job_id}.json").read_text()) == {
                    "head": sha,
                    "files": files,
                }
                log = client.get(f"{stack.url}/jobs/{job_id}/log").text
                assert log.startswith(f"[scheduler: checked out {sha} in "), log
            took = time.monotonic() - started
            print(f"\ncheckout: three jobs of one repository ended in {took:.1f}s")

            unknown = stack.deliver(client, "octo/app", "push-3", "1" * 40).json()["job_id"]
            job = ended(stack, client, unknown)
            assert (job["status"], job["reason"]) == ("failed", "error"), job
            assert "is not in" in str(job["detail"])
            assert not (seen / f"{unknown}.json").exists()  # the command never ran
            log = client.get(f"{stack.url}/jobs/{unknown}/log").text
            assert log.startswith("[scheduler: checkout failed: commit 1111"), log

            # A remote out of reach: its pipeline file cannot be read, which is asked again
            # (by the sweeps) until the job's timeout (here 5 s), then the job fails saying so.
            gone = stack.deliver(client, "octo/gone", "push-4", origin.first).json()["job_id"]
            job = ended(stack, client, gone)
            assert (job["status"], job["reason"]) == ("failed", "pipeline_unavailable"), job
            assert "cannot fetch" in str(job["detail"])
    finally:
        stack.stop()
    # Work trees of passed runs are removed: only the failed ones are kept to look into.
    left = {p.parent.parent.name for p in (tmp_path / "data").rglob("attempt-*/.git")}
    assert left.isdisjoint(pushes), left


def test_a_payloads_clone_url_on_another_host_is_never_fetched(tmp_path: Path) -> None:
    """A signed push naming ``https://<another host>/x.git`` as its clone URL: the stack holds
    a git token and the host asks for credentials (401), yet it is never even asked; the job
    fails as ``error`` saying to configure ``clone_url``. Its sibling with one configured runs."""
    origin = make_origin(tmp_path / "origin")
    with credential_trap(tmp_path / "trap") as trap:
        stack = LocalStackProcess(
            tmp_path,
            config=(
                '[defaults]\ncommand = ["true"]\ntimeout_seconds = 60\n'
                f'[repos."octo/configured"]\nclone_url = "{origin.path}"\n'
            ),
            env={"SCHEDULER_GIT_TOKEN": "tok-trap-123", "HOME": str(trap.home)},
        )
        stack.start()
        try:
            with httpx.Client(timeout=30) as client:
                jobs = {}
                for repo in ("octo/app", "octo/configured"):
                    push = {
                        "ref": "refs/heads/main",
                        "after": origin.first,
                        "repository": {"full_name": repo, "clone_url": trap.url("x.git")},
                    }
                    answer = stack.post_delivery(client, "push", f"evil-{repo[5:]}", push)
                    assert answer.status_code == 202, answer.text
                    jobs[repo] = str(answer.json()["job_id"])
                job = ended(stack, client, jobs["octo/app"])
                assert (job["status"], job["reason"]) == ("failed", "error"), job
                assert "clone URL not allowed" in str(job["detail"]), job
                assert "configure clone_url" in str(job["detail"]), job
                assert ended(stack, client, jobs["octo/configured"])["status"] == "passed"
        finally:
            stack.stop()
        assert trap.tokens() == []
        assert trap.seen == []  # not even asked: the payload's URL never reached git
