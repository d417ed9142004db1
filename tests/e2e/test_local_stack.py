"""End to end through `scheduler up` over HTTP: deliveries in, commands run once, jobs finish."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from scheduler.github.signature import sign
from scheduler.local.dynamodb_local import free_port

ROOT = Path(__file__).resolve().parents[2]
SECRET = "e2e-webhook-secret-0123456789abcdef"
SCHEDULER = str(ROOT / ".venv" / "bin" / "scheduler")

# The command every job runs: record (job, attempt) in a shared file — the side effect the test
# counts — then behave as the repository's name says.
COMMAND = (
    "import os, sys, time\n"
    "line = os.environ['SCHEDULER_JOB_ID'] + ' ' + os.environ['SCHEDULER_ATTEMPT'] + '\\n'\n"
    "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT)\n"
    "os.write(fd, line.encode()); os.close(fd)\n"
    "mode = sys.argv[2]\n"
    "if mode == 'hang': time.sleep(120)\n"
    "if mode == 'slow': time.sleep(1.5)\n"
    "sys.exit(1 if mode == 'fail' else 0)\n"
)


def write_config(path: Path, effects: Path) -> None:
    def repo(mode: str, extra: str = "") -> str:
        argv = json.dumps([sys.executable, "-c", COMMAND, str(effects), mode])
        return f'[repos."e2e/{mode}"]\ncommand = {argv}\nconcurrency = 3\n{extra}\n'

    path.write_text(
        '[defaults]\ncheckout = false\ncommand = ["true"]\ntimeout_seconds = 60\n'
        # The runs are sandboxed: the folder they record their starts in is shared with them.
        f"sandbox_paths = {json.dumps([str(effects.parent)])}\n\n"
        "[defaults.retry]\nattempts = 1\n\n"
        + repo("pass")
        + repo("fail")
        + repo(
            "hang",
            'timeout_seconds = 2\n[repos."e2e/hang".retry]\nattempts = 2\non = ["timed_out"]',
        )
        + repo(
            "slow",
            'timeout_seconds = 4\n[repos."e2e/slow".retry]\nattempts = 3\non = ["timed_out"]',
        )
    )


@dataclass
class Stack:
    url: str
    process: subprocess.Popen[str]
    effects: Path

    def deliver(self, client: httpx.Client, repo: str, delivery: str, sha: str) -> dict[str, Any]:
        body = json.dumps(
            {
                "ref": "refs/heads/main",
                "after": sha,
                "repository": {"full_name": repo},
                "sender": {"login": "e2e"},
            }
        ).encode()
        response = client.post(
            f"{self.url}/webhook",
            content=body,
            headers={
                "Content-Type": "application/json",
                "X-GitHub-Event": "push",
                "X-GitHub-Delivery": delivery,
                "X-Hub-Signature-256": sign(SECRET.encode(), body),
            },
        )
        assert response.status_code in (200, 202), response.text
        return dict(response.json())

    def job(self, client: httpx.Client, job_id: str) -> dict[str, Any]:
        response = client.get(f"{self.url}/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def effects_count(self) -> Counter[tuple[str, str]]:
        if not self.effects.exists():
            return Counter()
        return Counter(tuple(line.split()) for line in self.effects.read_text().splitlines())  # type: ignore[misc]


def start_stack(tmp: Path, port: int) -> Stack:
    effects = tmp / "effects" / "effects.log"
    effects.parent.mkdir(exist_ok=True)
    config = tmp / "scheduler.toml"
    if not config.exists():
        write_config(config, effects)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("SCHEDULER_") and not key.startswith("AWS_")
    }
    # A short start grace, so the kill test's runs that never started are reaped quickly.
    env.update(
        GITHUB_WEBHOOK_SECRET=SECRET,
        SCHEDULER_CONFIG=str(config),
        SCHEDULER_START_GRACE_SECONDS="10",
    )
    process = subprocess.Popen(
        [
            SCHEDULER,
            "up",
            "--port",
            str(port),
            "--data-dir",
            str(tmp / "data"),
            "--json",
            "--max-runs",
            "16",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=open(tmp / "stack.log", "a"),  # noqa: SIM115 - the child owns it
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line, (tmp / "stack.log").read_text()[-3000:]
    return Stack(json.loads(line)["url"], process, effects)


def stop_stack(stack: Stack) -> None:
    if stack.process.poll() is None:
        stack.process.send_signal(signal.SIGINT)
        stack.process.wait(90)


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


def wait_all_final(
    stack: Stack,
    client: httpx.Client,
    job_ids: set[str],
    timeout: float,
    is_final: Callable[[dict[str, Any]], bool],
) -> dict[str, Any]:
    """Poll the query API until every job is final (a failed job may still be retried)."""
    deadline = time.monotonic() + timeout
    jobs: dict[str, Any] = {}
    while time.monotonic() < deadline:
        pending = [j for j in job_ids if j not in jobs or not is_final(jobs[j])]
        if not pending:
            return jobs
        for job_id in pending:
            jobs[job_id] = stack.job(client, job_id)
        time.sleep(0.5)
    stuck = {j: (jobs[j]["status"], jobs[j]["attempt"]) for j in job_ids if not is_final(jobs[j])}
    raise AssertionError(f"jobs not final in time: {stuck}")


def test_two_hundred_deliveries_run_exactly_once(workdir: Path) -> None:
    stack = start_stack(workdir, free_port())
    try:
        rng = random.Random(5)
        modes = ["pass"] * 120 + ["fail"] * 60 + ["hang"] * 20
        rng.shuffle(modes)
        deliveries = [
            (f"e2e/{mode}", str(uuid.uuid4()), uuid.uuid4().hex + "abcdef01") for mode in modes
        ]
        sends = deliveries + deliveries[::3]  # a third delivered twice...
        rng.shuffle(sends)
        with httpx.Client(timeout=30) as client, ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda d: stack.deliver(client, *d), sends))
            # ...and some of them concurrently, at the very same moment.
            barrier = threading.Barrier(8)

            def again(delivery: tuple[str, str, str]) -> dict[str, Any]:
                barrier.wait()
                return stack.deliver(client, *delivery)

            answers += list(pool.map(again, [deliveries[0]] * 8))
            by_delivery: dict[str, set[str]] = {}
            for (_, delivery, _), answer in zip(sends + [deliveries[0]] * 8, answers, strict=True):
                by_delivery.setdefault(delivery, set()).add(answer["job_id"])
            assert all(len(ids) == 1 for ids in by_delivery.values())
            job_ids = {ids.pop() for ids in by_delivery.values()}
            assert len(job_ids) == 200

            expected = {
                "e2e/pass": ("passed", 1),
                "e2e/fail": ("failed", 1),
                "e2e/hang": ("failed", 2),
            }
            jobs = wait_all_final(
                stack,
                client,
                job_ids,
                timeout=600,  # a bound only a stuck job reaches (a few seconds' work)
                is_final=lambda job: (job["status"], job["attempt"]) == expected[job["repo"]],
            )
        for job in jobs.values():
            assert (job["status"], job["attempt"]) == expected[job["repo"]], job
            if job["repo"] == "e2e/hang":
                assert job["reason"] == "timed_out"
            if job["repo"] == "e2e/fail":
                assert job["exit_code"] == 1
        effects = stack.effects_count()
        assert set(effects.values()) == {1}, "a command ran twice for one attempt"
        attempts = {
            (job["job_id"], str(n)) for job in jobs.values() for n in range(1, job["attempt"] + 1)
        }
        missing = attempts - set(effects)
        assert not missing, [jobs[job_id] for job_id, _ in missing]
        assert sum(effects.values()) == 120 + 60 + 20 * 2
    finally:
        stop_stack(stack)
    assert stack.process.returncode == 0


def test_kill_and_restart_loses_nothing_and_runs_nothing_twice(workdir: Path) -> None:
    import psutil

    port = free_port()
    stack = start_stack(workdir, port)
    job_ids: set[str] = set()
    with httpx.Client(timeout=30) as client:
        try:
            for _ in range(24):
                answer = stack.deliver(
                    client, "e2e/slow", str(uuid.uuid4()), uuid.uuid4().hex + "0" * 8
                )
                job_ids.add(answer["job_id"])
            # Let some runs start, then kill the whole stack process without any cleanup.
            deadline = time.monotonic() + 120
            while sum(stack.effects_count().values()) < 3 and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            children = psutil.Process(stack.process.pid).children(recursive=True)
            stack.process.send_signal(signal.SIGKILL)
            stack.process.wait(30)
        # The JVM and the runs die with their parent (PDEATHSIG): gone before the restart
        # takes the port and the data directory again, however long a busy machine takes.
        psutil.wait_procs(children, timeout=60)
        stack = start_stack(workdir, port)
        try:
            jobs = wait_all_final(
                stack, client, job_ids, timeout=600, is_final=lambda job: job["status"] == "passed"
            )
        finally:
            stop_stack(stack)
    assert {job["status"] for job in jobs.values()} == {"passed"}
    effects = stack.effects_count()
    assert set(effects.values()) == {1}, "a command ran twice for one attempt"
    assert {job_id for job_id, _ in effects} == job_ids  # none lost


@pytest.mark.parametrize("signals", [[signal.SIGTERM], [signal.SIGINT] * 3])
def test_signals_stop_everything_within_seconds(workdir: Path, signals: list[int]) -> None:
    import psutil

    stack = start_stack(workdir, free_port())
    children = psutil.Process(stack.process.pid).children(recursive=True)
    assert any("java" in child.name() for child in children)  # DynamoDB Local is ours
    for sig in signals:  # an impatient operator presses Ctrl-C again and again
        stack.process.send_signal(sig)
        time.sleep(0.05)
    # Within seconds here; the bounds are for a hang only (a loaded machine is slower).
    assert stack.process.wait(90) == 0
    _, alive = psutil.wait_procs(children, timeout=60)
    assert alive == [], "a child outlived scheduler up"
