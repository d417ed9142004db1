"""A local run's output: where it lives, and writing it capped.

:func:`log_file` is the one naming rule of a run's log (``<logs>/<job id>/attempt-<n>.log``),
used by the executor that writes it and by the readers (the HTTP route, ``scheduler logs``).

:class:`CappedLog` keeps at most ``max_bytes`` per attempt: the first half is written through
as it comes (``--follow`` and the route see it live), the last half is kept in memory and
written when the run ends, after a marker saying how many bytes were cut between them.
:class:`OutputPump` drains the child's pipe into it on a thread of its own, so a chatty child
never blocks on a full pipe, and it stops when told even if a grandchild that escaped the
process group still holds the pipe open.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections import deque
from pathlib import Path
from typing import IO

from scheduler.errors import InvalidArgument

__all__ = [
    "LOGS_FOLDER",
    "RUNS_FOLDER",
    "CappedLog",
    "OutputPump",
    "log_file",
    "logs_dir_in",
    "logs_dir_of",
]

RUNS_FOLDER = "runs"  # the local executor's folder in the stack's data directory
LOGS_FOLDER = "logs"  # its run logs, below it

READ_BYTES = 64 * 1024
POLL_SECONDS = 0.1
ALIGN_BYTES = 4096  # the kept tail starts at a line when one starts this close to its cut


def log_file(logs_dir: Path, job_id: str, attempt: int) -> Path:
    """The log of ``job_id``'s ``attempt`` under ``logs_dir``; never a path outside it."""
    safe_id = job_id.replace("/", "_")
    if safe_id in ("", ".", "..") or "\x00" in safe_id or "\\" in safe_id:
        raise InvalidArgument(f"job id {job_id[:80]!r} cannot name a log file")
    if not isinstance(attempt, int) or attempt < 1:
        raise InvalidArgument(f"attempt must be a whole number from 1, got {attempt!r}")
    path = logs_dir / safe_id / f"attempt-{attempt}.log"
    if path.parent.parent != logs_dir:  # belt and braces: one folder per job, directly below
        raise InvalidArgument(f"job id {job_id[:80]!r} cannot name a log file")
    return path


def logs_dir_in(data_dir: Path) -> Path:
    """The run logs' folder of a local stack with data directory ``data_dir``."""
    return data_dir / RUNS_FOLDER / LOGS_FOLDER


def logs_dir_of(log_location: str) -> Path:
    """The logs folder a log path written by :func:`log_file` lies in."""
    return Path(log_location).parent.parent


class CappedLog:
    """Writes output to ``path``, at most ``max_bytes`` of it (plus markers): head and tail."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self._head_left = max_bytes - max_bytes // 2
        self._tail_max = max_bytes // 2
        self._tail: deque[bytes] = deque()
        self._tail_size = 0
        self._held = 0  # bytes past the head, kept or dropped
        self._ends_with_newline = True
        self._file = open(path, "wb", buffering=0)  # noqa: SIM115 - closed by close()
        self.max_bytes = max_bytes

    @property
    def cut_bytes(self) -> int:
        return self._held - self._tail_size

    def write(self, data: bytes) -> None:
        if self._head_left > 0:
            head = data[: self._head_left]
            self._out(head)
            self._head_left -= len(head)
            data = data[len(head) :]
        if not data:
            return
        if self._held == 0:
            self._marker(
                f"log cap of {self.max_bytes} bytes reached: the output after this point is"
                f" held back until the run ends, then its last {self._tail_max} bytes follow"
            )
        self._held += len(data)
        self._tail.append(data)
        self._tail_size += len(data)
        while self._tail and self._tail_size - len(self._tail[0]) >= self._tail_max:
            self._tail_size -= len(self._tail.popleft())

    def close(self) -> None:
        """Write the kept tail (after a marker of the bytes cut) and close the file."""
        if self._file.closed:
            return
        try:
            if self._held:
                tail = b"".join(self._tail)[-self._tail_max :] if self._tail_max else b""
                dropped = self._held - len(tail)
                newline = tail.find(b"\n", 0, ALIGN_BYTES)
                if dropped and newline >= 0:
                    tail, dropped = tail[newline + 1 :], dropped + newline + 1
                self._marker(f"{dropped} bytes cut here" if dropped else "nothing was cut")
                self._out(tail)
        finally:
            self._file.close()

    def _marker(self, text: str) -> None:
        lead = b"" if self._ends_with_newline else b"\n"
        self._out(lead + f"[scheduler: {text}]\n".encode())

    def _out(self, data: bytes) -> None:
        if data:
            self._file.write(data)
            self._ends_with_newline = data.endswith(b"\n")


class OutputPump:
    """Copies a pipe into a :class:`CappedLog` on its own thread until EOF or :meth:`finish`."""

    def __init__(self, pipe: IO[bytes], log: CappedLog, name: str = "run-output") -> None:
        self._pipe = pipe
        self._log = log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name=name, daemon=True)
        self._thread.start()

    def finish(self, grace_seconds: float) -> None:
        """Wait up to ``grace_seconds`` for the end of the output, then stop reading (what
        still holds the pipe is ignored) and return once the log is complete on disk."""
        self._thread.join(grace_seconds)
        self._stop.set()
        self._thread.join()

    def _pump(self) -> None:
        fd = self._pipe.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        writable = True
        try:
            while not self._stop.is_set():
                if not poller.poll(POLL_SECONDS * 1000):
                    continue
                data = os.read(fd, READ_BYTES)
                if not data:
                    break
                if writable:
                    try:
                        self._log.write(data)
                    except OSError:
                        writable = False  # a full disk: drain on, so the run never blocks
        except OSError:
            pass  # the pipe failed: the run goes on, its log ends here
        finally:
            with contextlib.suppress(OSError):
                self._pipe.close()
            with contextlib.suppress(OSError):
                self._log.close()
