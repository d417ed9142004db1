"""``scheduler logs -f --json``: one JSON object per output line, written while the run goes
(not gathered to the end), masked, and an ``end`` object with the job's status last."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from scheduler.cli.logs import JsonLines
from scheduler.db.store import JobState, JobStore, NewJob, Outcome
from scheduler.local.run_log import log_file, logs_dir_in
from state_machines import Trigger

SCRIPT = Path(sys.executable).with_name("scheduler")
NPM_TOKEN = "npm_fedcba9876543210"
REPO = "octo-org/api"


def _env(data_dir: Path) -> dict[str, str]:
    config = data_dir / "scheduler.toml"
    config.write_text('[defaults]\nmask_env = ["NPM_TOKEN"]\n')
    return {
        **os.environ,
        "SCHEDULER_DATA_DIR": str(data_dir),
        "SCHEDULER_CONFIG": str(config),
        "NPM_TOKEN": NPM_TOKEN,
    }


def _read(stream: Any, into: queue.Queue[str]) -> None:
    for line in iter(stream.readline, ""):
        into.put(line)


def _next_object(lines: queue.Queue[str], seconds: float = 60) -> dict[str, Any]:
    line = lines.get(timeout=seconds)
    assert line.endswith("\n"), line
    value: dict[str, Any] = json.loads(line)
    return value


@pytest.mark.parametrize(("trigger", "code"), [(Trigger.PASS, 0), (Trigger.FAIL, 1)])
def test_each_line_is_one_json_object_as_it_comes(
    store: JobStore, tmp_path: Path, trigger: Trigger, code: int
) -> None:
    job = store.create(NewJob("jl", REPO, "push", "e" * 40, 600, ref="refs/heads/main"))
    active = store.activate(job, slot_limit=10)
    assert isinstance(active, JobState)
    path = log_file(logs_dir_in(tmp_path), "jl", 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    store.claim_run(active, "jl#1", str(path))
    follower = subprocess.Popen(
        [str(SCRIPT), "logs", "jl", "-f", "--json"],
        stdout=subprocess.PIPE,  # a pipe: no terminal to flush lines for us
        stderr=subprocess.PIPE,
        text=True,
        env=_env(tmp_path),
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_read, args=(follower.stdout, lines), daemon=True).start()
    try:
        with path.open("a") as log:
            log.write("step one\n")
            log.flush()
            started = time.monotonic()
            first = _next_object(lines)
            # Seen while the job is still active and the follower runs: not held to the end.
            assert follower.poll() is None
            assert first == {"event": "line", "job_id": "jl", "attempt": 1, "line": "step one"}
            log.write(f"token {NPM_TOKEN} used\n\x1b[31mred\x1b[0m\nno newline at the end")
        assert _next_object(lines) == {
            "event": "line",
            "job_id": "jl",
            "attempt": 1,
            "line": "token *** used",
        }
        assert _next_object(lines)["line"] == "\x1b[31mred\x1b[0m"  # JSON escapes it
        assert follower.poll() is None, "the job is not over yet"
        outcome = Outcome(None if trigger is Trigger.PASS else "exit_code", None, code)
        store.report("jl", 1, trigger, actor="test", outcome=outcome)
        assert _next_object(lines)["line"] == "no newline at the end"
        assert _next_object(lines) == {
            "event": "end",
            "job_id": "jl",
            "attempt": 1,
            "status": "passed" if trigger is Trigger.PASS else "failed",
            "exit_code": code,
        }
        assert follower.wait(60) == code
        assert time.monotonic() - started < 60
        with contextlib.suppress(queue.Empty):
            extra = lines.get(timeout=0.5)
            raise AssertionError(f"printed after the end: {extra!r}")
        assert follower.stderr is not None and "Traceback" not in follower.stderr.read()
    finally:
        follower.kill()
        follower.wait()


def test_json_lines_follow_the_next_attempt_and_cut_an_endless_line() -> None:
    written: list[dict[str, Any]] = []
    lines = JsonLines("j", 1, lambda text: written.append(json.loads(text)))
    lines.write("a\nb")
    assert [w["line"] for w in written] == ["a"]
    lines.write("c\n[scheduler: attempt 2]\nretried\n")
    lines.write("x" * 70_000)
    lines.end("passed", 0)
    assert [(w["event"], w["attempt"], w.get("line")) for w in written] == [
        ("line", 1, "a"),
        ("line", 1, "bc"),
        ("attempt", 2, None),
        ("line", 2, "retried"),
        ("line", 2, "x" * 70_000),
        ("end", 2, None),
    ]
    assert written[-1]["exit_code"] == 0
