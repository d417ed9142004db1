"""A run's process dies with the thread that started it, without a ``preexec_fn``."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from scheduler.local import procutil
from scheduler.local.procutil import orphan_proof


def test_a_child_dies_when_the_thread_that_started_it_ends() -> None:
    started: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        argv, preexec = orphan_proof(["sleep", "30"], os.environ)
        assert preexec is None and argv[:3] == [procutil._SETPRIV, "--pdeathsig", "TERM"]
        child = subprocess.Popen(argv, preexec_fn=preexec)  # noqa: PLW1509
        started.append(child)
        # A pool thread outlives its spawn (it waits for the process): setpriv has set the
        # signal by then. (Within the first millisecond it may not have: the run records'
        # token finds such a process at the next start, see test_run_records.) Here the thread
        # ends once setpriv has set it and become `sleep`, however long a busy machine takes.
        deadline = time.monotonic() + 60
        command = "\0".join(argv[-2:]).encode() + b"\0"  # /usr/bin/sleep 30
        while Path(f"/proc/{child.pid}/cmdline").read_bytes() != command:
            assert time.monotonic() < deadline, "setpriv never ran the command"
            time.sleep(0.02)

    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    (child,) = started
    # The kernel sends SIGTERM as the starting thread exits: no `sleep 30` survives it.
    assert child.wait(timeout=60) == -15


def test_a_missing_command_fails_at_the_start_as_before() -> None:
    with pytest.raises(FileNotFoundError):
        orphan_proof(["no-such-command-here"], {"PATH": "/usr/bin:/bin"})


def test_a_relative_path_is_left_to_the_child_which_runs_in_its_work_tree() -> None:
    argv, _ = orphan_proof(["./ci.sh", "--fast"], os.environ)
    assert argv[-2:] == ["./ci.sh", "--fast"]


def test_without_setpriv_the_preexec_hook_does_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(procutil, "_SETPRIV", None)
    assert orphan_proof(["true"], os.environ) == (["true"], procutil.die_with_parent)
