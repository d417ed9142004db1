"""What the local executor keeps on disk so that a run survives its runner's death.

Two small records per run, under the executor's folder:

- ``procs/<key>.json`` — a running command's token, written *before* it is spawned (its pid
  is not needed). ``PR_SET_PDEATHSIG`` reaches only the direct child, so after a SIGKILL of
  ``scheduler up`` a command's grandchildren live on; on restart, every process carrying a
  recorded run's token in its environment is killed: wherever it went (a new session, another
  group), and whenever the stack died (even right after the spawn). A recycled pid of somebody
  else's process never carries the token. Records of an older version (a process group, no
  token) are still honoured.
- ``results/<key>.json`` — a run's outcome, written before it is reported and moved to
  ``reported/`` once the store has it: an outcome that could not be recorded (the database was
  down, the stack was stopped) is reported after the restart instead of being lost or replaced
  by a timeout. A reported outcome is kept for the job's retention, as its log is: DynamoDB
  Local can lose a write it acknowledged just before it was killed, and a finish it lost is
  then reported again as the run ended (:meth:`RunRecords.outcome`), not guessed.

An outcome that cannot be written (a full disk) is never dropped: it is held in memory, answered
by :meth:`RunRecords.outcome` and reported as usual, and written (to ``results/`` or, once
reported, ``reported/``) when space is back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path

from scheduler.disk_space import DISK, DiskSpace, disk_condition
from scheduler.runs.executor import RunResult

__all__ = ["MARKER", "RunRecords"]

log = logging.getLogger(__name__)

MARKER = "SCHEDULER_RUN_KEY"
"""The environment variable that names a run's key in every process of its tree."""

TOKEN = "SCHEDULER_RUN_TOKEN"
"""The environment variable holding a run's unique token (random, one per spawn)."""


def _file_name(key: str) -> str:
    return key.replace("/", "_").replace("#", "@") + ".json"


class RunRecords:
    def __init__(self, folder: Path, disk: DiskSpace = DISK) -> None:
        self._procs = folder / "procs"
        self._results = folder / "results"
        self._reported = folder / "reported"
        for records in (self._procs, self._results, self._reported):
            records.mkdir(parents=True, exist_ok=True)
        self._folder = folder
        self._disk = disk
        self._lock = threading.Lock()
        # Outcomes not on disk yet: key -> (outcome, reported already).
        self._held: dict[str, tuple[RunResult, bool]] = {}
        disk.watch(folder)
        disk.on_space_back(self.flush)

    # -- process groups ----------------------------------------------------------------------

    def starting(self, key: str) -> str:
        """Record a run about to be spawned; returns the token its processes must carry."""
        token = secrets.token_hex(16)
        try:
            _write_atomically(self._procs / _file_name(key), {"key": key, "token": token})
        except OSError as exc:
            self._disk.failed(exc, "run records")
            raise
        return token

    def ended(self, key: str) -> None:
        try:
            (self._procs / _file_name(key)).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:  # a read-only disk: the record's token is carried by nobody now
            if not self._disk.failed(exc, "run records"):
                raise

    def kill_leftovers(self) -> list[str]:
        """Kill what is left of runs of a previous runner; return their keys."""
        killed = []
        for path in sorted(self._procs.glob("*.json")):
            record = _read(path)
            if record is not None:
                key = str(record["key"])
                if "token" in record:
                    victims = _carrying(f"{TOKEN}={record['token']}".encode())
                else:  # a record of an older version: its group, with the key as marker
                    victims = _carrying(f"{MARKER}={key}".encode(), int(str(record["pgid"])))
                for pid in victims:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                if victims:
                    log.warning(
                        "killed what was left of a lost run",
                        extra={"run_id": key, "pids": ",".join(map(str, victims))},
                    )
                killed.append(key)
            path.unlink(missing_ok=True)
        return killed

    # -- outcomes ----------------------------------------------------------------------------

    def keep_result(self, key: str, result: RunResult) -> bool:
        """Write the outcome before it is reported; True if it is on disk. If it cannot be
        written it is held in memory (logged once, with its job and attempt) until
        :meth:`flush` writes it."""
        try:
            _write_atomically(self._results / _file_name(key), {"key": key, **asdict(result)})
        except OSError as exc:
            with self._lock:
                self._held[key] = (result, False)
            self._disk.failed(exc, "run records")
            log.warning(
                "run outcome not written to disk: held in memory until it can be",
                extra={
                    "job_id": result.job_id,
                    "attempt": result.attempt,
                    "error": disk_condition(exc) or str(exc),
                },
            )
            return False
        return True

    def result_reported(self, key: str) -> None:
        """The store has the outcome: it is kept aside (see :meth:`outcome`), never reported
        again at start-up."""
        with self._lock:
            held = self._held.get(key)
            if held is not None:
                self._held[key] = (held[0], True)
                return
        name = _file_name(key)
        try:
            os.replace(self._results / name, self._reported / name)
        except FileNotFoundError:
            pass
        except OSError as exc:  # left in results/: reported again at start-up, a moot report
            if not self._disk.failed(exc, "run records"):
                log.warning("reported outcome not moved aside: %s", exc, extra={"run_id": key})

    def close(self) -> None:
        """A last :meth:`flush`; an outcome still held (neither reported nor on disk) is lost
        with this process, and said so with its job and attempt. Space back is no longer
        watched for it."""
        self.flush()
        self._disk.forget(self.flush)
        self._disk.unwatch(self._folder)
        with self._lock:
            lost = [result for result, reported in self._held.values() if not reported]
        for result in lost:
            log.warning(
                "run outcome lost: not reported and not on disk when the runner closed",
                extra={"job_id": result.job_id, "attempt": result.attempt},
            )

    @property
    def held(self) -> int:
        """How many outcomes are in memory only."""
        return len(self._held)

    def flush(self) -> int:
        """Write the outcomes held in memory (reported ones straight to ``reported/``);
        returns how many are still held. Stops at the first write that fails."""
        with self._lock:
            held = list(self._held.items())
        for key, (result, reported) in held:
            folder = self._reported if reported else self._results
            try:
                _write_atomically(folder / _file_name(key), {"key": key, **asdict(result)})
            except OSError as exc:
                if not self._disk.failed(exc, "run records"):
                    log.warning("held run outcome not written: %s", exc, extra={"run_id": key})
                break
            with self._lock:
                now = self._held.get(key)
                if now is not None and now[1] != reported:  # reported meanwhile: move it aside
                    name = _file_name(key)
                    with contextlib.suppress(OSError):
                        os.replace(self._results / name, self._reported / name)
                self._held.pop(key, None)
            log.info(
                "held run outcome written to disk",
                extra={"job_id": result.job_id, "attempt": result.attempt, "reported": reported},
            )
        return len(self._held)

    def unreported_results(self) -> list[tuple[str, RunResult]]:
        with self._lock:
            found = [(key, result) for key, (result, done) in self._held.items() if not done]
        for path in sorted(self._results.glob("*.json")):
            result = _result_in(path)
            if result is None:
                path.unlink(missing_ok=True)
                continue
            found.append(result)
        return found

    def outcome(self, key: str) -> RunResult | None:
        """How the run of ``key`` ended here, reported or not; None if it never ended here
        (or its record is past the retention)."""
        held = self._held.get(key)
        if held is not None:
            return held[0]
        name = _file_name(key)
        for folder in (self._results, self._reported):
            found = _result_in(folder / name)
            if found is not None and found[0] == key:
                return found[1]
        return None

    def prune_reported(self, older_than_seconds: float) -> int:
        """Remove reported outcomes older than ``older_than_seconds``; returns how many."""
        cutoff = time.time() - older_than_seconds
        removed = 0
        for path in self._reported.glob("*.json"):
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
        return removed


def _result_in(path: Path) -> tuple[str, RunResult] | None:
    """The key and outcome recorded in ``path``; None if there is none or it is unreadable."""
    if not path.exists():
        return None
    record = _read(path)
    if record is None:
        return None
    try:
        exit_code = record["exit_code"]
        return str(record["key"]), RunResult(
            job_id=str(record["job_id"]),
            attempt=int(str(record["attempt"])),
            exit_code=None if exit_code is None else int(str(exit_code)),
            timed_out=bool(record["timed_out"]),
            cancelled=bool(record["cancelled"]),
            summary=str(record["summary"]),
            reason=None if record.get("reason") is None else str(record["reason"]),
            repo=None if record.get("repo") is None else str(record["repo"]),
            started_at=_optional_int(record.get("started_at")),
            ended_at=_optional_int(record.get("ended_at")),
        )
    except (KeyError, ValueError):
        log.warning("unreadable run outcome %s: ignored", path)
        return None


def _write_atomically(path: Path, data: dict[str, object]) -> None:
    temporary = path.with_suffix(".tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError:
        temporary.unlink(missing_ok=True)  # a part written is no record
        raise
    os.replace(temporary, path)


def _optional_int(value: object) -> int | None:
    return None if value is None else int(str(value))


def _read(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        log.warning("unreadable run record %s: ignored", path)
        return None
    return data if isinstance(data, dict) else None


def _carrying(marker: bytes, pgid: int | None = None) -> list[int]:
    """Pids whose environment holds ``marker`` (in process group ``pgid`` if given; /proc)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            if pgid is not None and int(fields[2]) != pgid:  # state, ppid, pgrp, ...
                continue
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                members.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return members
