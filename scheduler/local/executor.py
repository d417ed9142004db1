"""Runs a repository's configured command as a local process, once per idempotency key.

Each run gets its own working directory and a log file per attempt, job data in environment
variables only, its own process group (so a timeout or a cancel kills everything it spawned)
and a slot in a bounded pool. Within this process a key starts at most one process; across
processes the caller claims the key in DynamoDB first (``JobStore.claim_run``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from scheduler.local.procutil import die_with_parent
from scheduler.runs.executor import Claim, OnFinished, RunRequest, RunResult

log = logging.getLogger(__name__)

# Only these variables of the scheduler's own environment reach a run: secrets (the webhook
# secret, AWS credentials, the GitHub token) must not leak into user commands.
PASSED_THROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")
SUMMARY_CHARS = 140
KILL_GRACE_SECONDS = 3.0


def run_id_for(request: RunRequest) -> str:
    """A local run is named by its idempotency key: the claim in DynamoDB *is* its id."""
    return request.idempotency_key


@dataclass
class _Run:
    request: RunRequest
    log_path: Path
    claim: Claim
    process: subprocess.Popen[bytes] | None = None
    cancelled: bool = False
    done: threading.Event = field(default_factory=threading.Event)


class LocalExecutor:
    def __init__(
        self,
        work_dir: Path,
        on_finished: OnFinished,
        *,
        max_parallel: int = 4,
        base_env: dict[str, str] | None = None,
    ) -> None:
        self._work_dir = work_dir
        self._on_finished = on_finished
        self._pool = ThreadPoolExecutor(max_parallel, thread_name_prefix="run")
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        source = os.environ if base_env is None else base_env
        self._base_env = {key: source[key] for key in PASSED_THROUGH if key in source}

    def log_location(self, request: RunRequest) -> str:
        return str(self.log_path(request))

    def log_path(self, request: RunRequest) -> Path:
        safe_id = request.job_id.replace("/", "_")
        return self._work_dir / "logs" / safe_id / f"attempt-{request.attempt}.log"

    def start(self, request: RunRequest, claim: Claim = lambda: True) -> str | None:
        run_id = run_id_for(request)
        with self._lock:
            if run_id in self._runs:
                return run_id  # the same key again: the first run stands
            run = _Run(request, self.log_path(request), claim)
            self._runs[run_id] = run
        if request.delay_seconds > 0:
            # A retry's backoff: a timer, so no pool slot is held while waiting.
            timer = threading.Timer(request.delay_seconds, self._pool.submit, (self._execute, run))
            timer.daemon = True
            timer.start()
        else:
            self._pool.submit(self._execute, run)
        log.info("run queued", extra={"job_id": request.job_id, "run_id": run_id})
        return run_id

    def cancel(self, run_id: str) -> None:
        with self._lock:
            run = self._runs.get(run_id)
        if run is None:
            return
        run.cancelled = True
        if run.process is not None:
            _kill_group(run.process)

    def wait(self, run_id: str, timeout: float | None = None) -> bool:
        """Wait until the run ended (for tests and shutdown); True if it did."""
        with self._lock:
            run = self._runs.get(run_id)
        return run.done.wait(timeout) if run else True

    def close(self) -> None:
        """Kill what still runs and wait for the pool; runs never started are dropped."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            run.cancelled = True
            if run.process is not None and run.process.poll() is None:
                _kill_group(run.process)
        self._pool.shutdown(wait=True)

    def _execute(self, run: _Run) -> None:
        request = run.request
        try:
            # Claimed only when a pool slot is free: an attempt that was reaped or cancelled
            # while it waited here is never started.
            if run.cancelled or not run.claim():
                return
            result = self._run_process(run)
            self._on_finished(result)
        except Exception:
            log.exception("run failed to execute", extra={"job_id": request.job_id})
            with contextlib.suppress(Exception):
                self._on_finished(
                    RunResult(request.job_id, request.attempt, None, summary="executor error")
                )
        finally:
            run.done.set()

    def _run_process(self, run: _Run) -> RunResult:
        request = run.request
        workdir = self._work_dir / "work" / request.job_id.replace("/", "_")
        workdir.mkdir(parents=True, exist_ok=True)
        run.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(run.log_path, "wb") as output:
            try:
                run.process = subprocess.Popen(
                    list(request.command),  # an argv list: no shell ever sees payload data
                    cwd=workdir,
                    env={**self._base_env, **request.environment()},
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group, killed as a whole
                    preexec_fn=die_with_parent,  # noqa: PLW1509 - never outlives the scheduler
                )
            except OSError as exc:
                return RunResult(
                    request.job_id, request.attempt, 127, summary=f"cannot start: {exc}"
                )
            if run.cancelled:
                _kill_group(run.process)
            try:
                exit_code: int | None = run.process.wait(timeout=request.timeout_seconds)
                timed_out = False
            except subprocess.TimeoutExpired:
                _kill_group(run.process)
                exit_code, timed_out = None, True
        if run.cancelled:
            exit_code = None
        return RunResult(
            request.job_id,
            request.attempt,
            exit_code,
            timed_out=timed_out,
            cancelled=run.cancelled,
            summary=_summary(run.log_path, exit_code, timed_out, run.cancelled),
        )


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(KILL_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    # Children that left the group's leader behind still get the group's SIGKILL.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _summary(log_path: Path, exit_code: int | None, timed_out: bool, cancelled: bool) -> str:
    if cancelled:
        head = "cancelled"
    elif timed_out:
        head = "timed out"
    else:
        head = f"exit code {exit_code}"
    last_line = ""
    with contextlib.suppress(OSError), open(log_path, "rb") as handle:
        handle.seek(max(0, log_path.stat().st_size - 2048))
        lines = handle.read().decode("utf-8", "replace").strip().splitlines()
        last_line = lines[-1].strip() if lines else ""
    text = f"{head}: {last_line}" if last_line else head
    return text[:SUMMARY_CHARS]
