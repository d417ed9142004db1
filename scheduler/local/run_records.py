"""What the local executor keeps on disk so that a run survives its runner's death.

Two small records per run, under the executor's folder:

- ``procs/<key>.json`` — a running command's token, written *before* it is spawned (its pid
  is not needed). ``PR_SET_PDEATHSIG`` reaches only the direct child, so after a SIGKILL of
  ``scheduler up`` a command's grandchildren live on; on restart, every process carrying a
  recorded run's token in its environment is killed: wherever it went (a new session, another
  group), and whenever the stack died (even right after the spawn). A recycled pid of somebody
  else's process never carries the token. Records of an older version (a process group, no
  token) are still honoured.
- ``results/<key>.json`` — a run's outcome, written before it is reported and removed once the
  store has it: an outcome that could not be recorded (the database was down, the stack was
  stopped) is reported after the restart instead of being lost or replaced by a timeout.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
from dataclasses import asdict
from pathlib import Path

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
    def __init__(self, folder: Path) -> None:
        self._procs = folder / "procs"
        self._results = folder / "results"
        self._procs.mkdir(parents=True, exist_ok=True)
        self._results.mkdir(parents=True, exist_ok=True)

    # -- process groups ----------------------------------------------------------------------

    def starting(self, key: str) -> str:
        """Record a run about to be spawned; returns the token its processes must carry."""
        token = secrets.token_hex(16)
        _write_atomically(self._procs / _file_name(key), {"key": key, "token": token})
        return token

    def ended(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self._procs / _file_name(key)).unlink()

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

    def keep_result(self, key: str, result: RunResult) -> None:
        _write_atomically(self._results / _file_name(key), {"key": key, **asdict(result)})

    def result_reported(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self._results / _file_name(key)).unlink()

    def unreported_results(self) -> list[tuple[str, RunResult]]:
        found = []
        for path in sorted(self._results.glob("*.json")):
            record = _read(path)
            if record is None:
                path.unlink(missing_ok=True)
                continue
            try:
                key = str(record["key"])
                exit_code = record["exit_code"]
                result = RunResult(
                    job_id=str(record["job_id"]),
                    attempt=int(str(record["attempt"])),
                    exit_code=None if exit_code is None else int(str(exit_code)),
                    timed_out=bool(record["timed_out"]),
                    cancelled=bool(record["cancelled"]),
                    summary=str(record["summary"]),
                    reason=None if record.get("reason") is None else str(record["reason"]),
                    repo=None if record.get("repo") is None else str(record["repo"]),
                    started_at=_optional_int(record.get("started_at")),
                )
            except (KeyError, ValueError):
                log.warning("unreadable run outcome %s: ignored", path)
                path.unlink(missing_ok=True)
                continue
            found.append((key, result))
        return found


def _write_atomically(path: Path, data: dict[str, object]) -> None:
    temporary = path.with_suffix(".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())
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
