"""Defect 1: a cancel stops the run (its whole process tree) before the slot is handed on."""

from __future__ import annotations

from pathlib import Path

import httpx
from harness import UNSANDBOXED, LocalStackProcess, run_command, wait_for
from processes import pid_alive


def test_cancelling_a_running_job_kills_its_tree_before_the_next_job_starts(
    tmp_path: Path,
) -> None:
    """Concurrency 1, a 60 s command under ``sh -c``, two pushes, cancel the first: the second
    starts only once the first run's processes are gone, and the limit is never exceeded."""
    stack = LocalStackProcess(tmp_path, config="")
    stack.config = (
        '[repos."chaos/cancel"]\ncheckout = false\n'
        f"command = {run_command(stack.effects, 60, via_shell=True)}\n"
        "concurrency = 1\ntimeout_seconds = 300\n" + UNSANDBOXED
    )
    stack.start()
    try:
        with httpx.Client(timeout=30) as client:
            first = stack.deliver(client, "chaos/cancel", "cancel-1", "a" * 40).json()["job_id"]
            second = stack.deliver(client, "chaos/cancel", "cancel-2", "b" * 40).json()["job_id"]
            running = wait_for("the first run to start", stack.starts, 30)[0]
            assert running.job_id == first
            assert stack.job(client, second)["status"] == "pending"  # queued behind the limit

            cancelled = stack.cli("cancel", first, "--json")
            assert cancelled.returncode == 0, cancelled.stderr

            nxt = wait_for(
                "the second run to start",
                lambda: [s for s in stack.starts() if s.job_id == second],
                30,
            )[0]
            # The second run saw no other run alive when it started: the limit held, and the
            # first run's tree (the shell and its child) was gone by then.
            assert nxt.alive == ()
            assert not pid_alive(running.pid)
            stats = stack.stats(client, "chaos/cancel")
            assert stats["running"] == 1, stats
            assert stack.job(client, first)["status"] == "cancelled"

            assert stack.cli("cancel", second).returncode == 0
            wait_for(
                "the second slot to be freed",
                lambda: stack.stats(client, "chaos/cancel")["running"] == 0,
                30,
            )
            assert not pid_alive(nxt.pid)
    finally:
        stack.stop()
