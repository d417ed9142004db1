"""This repository's own CI (``.scheduler/pipeline.yml``) run by ``scheduler up`` against a clone
of this repository, at its current commit.

Everything is real but the build tool: each step checks out the commit into a fresh work tree and
runs the file's own command, with a stand-in ``make`` first on ``PATH`` that records its targets
and, for ``setup``, leaves a recording ``.venv/bin/python`` in the work tree (running the real
suites inside a test would take the better part of an hour). So the file's steps, needs, commands
and the checkout they run in are this repository's, and the order the stack runs them in is what
the test checks.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
from harness import UNSANDBOXED, LocalStackProcess, wait_for

ROOT = Path(__file__).resolve().parents[2]

# The stand-in `make`: one line per call, and a recording python for the steps that set up.
FAKE_MAKE = """#!/bin/sh
echo "$SCHEDULER_JOB_ID make $*" >> {record}
for target in "$@"; do
  if [ "$target" = setup ]; then
    mkdir -p .venv/bin
    printf '%s\\n' '#!/bin/sh' \\
      'echo "$SCHEDULER_JOB_ID python $*" >> {record}' \\
      'for a in "$@"; do case "$a" in tests/*) test -d "$a" || exit 4;; esac; done' \\
      > .venv/bin/python
    chmod +x .venv/bin/python
  fi
done
test -f Makefile  # the work tree is this repository's checkout
"""


def test_this_repositorys_pipeline_runs_its_checks_in_order(tmp_path: Path) -> None:
    sha = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    origin = tmp_path / "origin.git"
    subprocess.run(
        ["git", "clone", "--quiet", "--bare", "--no-local", str(ROOT), str(origin)], check=True
    )
    tools = tmp_path / "tools"
    tools.mkdir()
    record = tmp_path / "calls.txt"
    make = tools / "make"
    make.write_text(FAKE_MAKE.format(record=record))
    make.chmod(0o755)
    stack = LocalStackProcess(
        tmp_path,
        config=(
            f'[defaults]\ncommand = ["false"]\ntimeout_seconds = 300\nconcurrency = 4\n'
            f'{UNSANDBOXED}[repos."octo/scheduler"]\nclone_url = "{origin}"\n'
        ),
        env={"PATH": f"{tools}:/usr/bin:/bin:/usr/local/bin"},
    )
    stack.start()
    try:
        with httpx.Client(timeout=30) as client:
            started = time.monotonic()
            run = stack.deliver(client, "octo/scheduler", "own-1", sha).json()["job_id"]

            def ended() -> dict[str, object] | None:
                job = stack.job(client, run)
                return job if job["status"] in ("passed", "failed", "cancelled") else None

            job = wait_for(f"run {run} to end", ended, 240, 0.5)
            took = time.monotonic() - started
            assert job["status"] == "passed", (job["reason"], job["detail"])
            steps = {}
            for n in range(1, int(job["step_count"]) + 1):
                step = stack.job(client, f"{run}.s{n}")
                steps[step["step_key"]] = step
    finally:
        stack.stop()
    assert sorted(steps) == ["e2e", "integration", "lint", "reliability", "unit"]
    assert {key: step["status"] for key, step in steps.items()} == dict.fromkeys(steps, "passed")
    calls: dict[str, list[str]] = {}
    for line in record.read_text().splitlines():
        job_id, call = line.split(" ", 1)
        calls.setdefault(job_id, []).append(call)
    by_key = {key: calls.get(step["job_id"], []) for key, step in steps.items()}
    pytest_of = "python -m pytest -q -p no:cacheprovider tests/"
    assert by_key == {
        "lint": ["make lint"],
        "unit": ["make setup", pytest_of + "unit"],
        "integration": ["make setup", pytest_of + "integration"],
        "e2e": ["make setup chromium", pytest_of + "e2e"],
        "reliability": ["make setup", pytest_of + "reliability"],
    }, json.dumps(by_key)
    # The needs: integration only after lint and unit passed; e2e and reliability after it.
    begun = {key: int(step["started_at"]) for key, step in steps.items()}
    done = {key: int(step["finished_at"]) for key, step in steps.items()}
    assert begun["integration"] >= max(done["lint"], done["unit"])
    assert min(begun["e2e"], begun["reliability"]) >= done["integration"]
    print(f"\nown pipeline: 5 steps of this repository at {sha[:12]} ended in {took:.1f}s")
