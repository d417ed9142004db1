"""Webhook-to-command latency of the whole local stack, for a no-op command.

``scheduler up`` runs as a child process (its own DynamoDB Local on a free port, data in a
temporary directory, ``--max-runs 8``), configured with one repository ``bench/noop`` whose
command is ``sh -c 'echo $SCHEDULER_JOB_ID $(date +%s.%N) >> FILE'`` (concurrency 8), so an
interpreter's start-up barely counts in "the command started". Signed ``push`` deliveries are
POSTed to ``/webhook``; each must be answered 202. For every job, measured from *accepted* (the
client's clock the moment the 202 came back; stack and client share the machine's clock):

* **cmd start**: the timestamp the command itself wrote;
* **started_at**: the job's ``started_at`` (``GET /jobs/{id}``): when the run's process was
  spawned, as the executor recorded it (its report writes it);
* **finished**: the job's ``finished_at``, when it became ``passed``.

Two phases, one after the other: **steady** (deliveries paced at ``--rate`` per second) and
**burst** (all deliveries at once from ``--burst-clients`` threads). Each prints p50/p90/p99/max
and throughput (jobs finished per second, first accepted to last finished). The targets are
p50 cmd start < 200 ms and p50 finished < 500 ms. Completion is detected from the command's
file, so the query API is not polled while the phase runs. A few warm-up jobs (not counted) go
first. Afterwards the stack's idle CPU (Python process + DynamoDB Local JVM, percent of one
core, over ``--idle-seconds``) and resident memory are printed, to set beside the README.

Run from the project root (takes about a minute with the defaults)::

    .venv/bin/python bench/pipeline.py [--jobs 200] [--rate 10] [--burst | --steady]
        [--burst-clients 8] [--senders 4] [--repos 1] [--warmup 10] [--idle-seconds 20]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any

import httpx
import psutil  # type: ignore[import-untyped]  # no stubs pinned; a dev dependency
from common import cpu_seconds, open_loop, signed_push
from stats import ms, summary

from scheduler.local.dynamodb_local import free_port

ROOT = Path(__file__).resolve().parents[1]
SCHEDULER = str(ROOT / ".venv" / "bin" / "scheduler")
SECRET = "bench-pipeline-secret-0123456789"
REPO = "bench/noop"
CONCURRENCY = 8
START_TIMEOUT = 180.0  # DynamoDB Local's first start can be slow
TARGET_START_MS = 200.0
TARGET_FINISH_MS = 500.0


# --- the stack --------------------------------------------------------------------------------


@dataclass
class Stack:
    url: str
    process: subprocess.Popen[str]
    effects: Path
    log_path: Path
    exit_code: int | None = None  # once stopped

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def repositories(count: int) -> tuple[str, ...]:
    """``REPO`` alone, or ``count`` repositories ``bench/noop-00`` ... (all configured alike)."""
    return (REPO,) if count <= 1 else tuple(f"{REPO}-{n:02d}" for n in range(count))


def write_config(
    path: Path, effects: Path, repos: Sequence[str] = (REPO,), *, sandbox: bool = True
) -> None:
    script = 'echo "$SCHEDULER_JOB_ID" "$(date +%s.%N)" >> "$1"'
    argv = json.dumps(["sh", "-c", script, "sh", str(effects)])
    sections = "".join(
        f'\n[repos."{repo}"]\ncommand = {argv}\nconcurrency = {CONCURRENCY}\n' for repo in repos
    )
    path.write_text(
        f'[defaults]\ncheckout = false\ncommand = ["true"]\ntimeout_seconds = 60\n'
        # Runs are sandboxed (as by default): the folder they record starts in is shared.
        f"sandbox_paths = {json.dumps([str(effects.parent)])}\n"
        f'sandbox = "{"on" if sandbox else "off"}"\n{sections}'
    )


def start_stack(tmp: Path, repos: Sequence[str] = (REPO,), *, sandbox: bool = True) -> Stack:
    effects = tmp / "effects" / "effects.log"
    effects.parent.mkdir(exist_ok=True)
    config = tmp / "scheduler.toml"
    write_config(config, effects, repos, sandbox=sandbox)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SCHEDULER_", "AWS_"))
    }
    env.update(GITHUB_WEBHOOK_SECRET=SECRET, SCHEDULER_CONFIG=str(config))
    log_path = tmp / "stack.log"
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [
                SCHEDULER,
                "up",
                "--port",
                str(free_port()),
                "--dynamodb-port",
                "0",
                "--data-dir",
                str(tmp / "data"),
                "--json",
                "--max-runs",
                str(CONCURRENCY),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
        )
    stack = Stack("", process, effects, log_path)
    assert process.stdout is not None
    first = read_first_line(process.stdout, START_TIMEOUT)
    if not first:
        kill_stack(stack)
        raise RuntimeError(f"scheduler up did not announce itself:\n{stack.log_tail()}")
    stack.url = json.loads(first)["url"]
    # Keep draining stdout, so the child can never block on a full pipe.
    threading.Thread(target=process.stdout.read, daemon=True).start()
    return stack


@contextmanager
def local_stack(
    tmp: Path, repos: Sequence[str] = (REPO,), *, sandbox: bool = True
) -> Iterator[Stack]:
    """``scheduler up`` in ``tmp`` for the ``with`` body: stopped with SIGINT after it (exit code
    in ``exit_code``), killed if the body fails, with the tail of its log on stderr."""
    stack = start_stack(tmp, repos, sandbox=sandbox)
    try:
        yield stack
    except BaseException:
        kill_stack(stack)
        print(f"stack log tail:\n{stack.log_tail()}", file=sys.stderr)
        raise
    stack.exit_code = stop_stack(stack)


def read_first_line(stream: IO[str], timeout: float) -> str:
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return line[0] if line else ""


def stop_stack(stack: Stack) -> int:
    if stack.process.poll() is None:
        stack.process.send_signal(signal.SIGINT)
        try:
            stack.process.wait(30)
        except subprocess.TimeoutExpired:
            kill_stack(stack)
    return stack.process.returncode


def kill_stack(stack: Stack) -> None:
    if stack.process.poll() is None:
        stack.process.kill()  # DynamoDB Local and the runs die with it (PDEATHSIG)
        stack.process.wait(30)


# --- deliveries and jobs ----------------------------------------------------------------------


def deliver(client: httpx.Client, url: str, repo: str = REPO) -> tuple[str, float, float]:
    """POST one new signed push to ``repo``; (job id, accepted epoch seconds, request seconds)."""
    body, headers = signed_push(SECRET, repo, "main", uuid.uuid4().hex + uuid.uuid4().hex[:8])
    sent = time.perf_counter()
    response = client.post(f"{url}/webhook", content=body, headers=headers)
    accepted = time.time()
    took = time.perf_counter() - sent
    if response.status_code != 202:
        raise RuntimeError(f"webhook answered {response.status_code}: {response.text}")
    return str(response.json()["job_id"]), accepted, took


def command_starts(effects: Path) -> dict[str, float]:
    if not effects.exists():
        return {}
    starts: dict[str, float] = {}
    for line in effects.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            starts.setdefault(parts[0], float(parts[1]))
    return starts


def wait_started(
    stack: Stack, wanted: set[str], deadline: float, poll: float = 0.05
) -> dict[str, float]:
    """Command start (epoch seconds) by job id, once every job in ``wanted`` has one.

    Reads the commands' file only; ``deadline`` is on the ``time.monotonic`` clock.
    """
    while True:
        starts = command_starts(stack.effects)
        if wanted <= starts.keys():
            return starts
        if stack.process.poll() is not None:
            raise RuntimeError(f"the stack exited:\n{stack.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(wanted - starts.keys())} commands never ran")
        time.sleep(poll)


def wait_finished(
    stack: Stack, client: httpx.Client, job_ids: list[str], timeout: float
) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """Wait for every command to have run (file only), then for every job to be final."""
    deadline = time.monotonic() + timeout
    starts = wait_started(stack, set(job_ids), deadline)
    jobs: dict[str, dict[str, Any]] = {}
    while True:
        for job_id in [j for j in job_ids if jobs.get(j, {}).get("finished_at") is None]:
            response = client.get(f"{stack.url}/jobs/{job_id}")
            response.raise_for_status()
            jobs[job_id] = dict(response.json())
        if all(job.get("finished_at") is not None for job in jobs.values()):
            break
        if time.monotonic() > deadline:
            raise RuntimeError("jobs not final in time")
        time.sleep(0.1)
    failed = {j: job["status"] for j, job in jobs.items() if job["status"] != "passed"}
    if failed:
        raise RuntimeError(f"jobs that did not pass: {failed}")
    return starts, jobs


# --- phases -----------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    description: str
    accepted: dict[str, float] = field(default_factory=dict)
    post_seconds: list[float] = field(default_factory=list)
    send_seconds: float = 0.0
    cmd_start_ms: list[float] = field(default_factory=list)
    started_at_ms: list[float] = field(default_factory=list)
    finished_ms: list[float] = field(default_factory=list)
    throughput: float = 0.0

    def record(self, results: list[tuple[str, float, float]], send_seconds: float) -> None:
        """The answers of the phase's deliveries, as :func:`deliver` returns them."""
        self.send_seconds = send_seconds
        for job_id, accepted, took in results:
            self.accepted[job_id] = accepted
            self.post_seconds.append(took)

    def collect(self, starts: dict[str, float], jobs: dict[str, dict[str, Any]]) -> None:
        for job_id, accepted in self.accepted.items():
            job = jobs[job_id]
            self.cmd_start_ms.append((starts[job_id] - accepted) * 1000)
            self.started_at_ms.append(job["started_at"] - accepted * 1000)
            self.finished_ms.append(job["finished_at"] - accepted * 1000)
        first = min(self.accepted.values())
        last = max(job["finished_at"] for job in jobs.values()) / 1000
        self.throughput = len(jobs) / (last - first)


def round_robin(repos: Sequence[str]) -> Callable[[], str]:
    """The next repository of ``repos`` at each call, in turn (thread-safe)."""
    turns = itertools.cycle(repos)
    lock = threading.Lock()

    def next_repo() -> str:
        with lock:
            return next(turns)

    return next_repo


def send_steady(
    client: httpx.Client,
    url: str,
    count: int,
    rate: float,
    *,
    senders: int = 4,
    repos: Sequence[str] = (REPO,),
) -> Phase:
    """Open loop: delivery i is sent at t0 + i/rate, whatever the earlier answers took."""
    phase = Phase("steady", f"{count} deliveries paced at {rate:g}/s from {senders} senders")
    next_repo = round_robin(repos)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(senders) as pool:
        futures = open_loop(pool, count, rate, lambda: deliver(client, url, next_repo()))
        phase.record([future.result() for future in futures], time.perf_counter() - t0)
    return phase


def send_burst(
    client: httpx.Client, url: str, count: int, clients: int, repos: Sequence[str] = (REPO,)
) -> Phase:
    where = f"over {len(repos)} repositories " if len(repos) > 1 else ""
    phase = Phase("burst", f"{count} deliveries at once {where}from {clients} client threads")
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(
            pool.map(lambda n: deliver(client, url, repos[n % len(repos)]), range(count))
        )
    phase.record(results, time.perf_counter() - t0)
    return phase


def run_phase(
    stack: Stack, client: httpx.Client, phase_of: Callable[[], Phase], timeout: float
) -> Phase:
    phase = phase_of()
    starts, jobs = wait_finished(stack, client, list(phase.accepted), timeout)
    phase.collect(starts, jobs)
    return phase


# --- idle resources ---------------------------------------------------------------------------


def process_tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def label(process: psutil.Process) -> str:
    try:
        name = process.name()
    except psutil.Error:
        return "?"
    return "java (DynamoDB Local)" if "java" in name else f"{name} (scheduler up)"


def idle_usage(pid: int, seconds: float) -> list[tuple[str, float, float]]:
    """(label, percent of one core, RSS MiB) per process of the tree, over ``seconds``."""
    tree = process_tree(pid)
    before = {p.pid: cpu_seconds(p) for p in tree}
    wall = time.perf_counter()
    time.sleep(seconds)
    wall = time.perf_counter() - wall
    usage = []
    for process in tree:
        try:
            cpu = cpu_seconds(process) - before[process.pid]
            rss = process.memory_info().rss / 2**20
        except psutil.Error:
            continue
        usage.append((label(process), 100 * cpu / wall, rss))
    return usage


# --- report -----------------------------------------------------------------------------------


def print_phase(phase: Phase) -> None:
    posts = summary(ms(phase.post_seconds))
    print(f"\n== {phase.name}: {phase.description}")
    print(
        f"   sent in {phase.send_seconds:.1f} s ({posts.n / phase.send_seconds:.1f}/s);"
        f" POST /webhook p50 {posts.p50:.1f} ms, p99 {posts.p99:.1f} ms"
    )
    print(f"   {'from accepted (ms)':<26}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}")
    rows = [
        ("to command start", phase.cmd_start_ms, TARGET_START_MS),
        ("to started_at (spawn)", phase.started_at_ms, None),
        ("to finished (passed)", phase.finished_ms, TARGET_FINISH_MS),
    ]
    for name, values, target in rows:
        row = summary(values)
        cells = "".join(f"{value:8.0f}" for value in (row.p50, row.p90, row.p99, row.max))
        verdict = ""
        if target is not None:
            ok = row.p50 < target
            verdict = f"   p50 target < {target:.0f}: {'ok' if ok else 'MISSED'}"
        print(f"   {name:<26}{cells}{verdict}")
    print(
        f"   throughput: {phase.throughput:.1f} jobs/s finished"
        f" (first accepted -> last finished), {len(phase.finished_ms)} jobs all passed"
    )


@dataclass
class Pipeline:
    """What one :func:`measure` found: its phases, then the idle stack's usage."""

    phases: list[Phase]
    usage: list[tuple[str, float, float]]  # (process, percent of one core, RSS MiB), idle
    idle_seconds: float
    exit_code: int | None
    seconds: float

    def phase(self, name: str) -> Phase:
        return next(phase for phase in self.phases if phase.name == name)

    @property
    def idle_cpu(self) -> float:
        """Percent of one core, the whole process tree of ``scheduler up``."""
        return sum(cpu for _, cpu, _ in self.usage)

    @property
    def idle_rss(self) -> float:
        """MiB resident, the whole process tree of ``scheduler up``."""
        return sum(rss for _, _, rss in self.usage)


def measure(
    *,
    steady_jobs: int = 200,
    burst_jobs: int = 200,
    rate: float = 10.0,
    steady_senders: int = 4,
    burst_clients: int = 8,
    repos: Sequence[str] = (REPO,),
    warmup: int = 10,
    idle_seconds: float = 20.0,
    on_phase: Callable[[Phase], None] = lambda _: None,
    sandbox: bool = True,
) -> Pipeline:
    """One stack in a temporary folder: warm-up, the steady phase, the burst, idle usage.

    A phase with no jobs is skipped; ``on_phase`` sees each phase as soon as it is done.
    """
    began = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp,
        local_stack(Path(tmp), repos, sandbox=sandbox) as stack,
    ):
        print(
            f"stack up in {time.perf_counter() - began:.1f} s at {stack.url}"
            f" (--max-runs {CONCURRENCY}, {len(repos)} repositories of concurrency"
            f" {CONCURRENCY}); {os.cpu_count()} CPUs",
            flush=True,
        )
        phases: list[Phase] = []
        with httpx.Client(timeout=30) as client:
            if warmup:
                warm = partial(send_steady, client, stack.url, warmup, rate, repos=repos)
                run_phase(stack, client, warm, timeout=120)
                print(f"warm-up: {warmup} jobs passed (not counted)", flush=True)
            runs: list[tuple[Callable[[], Phase], float]] = []
            if steady_jobs:
                steady = partial(
                    send_steady,
                    client,
                    stack.url,
                    steady_jobs,
                    rate,
                    senders=steady_senders,
                    repos=repos,
                )
                runs.append((steady, 120 + steady_jobs / rate))
            if burst_jobs:
                burst = partial(send_burst, client, stack.url, burst_jobs, burst_clients, repos)
                runs.append((burst, 180 + burst_jobs / 2))
            for phase_of, timeout in runs:
                phases.append(run_phase(stack, client, phase_of, timeout))
                on_phase(phases[-1])
        time.sleep(2)  # let the last transitions flow through the stream
        usage = idle_usage(stack.process.pid, idle_seconds)
    return Pipeline(phases, usage, idle_seconds, stack.exit_code, time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--jobs", type=int, default=200, help="jobs per phase (>= 200 for stable figures)"
    )
    parser.add_argument("--rate", type=float, default=10.0, help="steady deliveries per second")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--burst", action="store_true", help="the burst phase only")
    only.add_argument("--steady", action="store_true", help="the steady phase only")
    parser.add_argument("--burst-clients", type=int, default=8)
    parser.add_argument("--senders", type=int, default=4, help="sender threads of the steady phase")
    parser.add_argument("--repos", type=int, default=1, help="repositories the jobs go to in turn")
    parser.add_argument("--warmup", type=int, default=10, help="uncounted jobs first")
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument(
        "--unsandboxed", action="store_true", help='runs with sandbox = "off" (its cost)'
    )
    args = parser.parse_args()

    result = measure(
        steady_jobs=0 if args.burst else args.jobs,
        burst_jobs=0 if args.steady else args.jobs,
        rate=args.rate,
        steady_senders=args.senders,
        burst_clients=args.burst_clients,
        repos=repositories(args.repos),
        warmup=args.warmup,
        idle_seconds=args.idle_seconds,
        on_phase=print_phase,
        sandbox=not args.unsandboxed,
    )
    print(f"\n== idle after the load ({args.idle_seconds:g} s), process tree of scheduler up")
    for name, cpu, rss in result.usage:
        print(f"   {name:<26} cpu {cpu:5.1f}% of one core   rss {rss:6.0f} MiB")
    print(
        f"   {'total':<26} cpu {result.idle_cpu:5.1f}% of one core   rss {result.idle_rss:6.0f} MiB"
    )
    print("   (README: about 4-6% of one core and about 300 MiB idle)")
    print(
        f"\nscheduler up stopped on SIGINT, exit code {result.exit_code};"
        f" total {result.seconds:.0f} s"
    )


if __name__ == "__main__":
    main()
