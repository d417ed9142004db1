"""The process's disk condition: full, over its quota or read-only, and when space is back.

A full disk is an expected bad day, not a bug: every writer that meets ENOSPC (EDQUOT, EROFS)
tells :data:`DISK` through :meth:`DiskSpace.failed` and logs nothing of its own beyond what it
holds back (one line per run, with its job and attempt). The condition logs one line when it
begins and one when space is back, whichever writer met it and however often, and ``GET
/healthz`` names it. While it lasts a probe writes a small file in the folders watched every
second; once that succeeds the condition ends and what was held in memory is written
(:meth:`DiskSpace.on_space_back`).

Core code (the health route) reads it; the local runtime feeds it. On AWS it stays ``ok``.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["CONDITIONS", "DISK", "OK", "DiskSpace", "disk_condition"]

log = logging.getLogger(__name__)

OK = "ok"
CONDITIONS = {errno.ENOSPC: "full", errno.EDQUOT: "over_quota", errno.EROFS: "read_only"}
# The same conditions in words, for errors that carry no errno (DynamoDB Local's SQLite
# answers "database or disk is full" through an HTTP error).
_PHRASES = (
    ("no space left on device", "full"),
    ("database or disk is full", "full"),
    ("sqlite_full", "full"),
    ("disk quota exceeded", "over_quota"),
    ("read-only file system", "read_only"),
)
PROBE_SECONDS = 1.0
PROBE_BYTES = 4096
PROBE_NAME = ".disk-probe"


def disk_condition(exc: BaseException | None) -> str | None:
    """The disk condition ``exc`` (or an exception it was raised from) reports; None if it is
    not one (pure)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in CONDITIONS:
            return CONDITIONS[exc.errno]
        try:
            text = str(exc).lower()
        except Exception:  # a foreign __str__ must not hide the condition's other causes
            text = ""
        for phrase, condition in _PHRASES:
            if phrase in text:
                return condition
        exc = exc.__cause__ or exc.__context__
    return None


class DiskSpace:
    """The disk condition of this process, with one log line per transition."""

    def __init__(
        self,
        *,
        probe_seconds: float = PROBE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._lock = threading.Lock()
        self._condition = OK
        self._since: float | None = None
        self._folders: list[Path] = []
        self._callbacks: list[Callable[[], object]] = []
        self._probe_seconds = probe_seconds
        self._clock = clock
        self._probing: threading.Thread | None = None
        self._closing = threading.Event()

    @property
    def condition(self) -> str:
        """``ok``, or the condition writes last met (``full``, ``over_quota``, ``read_only``)."""
        return self._condition

    @property
    def since(self) -> float | None:
        """When the current condition began (epoch seconds); None while ``ok``."""
        return self._since

    def watch(self, folder: Path) -> None:
        """Probe ``folder`` (a folder this process writes to) while a condition lasts."""
        with self._lock:
            if folder not in self._folders:
                self._folders.append(folder)

    def on_space_back(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` each time space is back (on the probe's thread)."""
        with self._lock:
            self._callbacks.append(callback)

    def unwatch(self, folder: Path) -> None:
        with self._lock:
            if folder in self._folders:
                self._folders.remove(folder)

    def forget(self, callback: Callable[[], object]) -> None:
        """No longer call ``callback`` (its owner closed)."""
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

    def failed(self, exc: BaseException, where: str) -> bool:
        """Note a failed write; True if it was a disk condition (then it is taken care of)."""
        condition = disk_condition(exc)
        if condition is None:
            return False
        with self._lock:
            began = condition != self._condition
            if began:
                self._condition, self._since = condition, self._clock()
            if self._folders and self._probing is None:
                self._probing = threading.Thread(target=self._probe, name="disk-probe", daemon=True)
                self._probing.start()
        if began:
            log.warning(
                "disk %s: writes fail, what cannot be written is held until space is back",
                condition,
                extra={"disk": condition, "error": _errno_name(exc), "where": where},
            )
        return True

    def space_back(self) -> bool:
        """Probe once: True (and the condition over, callbacks run) if every watched folder
        takes a write again."""
        with self._lock:
            folders = list(self._folders)
            if self._condition == OK:
                return True
        for folder in folders:
            try:
                _probe_write(folder)
            except OSError:
                return False
        with self._lock:
            condition, since = self._condition, self._since
            self._condition, self._since = OK, None
            callbacks = list(self._callbacks)
        lasted = 0.0 if since is None else self._clock() - since
        log.warning(
            "disk space back: writes succeed again",
            extra={"disk": OK, "was": condition, "seconds": round(lasted, 1)},
        )
        for callback in callbacks:
            try:
                callback()
            except Exception as exc:
                if not self.failed(exc, "writing what was held"):
                    log.exception("writing what was held failed")
        return True

    def close(self) -> None:
        """Stop probing (tests; the process's own tracker lives as long as the process)."""
        self._closing.set()

    def _probe(self) -> None:
        while not self._closing.wait(self._probe_seconds):
            self.space_back()
            with self._lock:
                if self._condition == OK:  # a failure after this starts a new probe
                    self._probing = None
                    return


def _probe_write(folder: Path) -> None:
    path = folder / PROBE_NAME
    try:
        with open(path, "wb") as handle:
            handle.write(b"\0" * PROBE_BYTES)
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        path.unlink(missing_ok=True)


def _errno_name(exc: BaseException) -> str:
    found: BaseException | None = exc
    while found is not None:
        if isinstance(found, OSError) and found.errno is not None:
            return errno.errorcode.get(found.errno, str(found.errno))
        found = found.__cause__ or found.__context__
    return type(exc).__name__


DISK = DiskSpace()
"""This process's disk condition (one per process: the disk is the process's)."""
