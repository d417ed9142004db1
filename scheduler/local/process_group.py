"""A run's process group, signalled only while its leader is unreaped.

Linux frees a process's number once it is reaped and no process is left in its group; the next
process to start may get it, and a run's command, started in a session of its own, gets it as
its group id too. A signal sent to the old group by number then stops someone else's run.

So the leader is waited for without being reaped (through a pidfd, which polls readable once the
process has exited, else by polling ``waitid`` with ``WNOWAIT``), the group is signalled only
before the reap (under a lock), and the reap itself starts with a SIGKILL to whatever the leader
left behind in its group: a run's background processes never outlive it.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import threading
import time
import weakref

_POLL_SECONDS = 0.05  # without a pidfd: how often an exit is looked for
_HAS_WAITID = hasattr(os, "waitid") and hasattr(os, "WNOWAIT")


class ProcessGroup:
    """The group a process started with ``start_new_session=True`` leads.

    Make it straight after the spawn: nothing else may wait for or poll the process.
    """

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self._process = process
        self._lock = threading.Lock()
        self._exit_code: int | None = None  # set once the leader is reaped
        self._pidfd = _open_pidfd(process.pid)
        if self._pidfd is not None:
            # Closed with the object, never under a thread still polling it.
            weakref.finalize(self, os.close, self._pidfd)

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def _reaped(self) -> bool:
        return self._exit_code is not None

    def wait(self, timeout: float | None) -> bool:
        """Whether the leader has exited, waiting up to ``timeout`` seconds; it stays unreaped."""
        if self._reaped:
            return True
        if self._pidfd is not None:
            poller = select.poll()
            poller.register(self._pidfd, select.POLLIN)
            return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000))))
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._exited():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_SECONDS)
        return True

    def _exited(self) -> bool:
        with self._lock:
            if self._reaped:
                return True
            if _HAS_WAITID:
                found = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                return found is not None
            # No way to look without reaping (macOS before Python 3.13): reaped here, so the
            # group is never signalled after, and what the leader left behind is not killed.
            self._exit_code = self._process.poll()
            return self._reaped

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the group, unless the leader was reaped (then it is gone)."""
        with self._lock:
            if not self._reaped:
                _signal_group(self.pid, signum)

    def stop(self, grace_seconds: float) -> None:
        """SIGTERM to the group, SIGKILL if its leader is still there after ``grace_seconds``;
        returns once the leader has exited (it is left for :meth:`reap`)."""
        self.signal(signal.SIGTERM)
        if not self.wait(grace_seconds):
            self.signal(signal.SIGKILL)
            self.wait(None)

    def reap(self) -> int:
        """Wait for the leader, kill what it left in its group, reap it; its exit code."""
        self.wait(None)
        with self._lock:
            if not self._reaped:
                _signal_group(self.pid, signal.SIGKILL)
                self._exit_code = self._process.wait()
            assert self._exit_code is not None
            return self._exit_code


def _open_pidfd(pid: int) -> int | None:
    """A pidfd of ``pid`` (Linux 5.3 and later), or None: then the exit is polled for."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux, an old kernel, a seccomp filter, no fds
        return None


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)
