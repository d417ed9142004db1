"""Issue 29: the stack's data folder on a small filesystem that fills mid-flow, then empties.

A 64 MiB tmpfs is mounted on the data folder (DynamoDB Local's database, the run logs and
records all on it); deliveries come over five repositories while runs print ~200 KB each; a
filler file takes every free byte for 15 s, then goes. Each run appends a line to a file
outside the tmpfs, so the books are checked apart from the scheduler's own tables.

Twice: with the whole data folder on the tmpfs, and with only the runs' folder on it (the
database taking every write meanwhile: runs must neither be started into the full disk nor
spend their retries on it).

Asserted: no command of a finished attempt runs again (one start per attempt, and no attempt
called lost by the reaper although the process knew its outcome), starts the disk refused are
failed within seconds of space coming back, every accepted job ends terminal, the counters
equal the items (``scheduler doctor``), ``/healthz`` named the condition while it lasted, and
the stack's log holds no traceback for it.

Needs root (to mount); otherwise it is skipped with the reason printed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harness import UNSANDBOXED, LocalStackProcess, wait_for

from scheduler.local.run_log import LOST_NOTE

REPOS = [f"disk/repo-{n}" for n in range(5)]
PORT, DYNAMODB_PORT = 18150, 18151  # this suite's own ports
HOLD_SECONDS = 15
MAX_JOBS = 40  # deliveries stop once this many were accepted (the suite's time stays bounded)
TERMINAL = ("passed", "failed", "cancelled", "superseded")

# A run: note the start outside the tmpfs (job attempt pid), print ~200 KB over ~2 s, pass.
NOISY = (
    "import os, sys, time\n"
    "e = os.environ\n"
    "line = f\"{e['SCHEDULER_JOB_ID']} {e['SCHEDULER_ATTEMPT']} {os.getpid()} alive=\\n\"\n"
    "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT)\n"
    "os.write(fd, line.encode()); os.close(fd)\n"
    "for n in range(2000):\n"
    "    print(f'output line {n:05d} ' + 'x' * 80, flush=True)\n"
    "    if n % 100 == 0: time.sleep(0.1)\n"
    "print('the last line', flush=True)\n"
)


def _mount_tmpfs(folder: Path) -> str | None:
    """Mount a 64 MiB tmpfs on ``folder``; the reason it cannot be, or None."""
    if os.geteuid() != 0:
        return "not root: cannot mount a small filesystem for the data folder"
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return f"mount -t tmpfs failed: {done.stderr.strip() or done.returncode}"
    return None


@pytest.fixture(params=["data", "data/runs"], ids=["data-folder", "runs-folder-only"])
def small_disk(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """The whole data folder (DynamoDB Local's database fills too), or only the runs' folder
    (logs and records fill while the database takes every write)."""
    data = tmp_path / str(request.param)
    reason = _mount_tmpfs(data)
    if reason is not None:
        print(f"skipped: {reason}")
        pytest.skip(reason)
    try:
        yield data
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)


def fill(folder: Path) -> Path:
    """Take every free byte of ``folder``'s filesystem with one file; return it."""
    filler = folder / "filler"
    chunk = b"\0" * (1024 * 1024)
    with open(filler, "wb", buffering=0) as handle:
        while True:
            try:
                handle.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
        with contextlib.suppress(OSError):  # the last pages, smaller than a chunk
            while handle.write(b"\0" * 4096):
                pass
    return filler


def test_a_full_disk_repeats_no_command_and_strands_no_start(
    tmp_path: Path, small_disk: Path
) -> None:
    starts_log = tmp_path / "effects" / "starts.log"
    starts_log.parent.mkdir()
    command = json.dumps([sys.executable, "-c", NOISY, str(starts_log)])
    stack = LocalStackProcess(
        tmp_path,
        config=(
            f"[defaults]\ncheckout = false\ncommand = {command}\n"
            + UNSANDBOXED
            + "concurrency = 2\ntimeout_seconds = 300\n[defaults.retry]\nattempts = 1\n"
        ),
        max_runs=2,  # runs wait for a runner: some are started while the disk is full
        port=PORT,
        dynamodb_port=DYNAMODB_PORT,
    )
    stack.start()
    accepted: list[str] = []
    refused = Counter[int]()
    conditions: set[str] = set()
    stop = threading.Event()

    def deliver_on(client: httpx.Client) -> None:
        n = 0
        while not stop.is_set() and len(accepted) < MAX_JOBS:
            repo = REPOS[n % len(REPOS)]
            try:
                answer = stack.deliver(client, repo, f"disk-{n}", f"{n + 1:040x}")
            except httpx.HTTPError:
                refused[0] += 1
            else:
                if answer.status_code == 202:
                    accepted.append(answer.json()["job_id"])
                else:
                    refused[answer.status_code] += 1
            n += 1
            stop.wait(0.25)

    try:
        with httpx.Client(timeout=30) as client:
            sender = threading.Thread(target=deliver_on, args=(client,), daemon=True)
            sender.start()
            wait_for("runs to be going", lambda: starts_log.exists() and len(accepted) >= 10, 90)
            filler = fill(small_disk)
            full_until = time.monotonic() + HOLD_SECONDS
            while time.monotonic() < full_until:
                with contextlib.suppress(httpx.HTTPError):
                    conditions.add(client.get(f"{stack.url}/healthz").json()["disk"])
                time.sleep(0.5)
            filler.unlink()
            freed_at_ms = time.time_ns() // 1_000_000
            time.sleep(5)
            stop.set()
            sender.join(60)
            wait_for(
                "the stack to see space back",
                lambda: client.get(f"{stack.url}/healthz").json()["disk"] == "ok",
                60,
            )

            def all_terminal() -> bool:
                return all(stack.job(client, j)["status"] in TERMINAL for j in set(accepted))

            wait_for("every accepted job to end", all_terminal, 240, 1.0)
            jobs = [stack.job(client, job_id) for job_id in sorted(set(accepted))]
        doctor = stack.cli("doctor", "--json")
        # Logs that lost output say so to ``scheduler logs`` (read before the tmpfs goes).
        lossy = re.findall(
            r"run log lost output to the disk job_id=(\S+) attempt=(\d+)",
            stack.log_tail(10_000_000),
        )
        shown = {key: stack.cli("logs", key[0], "--attempt", key[1]).stdout for key in lossy}
    finally:
        stop.set()
        stack.stop()
    log = stack.log_tail(10_000_000)
    starts = Counter((s.job_id, s.attempt) for s in stack.starts())
    histories = {job["job_id"]: job["history"] for job in jobs}
    refused_starts = sum(
        entry.get("reason") == "start_failed" for history in histories.values() for entry in history
    )
    print(  # the figures of the run, for the report
        f"accepted={len(accepted)} refused={dict(refused)} starts={sum(starts.values())}"
        f" start_failed={refused_starts} conditions={sorted(conditions)}"
        f" doctor={doctor.returncode} lossy_logs={len(lossy)}"
    )
    assert "full" in conditions, conditions  # /healthz named it while it lasted
    repeated = {key: count for key, count in starts.items() if count > 1}
    assert not repeated, repeated  # no command of an attempt ran twice
    lost = [j for j, h in histories.items() if any(e.get("reason") == "runner_lost" for e in h)]
    assert not lost, lost  # the process knew every outcome: none was called lost
    late = [
        (job_id, entry["at"] - freed_at_ms)
        for job_id, history in histories.items()
        for entry in history
        if entry.get("reason") == "start_failed" and entry["at"] > freed_at_ms + 20_000
    ]
    assert not late, late  # stuck starts failed within seconds of space returning
    assert lossy and all(LOST_NOTE in text for text in shown.values()), shown
    assert all(job["status"] in TERMINAL for job in jobs)
    passed = [job for job in jobs if job["status"] == "passed"]
    for job in passed:  # a passed attempt's command ran, once
        assert starts[(job["job_id"], job["attempt"])] == 1, job
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr  # counters equal items
    assert "Traceback" not in log, log[-5000:]
    assert 1 <= log.count("disk full: writes fail") <= 6, log[-5000:]
