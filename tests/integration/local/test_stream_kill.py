"""SIGKILL the stream runner process in the middle of a backlog, restart it: nothing is lost,
nothing is activated twice, and the slot counters are exact."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from scheduler.db.clients import client
from scheduler.db.models import JobModel
from scheduler.db.store import JobStore, NewJob
from scheduler.settings import Settings
from tests.conftest import ROOT, stream_env

JOBS = 2000
REPOS = 400  # five jobs per repository, two slots each
LIMIT = 2
WORKER = Path(__file__).with_name("stream_worker.py")


def start_runner(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as output:
        return subprocess.Popen(
            [sys.executable, str(WORKER)],
            cwd=ROOT,
            env={**stream_env(settings), "PYTHONPATH": str(ROOT)},
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def repo_counters(settings: Settings) -> dict[str, dict[str, int]]:
    ddb = client("dynamodb", settings)
    found = {}
    for page in ddb.get_paginator("scan").paginate(TableName=settings.tables.repos):
        for item in page["Items"]:
            found[item["repo"]["S"]] = {
                key: int(value["N"]) for key, value in item.items() if "N" in value
            }
    return found


def checkpoints(settings: Settings) -> list[str]:
    ddb = client("dynamodb", settings)
    items = ddb.scan(TableName=settings.tables.runner_state, ConsistentRead=True)["Items"]
    return sorted(item.get("sequence_number", {}).get("S", "") for item in items)


def settled(counters: dict[str, dict[str, int]]) -> bool:
    """Every repository is full or has nothing waiting."""
    return len(counters) == REPOS and all(
        c.get("n_pending", 0) == 0 or c.get("running", 0) == LIMIT for c in counters.values()
    )


def test_sigkill_in_a_backlog_then_restart(stream_settings: Settings, tmp_path: Path) -> None:
    settings = stream_settings
    store = JobStore.from_settings(settings)
    log = tmp_path / "runner.log"
    runner = start_runner(settings, log)
    ids = [f"k-{n:04d}" for n in range(JOBS)]

    def create(n: int) -> None:
        store.create(NewJob(ids[n], f"org/k{n % REPOS:03d}", "push", "d" * 40, timeout_seconds=600))

    started = time.monotonic()
    try:
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(create, range(JOBS // 2)))
            # Kill the runner in the middle of the backlog: no chance to finish a batch or
            # write a checkpoint.
            runner.send_signal(signal.SIGKILL)
            runner.wait(10)
            list(pool.map(create, range(JOBS // 2, JOBS)))
        runner = start_runner(settings, log)
        # Done when every repository is settled and the runner's checkpoint and the counters
        # stopped moving (activations happen before the hooks' finishes are read).
        deadline = time.monotonic() + 300
        stable, last = 0, None
        while stable < 4:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            counters = repo_counters(settings)
            now = (checkpoints(settings), counters)
            stable = stable + 1 if settled(counters) and now == last else 0
            last = now
            time.sleep(0.5)
    finally:
        runner.send_signal(signal.SIGTERM)
        try:
            runner.wait(10)
        except subprocess.TimeoutExpired:
            runner.kill()
    elapsed = time.monotonic() - started

    jobs = {job.job_id: job for job in JobModel.scan()}
    assert sorted(jobs) == ids
    truth: dict[str, Counter[str]] = {}
    for job in jobs.values():
        truth.setdefault(job.repo, Counter())[job.status] += 1
        activated = Counter(int(h.attempt) for h in job.history if h.dest == "active")
        assert set(activated.values()) <= {1}, (job.job_id, activated)  # once per attempt
        if job.status in ("active", "passed"):
            assert activated == {1: 1}
    counters = repo_counters(settings)
    for repo, counts in truth.items():
        assert counters[repo]["running"] == counts["active"] <= LIMIT
        for status in ("pending", "active", "passed"):
            assert counters[repo].get(f"n_{status}", 0) == counts[status], (repo, status)
        if counts["pending"]:
            assert counts["active"] == LIMIT  # a waiting job never sits beside a free slot
    assert sum(c["passed"] for c in truth.values()) > REPOS // 2  # finishes promoted jobs
    print(f"{JOBS} jobs through a SIGKILLed runner in {elapsed:.1f}s")
