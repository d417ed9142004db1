"""Runs a repository's configured command as a local process, once per idempotency key.

Each attempt gets its own working directory and log file, job data in environment variables
only, its own process group (so a timeout or a cancel kills everything it spawned) and a slot
in a bounded pool. Within this process a key starts at most one process; across processes the
caller claims the key in DynamoDB first (``JobStore.claim_run``).

Database trouble never decides a run's fate: a claim that meets an unavailable store is tried
again until it is decided, and an outcome is kept on disk (:mod:`scheduler.local.run_records`)
and reported until the store takes it, across restarts.

Nor does a full disk: an outcome that cannot be written is held in memory and reported all the
same (a finished command is never run again for want of its record), a run that cannot be
started for the disk fails at once as ``start_failed`` (retried), and output lost from a log is
said so in it (:class:`~scheduler.local.run_log.CappedLog`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from scheduler.disk_space import DISK, OK, DiskSpace, disk_condition
from scheduler.errors import InvalidArgument
from scheduler.github.clone_urls import DEFAULT_GITHUB_HOST
from scheduler.local.checkout import (
    TOKEN_VARIABLE,
    CheckoutFailed,
    CommitNotFound,
    SourceCheckout,
    TokenSource,
)
from scheduler.local.process_group import ProcessGroup
from scheduler.local.procutil import orphan_proof
from scheduler.local.run_log import LOGS_FOLDER, CappedLog, OutputPump, log_file
from scheduler.local.run_records import MARKER, TOKEN, RunRecords
from scheduler.local.sandbox import Bubblewrap
from scheduler.runs.executor import Claim, OnFinished, RunRequest, RunResult, RunStatus
from scheduler.runs.masking import NO_MASK, SECRET_PREFIX, Masker
from scheduler.settings import DEFAULT_LOG_MAX_BYTES
from state_machines import START_FAILED

log = logging.getLogger(__name__)

# Only these variables of the scheduler's own environment reach a run: secrets (the webhook
# secret, AWS credentials, the GitHub token) must not leak into user commands.
PASSED_THROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")
SUMMARY_CHARS = 140
CHECKOUT_NOTE = "[scheduler: checked out"  # the log's first line when the commit was checked out
KILL_GRACE_SECONDS = 3.0
RETRY_MAX_SECONDS = 5.0  # the longest wait between two tries of a claim or a report
# How long the output may go on after the run's process ended (or was killed): what still
# holds the pipe then (a grandchild that left the process group) is no longer read.
OUTPUT_GRACE_SECONDS = 2.0
# How long a run waits for space before it is begun while the disk is known full (then it is
# tried, and fails as start_failed if the disk still refuses it), and how often it looks.
SPACE_WAIT_SECONDS = 60.0
SPACE_POLL_SECONDS = 0.25


def run_id_for(request: RunRequest) -> str:
    """A local run is named by its idempotency key: the claim in DynamoDB *is* its id."""
    return request.idempotency_key


@dataclass
class _Run:
    request: RunRequest
    log_path: Path
    claim: Claim
    group: ProcessGroup | None = None  # its command's process group, once spawned
    cancelled: bool = False
    executing: bool = False  # picked up by a pool thread (claiming, starting or running)
    started_at: int | None = None  # when a pool thread picked it up (epoch ms)
    abandoned: bool = False  # killed because the executor closes: not an outcome to report
    finished: bool = False  # its outcome is known (and being reported)
    done: threading.Event = field(default_factory=threading.Event)


class LocalExecutor:
    def __init__(
        self,
        work_dir: Path,
        on_finished: OnFinished,
        *,
        max_parallel: int = 4,
        base_env: dict[str, str] | None = None,
        keep_failed_workdirs: int = 10,
        log_max_bytes: int = DEFAULT_LOG_MAX_BYTES,
        mask_for: Callable[[str], Masker] = lambda _repo: NO_MASK,
        sandbox: Bubblewrap | None = None,
        github_host: str = DEFAULT_GITHUB_HOST,
        disk: DiskSpace = DISK,
        git_token_for: TokenSource | None = None,
    ) -> None:
        """``sandbox``: what runs whose request asks for one execute in (None: a request that
        asks for one fails as ``error``, never runs unsandboxed)."""
        self._work_dir = work_dir
        self._on_finished = on_finished
        self._pool = ThreadPoolExecutor(max_parallel, thread_name_prefix="run")
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._disk = disk
        self.records = RunRecords(work_dir, disk)
        # Logs whose end a full disk refused, written when space is back.
        self._unfinished_logs: list[tuple[RunRequest, CappedLog]] = []
        disk.on_space_back(self.finish_logs)
        # Work directories of the last failed runs, kept to look into; every other one is
        # removed when its run ends (disk stays bounded however many jobs run).
        self._kept: deque[Path] = deque()
        self._keep_failed = keep_failed_workdirs
        source = os.environ if base_env is None else base_env
        self._base_env = {key: source[key] for key in PASSED_THROUGH if key in source}
        self._log_max_bytes = log_max_bytes
        self._mask_for = mask_for  # secrets kept out of the summary stored on the job
        # The git token goes to the GitHub host only (github_host: see SourceCheckout).
        # A GitHub App's installation token per repository (git_token_for) wins over it.
        self._checkout = SourceCheckout(
            work_dir,
            token=source.get(TOKEN_VARIABLE),
            github_host=github_host,
            token_for=git_token_for,
        )
        self._sandbox = sandbox
        # The values a repository's ``secrets`` key names: SCHEDULER_SECRET_<NAME>.
        self._secrets = {
            key.removeprefix(SECRET_PREFIX): value
            for key, value in source.items()
            if key.startswith(SECRET_PREFIX) and value
        }

    def log_location(self, request: RunRequest) -> str:
        return str(self.log_path(request))

    def log_path(self, request: RunRequest) -> Path:
        return log_file(self.logs_dir, request.job_id, request.attempt)

    @property
    def logs_dir(self) -> Path:
        return self._work_dir / LOGS_FOLDER

    @property
    def checkout(self) -> SourceCheckout:
        """The mirrors and checkouts of the runs (a pipeline file is read from the mirror)."""
        return self._checkout

    def start(self, request: RunRequest, claim: Claim = lambda: True) -> str | None:
        run_id = run_id_for(request)
        with self._lock:
            if run_id in self._runs:
                return run_id  # the same key again: the first run stands
            if self._log_exists(run_id):
                # A runner took this attempt's run before (here, or before a restart): it is
                # never started twice, whatever asks again (a lost write, a replayed record).
                log.info("run not started again", extra={"job_id": request.job_id})
                return None
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
        """Stop the run and return once its process group is gone (a run still waiting for a
        pool thread or its backoff never starts). Unknown run ids are no-ops."""
        with self._lock:
            run = self._runs.get(run_id)
        if run is None:
            return
        run.cancelled = True
        if run.group is not None:
            run.group.stop(KILL_GRACE_SECONDS)
        if run.executing:
            # Between its claim and the process start the run sees the flag and kills what it
            # started; wait for that, so a caller can hand the slot on.
            run.done.wait(KILL_GRACE_SECONDS + 5)

    def stopped(self, run_id: str) -> bool:
        """Its process tree is gone: it ended here, or it never began (what a previous runner
        left behind was killed by the stack's recovery at start-up)."""
        return self.status(run_id) in (RunStatus.GONE, RunStatus.UNSTARTED)

    def started_at(self, key: str) -> int | None:
        """When a runner took the run of ``key`` (epoch ms): its timeout counts from there.
        None if it is not running here."""
        with self._lock:
            run = self._runs.get(key)
        return run.started_at if run is not None else None

    def status(self, key: str) -> RunStatus:
        with self._lock:
            run = self._runs.get(key)
        if run is None:
            # Its log is made when a runner takes it, before anything runs, and kept for the
            # job's retention: without one it never began, here or before a restart.
            return RunStatus.GONE if self._log_exists(key) else RunStatus.UNSTARTED
        if run.done.is_set():
            return RunStatus.GONE
        if run.finished:
            return RunStatus.FINISHING
        # Waiting: for a runner of the pool, or for its backoff. Once a runner has it (its
        # checkout counts as the run's time) it runs.
        return RunStatus.RUNNING if run.executing else RunStatus.WAITING

    def _log_exists(self, key: str) -> bool:
        job_id, _, attempt = key.rpartition("#")
        try:
            return log_file(self.logs_dir, job_id, int(attempt)).exists()
        except (ValueError, InvalidArgument):
            return True  # not a key of ours: never claim that it did not run

    def result_of(self, run_id: str) -> RunResult | None:
        """How the run ended here, from its outcome kept on disk: a report the store
        acknowledged can still be lost with it (DynamoDB Local killed right after), and is then
        made again as the run ended rather than failed for a lost runner."""
        return self.records.outcome(run_id)

    def wait(self, run_id: str, timeout: float | None = None) -> bool:
        """Wait until the run ended (for tests and shutdown); True if it did."""
        with self._lock:
            run = self._runs.get(run_id)
        return run.done.wait(timeout) if run else True

    def close(self) -> None:
        """Kill what still runs and wait for the pool; runs never started are dropped.

        Nothing is reported for them: after a restart the recovery finds their jobs active
        with no runner and retries them as ``runner_lost`` (or starts the unstarted ones).
        """
        self._closing.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            run.abandoned = run.cancelled = True
            if run.group is not None:
                run.group.stop(KILL_GRACE_SECONDS)
        self._pool.shutdown(wait=True)
        # Outcomes the disk refused and the store did not take: a last try to keep them.
        self.records.close()
        self._disk.forget(self.finish_logs)

    def _execute(self, run: _Run) -> None:
        request = run.request
        self._wait_for_space(run)
        run.started_at = time.time_ns() // 1_000_000  # a runner has it: its time runs
        run.executing = True
        try:
            # Claimed only when a pool slot is free: an attempt that was reaped or cancelled
            # while it waited here is never started.
            if run.cancelled or not self._claim(run):
                return
            try:
                result = self._run_process(run)
            except Exception as exc:
                if run.group is None and self._disk.failed(exc, "run"):
                    result = self._not_started(request, exc)  # nothing of it was spawned
                else:
                    log.exception(
                        "run failed to execute",
                        extra={"job_id": request.job_id, "attempt": request.attempt},
                    )
                    result = RunResult(
                        request.job_id, request.attempt, None, summary="executor error"
                    )
            if not run.abandoned:
                result = replace(
                    result,
                    repo=request.repo,
                    started_at=run.started_at,
                    ended_at=time.time_ns() // 1_000_000,
                )
                run.finished = True
                # Held in memory if the disk refuses it: reported all the same.
                self.records.keep_result(request.idempotency_key, result)
                self.report(request.idempotency_key, result)
                self._clean_up(request, result)
        except Exception:
            # A pool thread's exception would vanish in its future: never without a line.
            log.exception(
                "run's outcome not handled",
                extra={"job_id": request.job_id, "attempt": request.attempt},
            )
        finally:
            run.done.set()
            with self._lock:
                # Forgotten once ended (memory stays bounded): another start of the same key
                # is refused by its claim in DynamoDB.
                self._runs.pop(request.idempotency_key, None)

    def _wait_for_space(self, run: _Run) -> None:
        """A run is not begun while the disk is known full (for up to
        :data:`SPACE_WAIT_SECONDS`): it would only fail to start and spend one of its job's
        infrastructure retries. It waits as a run waiting for a runner does (not its time)."""
        if self._disk.condition == OK:
            return
        log.info(
            "run waits for disk space",
            extra={"job_id": run.request.job_id, "attempt": run.request.attempt},
        )
        deadline = time.monotonic() + SPACE_WAIT_SECONDS
        while self._disk.condition != OK and time.monotonic() < deadline and not run.cancelled:
            if self._closing.wait(SPACE_POLL_SECONDS):
                return

    def _not_started(self, request: RunRequest, exc: BaseException) -> RunResult:
        """The run could not be started for the disk: ``start_failed`` (retried as
        infrastructure), reported now rather than found by the reaper."""
        note = f"cannot start: disk {disk_condition(exc)}"
        log.warning(
            "run not started: the disk refused its records",
            extra={"job_id": request.job_id, "attempt": request.attempt},
        )
        return RunResult(request.job_id, request.attempt, None, summary=note, reason=START_FAILED)

    def finish_logs(self) -> int:
        """Write the ends of logs a full disk refused; returns how many still wait."""
        with self._lock:
            waiting, self._unfinished_logs = self._unfinished_logs, []
        left = []
        for request, output in waiting:
            if output.finish_pending():
                log.info(
                    "run log completed once space was back",
                    extra={"job_id": request.job_id, "attempt": request.attempt},
                )
            else:
                left.append((request, output))
        with self._lock:
            self._unfinished_logs.extend(left)
            return len(self._unfinished_logs)

    def _log_ended(self, request: RunRequest, output: CappedLog) -> None:
        """Say (once, with its job and attempt) that the log lost output or waits for space."""
        if output.lost_bytes or not output.complete:
            log.warning(
                "run log lost output to the disk",
                extra={
                    "job_id": request.job_id,
                    "attempt": request.attempt,
                    "lost_bytes": output.lost_bytes,
                    "waiting_bytes": len(output.pending),
                },
            )
        if not output.complete:
            with self._lock:
                self._unfinished_logs.append((request, output))

    def _claim(self, run: _Run) -> bool:
        """The claim, tried again while the store cannot answer (it is never a job's failure)."""
        request = run.request
        return bool(self._until_done(run.claim, "claim", request.job_id, request.attempt, run))

    def report(self, key: str, result: RunResult) -> bool:
        """Hand ``result`` to the owner until it is taken (or the executor closes: the record
        on disk is reported after the restart). True once reported."""
        reported = self._until_done(
            lambda: self._on_finished(result) or True, "report", result.job_id, result.attempt
        )
        if reported:
            self.records.result_reported(key)
        return bool(reported)

    def _until_done(
        self,
        attempt: Callable[[], bool],
        what: str,
        job_id: str,
        number: int,
        run: _Run | None = None,
    ) -> bool | None:
        """``attempt()`` until it answers; its first failure is logged (with the job and the
        attempt), the tries after it only once they succeed: a store down for a minute is one
        line per run, not one per try."""
        fields: dict[str, object] = {"job_id": job_id, "attempt": number}
        delay, failures = 0.2, 0
        while True:
            try:
                done = attempt()
            except Exception as exc:
                failures += 1
                if failures == 1:
                    log.warning(
                        "%s failed, trying again until it is taken: %s", what, exc, extra=fields
                    )
                else:
                    log.debug("%s failed again: %s", what, exc, extra=fields)
            else:
                if failures:
                    log.info("%s taken after %d tries", what, failures + 1, extra=fields)
                return done
            if self._closing.wait(delay) or (run is not None and run.cancelled):
                if failures and what == "report":
                    log.warning("report not taken before the runner closed", extra=fields)
                return None
            delay = min(delay * 2, RETRY_MAX_SECONDS)

    def workdir(self, request: RunRequest) -> Path:
        """Each attempt's fresh folder of its own: nothing leaks from one attempt to the next."""
        safe_id = request.job_id.replace("/", "_")
        return self._work_dir / "work" / safe_id / f"attempt-{request.attempt}"

    def _clean_up(self, request: RunRequest, result: RunResult) -> None:
        """Remove the attempt's work directory, unless it is one of the last failed ones."""
        workdir = self.workdir(request)
        with self._lock:
            if result.passed or self._keep_failed <= 0:
                doomed = [workdir]
            else:
                self._kept.append(workdir)
                doomed = []
                while len(self._kept) > self._keep_failed:
                    doomed.append(self._kept.popleft())
        for folder in doomed:
            shutil.rmtree(folder, ignore_errors=True)
            with contextlib.suppress(OSError):
                folder.parent.rmdir()  # the job's folder, once its last attempt is gone

    def prune_logs(self, older_than_seconds: float) -> int:
        """Remove the logs (and kept outcomes) of jobs untouched for ``older_than_seconds``
        (the job retention); returns how many jobs' logs went."""
        cutoff = time.time() - older_than_seconds
        removed = 0
        for job_logs in self.logs_dir.glob("*"):
            try:
                # An empty folder is as old as itself: a run makes it, then opens its log.
                newest = max(
                    (f.stat().st_mtime for f in job_logs.iterdir()),
                    default=job_logs.stat().st_mtime,
                )
            except OSError:
                continue
            if newest < cutoff:
                shutil.rmtree(job_logs, ignore_errors=True)
                removed += 1
        self.records.prune_reported(older_than_seconds)
        return removed

    def _prepare(self, request: RunRequest, workdir: Path, output: CappedLog) -> RunResult | None:
        """Make the attempt's folder: a checkout of its commit, or empty; say so in its log.

        A checkout that cannot be made is the run's result: ``start_failed`` (retried) when
        the remote could not be reached, ``error`` when it has no such commit.
        """
        if not request.checkout:
            workdir.mkdir(parents=True, exist_ok=True)
            return None
        started = time.monotonic()
        try:
            self._checkout.prepare(request.repo, request.clone_url, request.sha, workdir)
        except (CommitNotFound, CheckoutFailed) as exc:
            output.write(f"[scheduler: checkout failed: {exc}]\n".encode())
            reason = "error" if isinstance(exc, CommitNotFound) else START_FAILED
            return RunResult(request.job_id, request.attempt, None, summary=str(exc), reason=reason)
        took = time.monotonic() - started
        output.write(f"{CHECKOUT_NOTE} {request.sha} in {took:.2f} s]\n".encode())
        log.info("checked out", extra={"job_id": request.job_id, "seconds": round(took, 3)})
        return None

    def _isolated(self, request: RunRequest, workdir: Path, env: dict[str, str]) -> list[str]:
        """The command as it is spawned: inside the sandbox when its repository asks for one.
        The sandbox's process gets ``env`` alone, so nothing of the scheduler's reaches it."""
        if not request.sandbox:
            return list(request.command)
        if self._sandbox is None:
            raise OSError(1, "this runner has no sandbox and the repository requires one")
        if os.sep not in request.command[0]:
            # Looked up here as the child would: a missing command fails as before (127).
            found = shutil.which(request.command[0], path=env.get("PATH", os.defpath))
            if found is None:
                raise FileNotFoundError(2, "No such file or directory", request.command[0])
        return self._sandbox.wrap(
            request.command,
            workdir=workdir,
            env=env,
            network=request.network,
            shared=request.sandbox_paths,
        )

    def _ready(self, request: RunRequest, workdir: Path, output: CappedLog) -> str | RunResult:
        """The attempt's folder made and its record written: the token its processes carry,
        or the result of a run that cannot be started (then its log is closed)."""
        refused = self._prepare(request, workdir, output)
        if refused is not None:
            output.close()
            return refused
        try:
            # Recorded before the spawn: a stack killed at any moment leaves no untracked
            # process. Without that record nothing is spawned.
            return self.records.starting(request.idempotency_key)
        except OSError as exc:
            if disk_condition(exc) is None:
                raise
            output.write(f"[scheduler: cannot start: disk {disk_condition(exc)}]\n".encode())
            output.close()
            return self._not_started(request, exc)

    def _run_process(self, run: _Run) -> RunResult:
        request = run.request
        workdir = self.workdir(request)
        run.log_path.parent.mkdir(parents=True, exist_ok=True)
        # The output goes through a pipe drained by a thread of its own into a capped log
        # (head and tail); the pump ends with the process group, whatever holds the pipe.
        output = CappedLog(run.log_path, self._log_max_bytes, disk=self._disk)
        token = self._ready(request, workdir, output)
        if isinstance(token, RunResult):
            return token
        mask = self._mask_for(request.repo)
        env = {**self._base_env, **request.environment(), MARKER: request.idempotency_key}
        env[TOKEN] = token
        missing = [name for name in request.secrets if name not in self._secrets]
        if missing:
            self.records.ended(request.idempotency_key)
            note = f"secret {missing[0]} is not set (no {SECRET_PREFIX}{missing[0]} here)"
            output.write(f"[scheduler: cannot start: {note}]\n".encode())
            output.close()
            return RunResult(request.job_id, request.attempt, None, summary=note, reason="error")
        env.update({name: self._secrets[name] for name in request.secrets})
        try:
            # An argv list: no shell ever sees payload data. It never outlives the scheduler.
            argv, preexec = orphan_proof(self._isolated(request, workdir, env), env)
            process = subprocess.Popen(
                argv,
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as a whole
                preexec_fn=preexec,  # noqa: PLW1509 - None where setpriv does it
            )
        except OSError as exc:
            self.records.ended(request.idempotency_key)
            output.write(f"[scheduler: cannot start: {exc}]\n".encode())
            output.close()
            return RunResult(
                request.job_id, request.attempt, 127, summary=mask(f"cannot start: {exc}")
            )
        run.group = group = ProcessGroup(process)
        pump: OutputPump | None = None
        timed_out = False
        try:
            assert process.stdout is not None
            pump = OutputPump(process.stdout, output, name=f"output-{request.idempotency_key}")
            if run.cancelled:
                group.stop(KILL_GRACE_SECONDS)
            timed_out = not group.wait(request.timeout_seconds)
            if timed_out:
                group.stop(KILL_GRACE_SECONDS)
        finally:
            if not group.wait(0):  # an error above: nothing of the run outlives it
                group.stop(KILL_GRACE_SECONDS)
            exit_code: int | None = group.reap()
            self.records.ended(request.idempotency_key)  # only once nothing of it is left
            if pump is not None:
                pump.finish(OUTPUT_GRACE_SECONDS)
            self._log_ended(request, output)
        if run.cancelled or timed_out:
            exit_code = None
        return RunResult(
            request.job_id,
            request.attempt,
            exit_code,
            timed_out=timed_out,
            cancelled=run.cancelled,
            summary=_summary(run.log_path, exit_code, timed_out, run.cancelled, mask),
        )


def _summary(
    log_path: Path,
    exit_code: int | None,
    timed_out: bool,
    cancelled: bool,
    mask: Callable[[str], str] = NO_MASK,
) -> str:
    """How the run ended and its last line, masked (it is stored on the job item and goes
    into the commit status), at most :data:`SUMMARY_CHARS` characters."""
    if cancelled:
        head = "cancelled"
    elif timed_out:
        head = "timed out"
    else:
        head = f"exit code {exit_code}"
    last_line = ""
    with contextlib.suppress(OSError), open(log_path, "rb") as handle:
        start = max(0, log_path.stat().st_size - 2048)
        handle.seek(start)
        lines = handle.read().decode("utf-8", "replace").splitlines()
        if start:
            lines = lines[1:]  # a part of a line: a secret in it may be cut, and not masked
        # The command's own last line: not the scheduler's note of the checkout.
        lines = [line for line in lines if line.strip() and not line.startswith(CHECKOUT_NOTE)]
        last_line = lines[-1].strip() if lines else ""
    text = mask(f"{head}: {last_line}" if last_line else head)
    return text[:SUMMARY_CHARS]
