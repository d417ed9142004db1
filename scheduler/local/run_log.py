"""A local run's output: where it lives, and writing it capped.

:func:`log_file` is the one naming rule of a run's log (``<logs>/<job id>/attempt-<n>.log``),
used by the executor that writes it and by the readers (the HTTP route, ``scheduler logs``).

:class:`CappedLog` keeps at most ``max_bytes`` per attempt: the first half is written through
as it comes (``--follow`` and the route see it live), the last half is kept in memory and
written when the run ends, after a marker saying how many bytes were cut between them.
Output that cannot be written (a full disk) is counted, not kept: once a write succeeds again
(tried at most every :data:`RETRY_SECONDS`) a marker says how many bytes were lost there and
when. What the end of the run could not write (the kept tail, that marker) waits in
:attr:`CappedLog.pending` for :meth:`CappedLog.finish_pending` (when space is back).
:class:`OutputPump` drains the child's pipe into it on a thread of its own, so a chatty child
never blocks on a full pipe, and it stops when told even if a grandchild that escaped the
process group still holds the pipe open.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO

from scheduler.disk_space import DISK, DiskSpace, disk_condition
from scheduler.errors import InvalidArgument
from scheduler.runs.logs import LOST_OUTPUT_NOTE

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
RETRY_SECONDS = 0.5  # while writes fail, output is dropped without trying for this long
PENDING_MAX_BYTES = 256 * 1024  # the most of a run's end held in memory for a full disk
LOST_NOTE = LOST_OUTPUT_NOTE  # the words readers look for (the dashboard says so above the log)


def loss_marker(lost: int, condition: str, began: float, ended: float) -> str:
    """The text of the marker of output lost to a full disk (pure)."""
    return (
        f"{lost} {LOST_NOTE}: the disk was {condition.replace('_', ' ')}"
        f" from {_utc(began)} to {_utc(ended)}"
    )


def _open_log(path: Path, mode: str) -> IO[bytes]:
    """The log file, unbuffered (a follower sees every write at once); the tests' write seam."""
    return open(path, mode, buffering=0)


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


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

    def __init__(
        self,
        path: Path,
        max_bytes: int,
        *,
        disk: DiskSpace = DISK,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self._disk = disk
        self._clock = clock
        self.lost_bytes = 0  # all output lost to write failures, for the run's log line
        self._losing = 0  # bytes lost since the last marker
        self._lost_since = 0.0
        self._lost_condition = ""
        self._retry_at = 0.0
        self.pending = b""  # what close() could not write
        self._keeping = False  # closing: what is not written now waits in pending
        self._head_left = max_bytes - max_bytes // 2
        self._tail_max = max_bytes // 2
        self._tail: deque[bytes] = deque()
        self._tail_size = 0
        self._held = 0  # bytes past the head, kept or dropped
        self._ends_with_newline = True
        self._file = _open_log(path, "wb")
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
        """Write the kept tail (after a marker of the bytes cut) and close the file; what a
        full disk refuses now is kept in :attr:`pending`."""
        if self._file.closed:
            return
        try:
            self._retry_at = 0.0  # the end is tried whatever failed just before
            self._keeping = True
            if self._held:
                tail = b"".join(self._tail)[-self._tail_max :] if self._tail_max else b""
                dropped = self._held - len(tail)
                newline = tail.find(b"\n", 0, ALIGN_BYTES)
                if dropped and newline >= 0:
                    tail, dropped = tail[newline + 1 :], dropped + newline + 1
                self._marker(f"{dropped} bytes cut here" if dropped else "nothing was cut")
                self._out(tail)
            if self._losing and not self.pending:
                self._lost_note(self._clock())
        finally:
            self._file.close()

    @property
    def complete(self) -> bool:
        """Everything is on disk, or said lost in a marker there."""
        return not self._losing and not self.pending

    def finish_pending(self) -> bool:
        """Append what :meth:`close` could not write; True once the log is complete."""
        if self.complete:
            return True
        note = b""
        if self._losing:
            text = loss_marker(self._losing, self._lost_condition, self._lost_since, self._clock())
            note = f"\n[scheduler: {text}]\n".encode()
        try:
            with _open_log(self.path, "ab") as handle:
                handle.write(note + self.pending)
        except OSError as exc:
            self._disk.failed(exc, "run log")
            return False
        self._losing, self.pending = 0, b""
        return True

    def _marker(self, text: str) -> None:
        lead = b"" if self._ends_with_newline else b"\n"
        self._out(lead + f"[scheduler: {text}]\n".encode())

    def _out(self, data: bytes) -> None:
        if not data:
            return
        if self.pending or (self._losing and self._clock() < self._retry_at):
            self._lose(data)  # behind what waits already, or too soon to try again
            return
        if self._losing and not self._lost_note(self._clock()):
            self._lose(data)
            return
        self._write(data)

    def _lost_note(self, now: float) -> bool:
        """Write the marker of the output lost so far; False if the disk still refuses."""
        lead = b"" if self._ends_with_newline else b"\n"
        note = loss_marker(self._losing, self._lost_condition, self._lost_since, now)
        if self._write(lead + f"[scheduler: {note}]\n".encode(), counted=False):
            self._losing = 0
            return True
        return False

    def _write(self, data: bytes, *, counted: bool = True) -> bool:
        """Write all of ``data``; on a failure count (or keep) what was not written."""
        view = memoryview(data)
        try:
            while view:
                written = self._file.write(view)
                if not written:
                    raise OSError("the log file took nothing")
                self._ends_with_newline = view[written - 1] == ord("\n")
                view = view[written:]
        except OSError as exc:
            if not self._losing and not self.pending:
                self._lost_since = self._clock()
                self._lost_condition = disk_condition(exc) or "unwritable"
            self._disk.failed(exc, "run log")
            self._retry_at = self._clock() + RETRY_SECONDS
            if counted:
                self._lose(bytes(view))
            return False
        return True

    def _lose(self, data: bytes) -> None:
        """Output not written: counted as lost while the run goes; kept (bounded) at its end."""
        if self._keeping:
            self.pending += data
            data = self.pending[: max(0, len(self.pending) - PENDING_MAX_BYTES)]
            self.pending = self.pending[len(data) :]
        self._losing += len(data)
        self.lost_bytes += len(data)


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
