"""A run's process group is signalled only while its leader is unreaped.

Once a process is reaped, and nothing is left in its group, Linux gives its number to the next
process that asks; a run's shell started after that gets it as its group id too. A signal sent
to the old group by number then stops someone else's run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from scheduler.local import process_group
from scheduler.local.process_group import ProcessGroup


def spawn(*argv: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdout=subprocess.PIPE, start_new_session=True)


@pytest.fixture
def signals(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    sent: list[tuple[int, int]] = []
    real = os.killpg

    def killpg(pgid: int, signum: int) -> None:
        sent.append((pgid, signum))
        real(pgid, signum)

    monkeypatch.setattr(os, "killpg", killpg)
    return sent


def gone(pid: int, within: float = 0.0) -> bool:
    deadline = time.monotonic() + within
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def test_the_group_is_never_signalled_once_its_leader_is_reaped(
    signals: list[tuple[int, int]],
) -> None:
    group = ProcessGroup(spawn("true"))
    assert group.reap() == 0
    signals.clear()  # the reap's own sweep of the group came before it
    group.signal(signal.SIGTERM)
    group.stop(grace_seconds=0.1)
    assert signals == []
    assert group.wait(0) and group.reap() == 0  # asked again: the same answer, nothing sent


def test_waiting_does_not_reap_the_leader(signals: list[tuple[int, int]]) -> None:
    process = spawn("sh", "-c", "exit 4")
    group = ProcessGroup(process)
    assert group.wait(60)
    # Exited but unreaped: its number cannot be anyone else's, so the group may be signalled.
    assert psutil.Process(process.pid).status() == psutil.STATUS_ZOMBIE
    group.signal(signal.SIGTERM)
    assert signals == [(process.pid, signal.SIGTERM)]
    assert group.reap() == 4


def test_a_running_leader_is_waited_for_up_to_the_timeout() -> None:
    group = ProcessGroup(spawn("sleep", "30"))
    assert not group.wait(0.2)
    group.stop(grace_seconds=60)  # ends as soon as the leader does
    assert group.reap() == -signal.SIGTERM


def test_what_an_exited_leader_leaves_in_its_group_is_killed_at_the_reap() -> None:
    process = spawn("sh", "-c", "sleep 60 & echo $!")
    assert process.stdout is not None
    straggler = int(process.stdout.readline())
    group = ProcessGroup(process)
    assert group.wait(60)
    assert not gone(straggler)
    assert group.reap() == 0
    assert gone(straggler, within=60)


def test_stop_kills_a_leader_that_ignores_sigterm() -> None:
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)"
    )
    process = spawn(sys.executable, "-c", stubborn)
    assert process.stdout is not None and process.stdout.readline() == b"ready\n"
    group = ProcessGroup(process)
    group.stop(grace_seconds=0.3)
    assert group.reap() == -signal.SIGKILL


def test_without_a_pidfd_the_exit_is_still_awaited_unreaped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A kernel or a seccomp filter that refuses pidfds: ``waitid`` is polled instead."""

    def refused(pid: int) -> int:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "pidfd_open", refused)
    process = spawn("sh", "-c", "sleep 60 & echo $!")
    assert process.stdout is not None
    straggler = int(process.stdout.readline())
    group = ProcessGroup(process)
    assert group.wait(60)
    assert psutil.Process(process.pid).status() == psutil.STATUS_ZOMBIE  # not reaped
    assert group.reap() == 0
    assert gone(straggler, within=60)


def test_where_nothing_can_look_without_reaping_no_signal_follows_the_reap(
    monkeypatch: pytest.MonkeyPatch, signals: list[tuple[int, int]]
) -> None:
    monkeypatch.setattr(os, "pidfd_open", lambda pid: (_ for _ in ()).throw(OSError(38, "no")))
    monkeypatch.setattr(process_group, "_HAS_WAITID", False)
    group = ProcessGroup(spawn("sh", "-c", "exit 5"))
    assert group.wait(60)  # reaped by the look itself
    group.signal(signal.SIGTERM)
    assert signals == [] and group.reap() == 5
